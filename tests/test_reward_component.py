"""The `train_reward_model` KFP component run by kfp's local runner (a real subprocess task) on a
tiny model: Model, Metrics, ClassificationMetrics and TensorBoard artifacts.
(No `from __future__ import annotations`: kfp reads the pipeline's annotations as types.)"""


import json
import tempfile
from pathlib import Path
from typing import NamedTuple

import kfp.local as kfp_local
import pytest
from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Metrics, Model

from components.reward import train_reward_model
from rlhf.pipeline_settings import REWARD_MODEL
from test_reward_helpers import build_tiny_model, synthetic_rows, write_jsonl

pytestmark = pytest.mark.filterwarnings("ignore:You may be attemping to run a task:RuntimeWarning")


@dsl.pipeline
def reward_only(preference_uri: str, eval_uri: str, model: str) -> NamedTuple(
        "Outputs", reward_model=Model, metrics=Metrics, classification=ClassificationMetrics,
        tensorboard=Artifact):
    pref = dsl.importer(artifact_uri=preference_uri, artifact_class=Dataset, reimport=True)
    evals = dsl.importer(artifact_uri=eval_uri, artifact_class=Dataset, reimport=True)
    settings = {**REWARD_MODEL.defaults(), "large_model_reference": model, "reward_model_train_steps": 8,
                "batch_size": 8, "gradient_accumulation_steps": 1, "reward_model_learning_rate_multiplier": 30.0}
    task = train_reward_model(
        preference_data=pref.output, eval_data=evals.output, **settings, existing_classifier="",
        tensorboard_resource_id="", pipeline_job_name="",
        options={"eval_every": 4, "checkpoint_every": 4, "lora_target_modules": ["q_proj", "v_proj"],
                 "normalization_pairs": 32})
    outputs = NamedTuple("Outputs", reward_model=Model, metrics=Metrics,
                         classification=ClassificationMetrics, tensorboard=Artifact)
    return outputs(task.outputs["reward_model"], task.outputs["metrics"],
                   task.outputs["classification_metrics"], task.outputs["tensorboard_logs"])


def test_component_trains_and_reports(tmp_path, monkeypatch):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    kfp_local.init(runner=kfp_local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
                   workspace_root=str(tmp_path / "workspace"))
    tiny = build_tiny_model(tmp_path / "tiny")
    pref = write_jsonl(tmp_path / "pref.jsonl", synthetic_rows(120, seed=4))
    evals = write_jsonl(tmp_path / "eval.jsonl", [
        {"messages": r["messages"], "chosen": r["chosen"], "rejected": r["rejected"], "source": "e",
         "instruction": None, "reference": None} for r in synthetic_rows(16, seed=6)])

    run = reward_only(preference_uri=str(pref), eval_uri=str(evals), model=str(tiny))
    out = run.outputs

    model_dir = Path(out["reward_model"].path)
    info = json.loads((model_dir / "reward_model.json").read_text())
    assert info["train_steps"] == 8 and (model_dir / "adapter_model.safetensors").exists()
    metrics = out["metrics"].metadata
    assert metrics["eval/accuracy"] >= 0.9 and metrics["eval/pairs"] == 16
    assert "heldout/roc_auc" in metrics and "loss/total" in metrics
    assert json.loads(Path(out["metrics"].path).read_text())["eval/accuracy"] == metrics["eval/accuracy"]
    cm = out["classification"].metadata["confusionMatrix"]
    assert [a["displayName"] for a in cm["annotationSpecs"]] == ["rejected", "chosen"]
    assert sum(sum(r["row"]) for r in cm["rows"]) == 32  # 16 pairs, two responses each
    assert out["classification"].metadata["confidenceMetrics"]
    assert list(Path(out["tensorboard"].path).glob("events.out.tfevents.*"))
