"""The TensorBoard upload each training stage makes: skipped without a TensorBoard, and resource names checked."""

from __future__ import annotations

import pytest

from rlhf import vertex_tensorboard as tensorboard


def test_without_a_tensorboard_the_upload_does_nothing(tmp_path):
    assert tensorboard.upload_logs(str(tmp_path), tensorboard_resource_id="", run_name="reward-model",
                                   pipeline_job_name="rlhf-train-template-20240101") == ""


def test_tensorboard_resource_ids_are_parsed_or_refused():
    assert tensorboard.parse_tensorboard_resource_id(
        "projects/123/locations/us-central1/tensorboards/456") == ("123", "us-central1", "456")
    for bad in ("456", "projects/123/tensorboards/456", "projects/123/locations/us-central1/tensorboards/"):
        with pytest.raises(ValueError, match="projects/PROJECT_NUMBER/locations/LOCATION/tensorboards"):
            tensorboard.parse_tensorboard_resource_id(bad)


def test_one_experiment_per_pipeline_run_with_a_valid_name():
    assert tensorboard.experiment_name("rlhf-train-template-20240101123456") == "rlhf-train-template-20240101123456"
    assert tensorboard.experiment_name("My_Run 1") == "my-run-1"
    assert len(tensorboard.experiment_name("x" * 300)) == 128
