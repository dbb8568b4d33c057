"""The Supervised Fine-Tuning stage (the `supervised_fine_tuning` component) run by kfp's local runner on a tiny model: a merged model artifact whose URI is the `base_model` output,
which loads as a base model, and the metrics. (No `from __future__ import annotations`: kfp reads
the pipeline's annotations as types.)"""

import json
import tempfile
from pathlib import Path
from typing import NamedTuple

import kfp.local as kfp_local
import pytest
from kfp import dsl
from kfp.dsl import Dataset, Model

from components.sft import supervised_fine_tuning
from rlhf.pipeline_settings import SUPERVISED_FINE_TUNING
from test_reward_helpers import build_tiny_model, synthetic_rows, write_jsonl

pytestmark = pytest.mark.filterwarnings("ignore:You may be attemping to run a task:RuntimeWarning")

OPTIONS = {"sft_train_steps": 2, "batch_size": 4, "checkpoint_every": 1, "lora_target_modules": ["q_proj", "v_proj"],
           "heldout_fraction": 0.0}

@dsl.pipeline
def sft_only(preference_uri: str, sft_uri: str, model: str) -> NamedTuple(
        "Outputs", sft_model=Model, base_model=str, preferred_model=Model):
    pref = dsl.importer(artifact_uri=preference_uri, artifact_class=Dataset, reimport=True)
    demonstrations = dsl.importer(artifact_uri=sft_uri, artifact_class=Dataset, reimport=True)
    settings = {**SUPERVISED_FINE_TUNING.defaults(), "large_model_reference": model, "prompt_sequence_length": 32,
                "target_sequence_length": 16}
    hardware = {"tensorboard_resource_id": "", "pipeline_job_name": ""}
    on_data = supervised_fine_tuning(preference_data=pref.output, sft_data=demonstrations.output, supervised_tuning="sft_dataset",
                    options=OPTIONS, **settings, **hardware)
    # the preferred candidates of the preference data (sft_data is not read)
    preferred = supervised_fine_tuning(preference_data=pref.output, sft_data=demonstrations.output,
                      supervised_tuning="preferred_candidates", options=OPTIONS, **settings, **hardware)
    outputs = NamedTuple("Outputs", sft_model=Model, base_model=str, preferred_model=Model)
    return outputs(on_data.outputs["sft_model"], on_data.outputs["base_model"], preferred.outputs["sft_model"])


def test_the_stage_writes_a_merged_model_and_names_it_as_the_base(tmp_path, monkeypatch):
    from rlhf import models
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    kfp_local.init(runner=kfp_local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
                   workspace_root=str(tmp_path / "workspace"))
    tiny = build_tiny_model(tmp_path / "tiny")
    pref = write_jsonl(tmp_path / "pref.jsonl", synthetic_rows(12, seed=4))
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"input_text": r["messages"][0]["content"], "output_text": r["chosen"]}
                                               for r in synthetic_rows(12, seed=5)])
    out = sft_only(preference_uri=str(pref), sft_uri=str(sft), model=str(tiny)).outputs
    merged = Path(out["sft_model"].path)
    assert out["base_model"] == out["sft_model"].uri and (merged / "config.json").exists()
    assert out["sft_model"].metadata["base_model"] == str(tiny)
    summary = json.loads((merged.parent / "sft_run" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["stage"] == "sft"
    assert models.resolve_model(out["base_model"]) == str(merged)  # later stages load it as their base
    assert (Path(out["preferred_model"].path) / "config.json").exists()
