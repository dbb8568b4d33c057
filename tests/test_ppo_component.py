"""The `tune_policy` KFP component with `tuning_method` ppo, run by kfp's local runner (a real subprocess
task) on a tiny model and a reward model in the reward step's format.
(No `from __future__ import annotations`: kfp reads the pipeline's annotations as types.)"""

import json
import tempfile
from pathlib import Path
from typing import NamedTuple

import kfp.local as kfp_local
import pytest
from kfp import dsl
from kfp.dsl import Artifact, Dataset, Metrics, Model

from components.tune import tune_policy
from rlhf.pipeline_settings import REINFORCEMENT_LEARNING
from test_ppo_train import build_tiny_setup

pytestmark = pytest.mark.filterwarnings("ignore:You may be attemping to run a task:RuntimeWarning")


@dsl.pipeline
def ppo_only(prompts_uri: str, reward_uri: str) -> NamedTuple(
        "Outputs", policy=Model, metrics=Metrics, tensorboard=Artifact, samples=Artifact):
    prompts = dsl.importer(artifact_uri=prompts_uri, artifact_class=Dataset, reimport=True)
    reward = dsl.importer(artifact_uri=reward_uri, artifact_class=Model, reimport=True)
    settings = {**REINFORCEMENT_LEARNING.defaults(), "reinforcement_learning_train_steps": 2,
                "target_sequence_length": 6, "batch_size": 4}
    task = tune_policy(
        prompt_data=prompts.output, preference_data=prompts.output, reward_model=reward.output, **settings,
        tuning_method="ppo", dpo_options={}, tensorboard_resource_id="", pipeline_job_name="",
        options={"mini_batch_size": 2, "ppo_epochs": 1, "checkpoint_every": 1, "sample_count": 2,
                 "device": "cpu"})
    outputs = NamedTuple("Outputs", policy=Model, metrics=Metrics, tensorboard=Artifact, samples=Artifact)
    return outputs(task.outputs["policy_adapter"], task.outputs["metrics"], task.outputs["tensorboard_logs"],
                   task.outputs["samples"])


def test_component_tunes_and_reports(tmp_path, monkeypatch):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a tiny model: one thread is fastest
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    setup = build_tiny_setup(tmp_path / "setup")
    kfp_local.init(runner=kfp_local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
                   workspace_root=str(tmp_path / "workspace"))
    out = ppo_only(prompts_uri=str(setup / "prompts.jsonl"), reward_uri=str(setup / "reward")).outputs

    adapter = Path(out["policy"].path)
    assert (adapter / "adapter_model.safetensors").exists() and (adapter / "adapter_config.json").exists()
    assert out["policy"].metadata["base_model"] == str(setup / "base")
    metrics = out["metrics"].metadata
    for name in ("reward/mean", "policy/kl", "objective/kl_coeff", "loss/policy", "loss/value",
                 "policy/entropy", "time/generation_s"):
        assert name in metrics, name
    assert json.loads(Path(out["metrics"].path).read_text())["reward/mean"] == metrics["reward/mean"]
    assert list(Path(out["tensorboard"].path).glob("events.out.tfevents.*"))
    assert sorted(p.name for p in Path(out["samples"].path).iterdir()) == ["step-00000001.jsonl",
                                                                           "step-00000002.jsonl"]
