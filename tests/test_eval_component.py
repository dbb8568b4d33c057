"""The `evaluate_model` KFP component run by kfp's local runner (a real subprocess, real artifacts)
on a tiny model: it writes the HTML report, the Markdown summary, `eval/...` metrics and Google-shaped
predictions."""

import json
import os
from html.parser import HTMLParser
from pathlib import Path

import pytest

from test_eval_run import eval_rows, tiny_reward_model, write_jsonl  # noqa: F401  (fixtures)
from test_eval_inference import tiny  # noqa: F401  (fixture)
from rlhf.pipeline_settings import EVALUATION


@pytest.fixture
def local_runner(tmp_path, monkeypatch):
    from kfp import local

    # kfp's local runner leaves workspace and tmp folders behind: keep them in this test's tmp dir.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
               workspace_root=str(tmp_path / "workspace"))
    return tmp_path


def test_evaluate_component_through_kfp_local(local_runner, tiny, tiny_reward_model):  # noqa: F811
    from kfp import dsl
    from kfp.dsl import Artifact, Dataset, Model

    from components.evaluate import evaluate_model

    base_dir, adapter_dir = tiny
    data = write_jsonl(local_runner / "eval.jsonl", eval_rows())
    logs = local_runner / "ppo" / "metrics.jsonl"
    logs.parent.mkdir()
    logs.write_text("".join(json.dumps({"step": s, "reward/mean": 0.2 * s, "policy/kl": 0.05 * s}) + "\n"
                            for s in range(1, 6)))

    @dsl.pipeline(name="eval-component-test")
    def pipeline(eval_uri: str, policy_uri: str, reward_uri: str, logs_uri: str, base: str):
        eval_data = dsl.importer(artifact_uri=eval_uri, artifact_class=Dataset, reimport=True)
        policy = dsl.importer(artifact_uri=policy_uri, artifact_class=Model, reimport=True)
        reward = dsl.importer(artifact_uri=reward_uri, artifact_class=Model, reimport=True)
        history = dsl.importer(artifact_uri=logs_uri, artifact_class=Artifact, reimport=True)
        settings = {**EVALUATION.defaults(), "large_model_reference": base, "target_sequence_length": 8,
                    "batch_size": 4}
        evaluate_model(eval_data=eval_data.output, tuned_policy=policy.output, reward_model=reward.output,
                       training_logs=history.output, **settings)

    pipeline(eval_uri=str(data), policy_uri=adapter_dir, reward_uri=tiny_reward_model,
             logs_uri=str(logs.parent), base=base_dir)
    root = local_runner / "root"
    # Outputs land under the pipeline root: find them by name.
    report = next(root.rglob("report"))
    summary = next(root.rglob("summary"))
    predictions = next(p for p in root.rglob("predictions") if p.is_dir())
    metrics_file = next(root.rglob("metrics"))

    html = report.read_text()
    parser = HTMLParser()
    parser.feed(html)
    assert "Training curves" in html and html.count("<polyline") == 2
    md = summary.read_text()
    assert md.startswith("## Evaluation: tuned vs base on 4 eval prompts") and "Judge win rate" in md
    metrics = json.loads(metrics_file.read_text())
    for name in ("eval/judge_win_rate", "eval/kl", "eval/reward_tuned_mean", "eval/reward_base_mean",
                 "eval/judge_tuned_mean", "eval/num_prompts"):
        assert name in metrics, name
    assert metrics["eval/num_prompts"] == 4
    rows = [json.loads(line) for line in (predictions / "tuned.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and set(rows[0]) == {"inputs", "prediction"}
    assert {"base.jsonl", "tuned.jsonl", "scores.jsonl"} <= set(os.listdir(predictions))


def test_training_logs_are_optional(tmp_path, tiny, tiny_reward_model):  # noqa: F811
    """Unset, the optional history input arrives as None: the report then has no training curves."""
    from kfp.dsl import HTML, Dataset, Markdown, Metrics, Model

    from components.evaluate import evaluate_model

    assert evaluate_model.component_spec.inputs["training_logs"].optional
    base_dir, adapter_dir = tiny
    data = write_jsonl(tmp_path / "eval.jsonl", eval_rows())

    def artifact(cls, name, uri=None):
        return cls(name=name, uri=uri or str(tmp_path / "out" / name))

    report, summary = artifact(HTML, "report"), artifact(Markdown, "summary")
    metrics, predictions = artifact(Metrics, "metrics"), artifact(Dataset, "predictions")
    evaluate_model.python_func(
        eval_data=artifact(Dataset, "eval", str(data)), tuned_policy=artifact(Model, "policy", adapter_dir),
        reward_model=artifact(Model, "rm", tiny_reward_model), report=report, summary=summary,
        metrics=metrics, predictions=predictions, training_logs=None,
        **{**EVALUATION.defaults(), "large_model_reference": base_dir, "target_sequence_length": 4,
           "max_examples": 2})
    html = Path(report.path).read_text()
    assert "Training curves" not in html and "Samples (2 prompts" in html
    assert metrics.metadata["eval/num_prompts"] == 2 and "eval/judge_win_rate" in metrics.metadata
