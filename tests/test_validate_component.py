"""The pipeline's first task (Validate Inputs, `components.validate`) run by kfp's local runner (a real
subprocess task), built from the pipeline's own signature: its output artifacts hold the canonical
data, stats, summaries and metrics; invalid data or a bad parameter value fails the task with the
problems in its log and no traceback."""

from __future__ import annotations

import functools
import inspect
import json
import tempfile
from pathlib import Path

import kfp.local as kfp_local
import pytest

from rlhf.data import canonical

# The local runner warns that it ignores the component's base image; that is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:You may be attemping to run a task:RuntimeWarning")


@pytest.fixture
def local_runner(tmp_path, monkeypatch):
    """kfp's local runner with every folder it makes inside tmp_path."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    kfp_local.init(runner=kfp_local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
                   workspace_root=str(tmp_path / "workspace"))
    component, parameters = _first_task()
    # Every parameter the pipeline would pass, at its default (a call may override them).
    defaults = {name: p.default for name, p in parameters.items() if p.default not in (inspect.Parameter.empty, None)}
    return functools.partial(component, **{**defaults, "prompt_dataset": "", "large_model_reference": ""})


def _first_task():
    """The first task's component as the local pipeline builds it, and the parameters it takes."""
    from components.validate import validate_inputs_for
    from pipelines.rlhf_pipeline import build_pipeline
    from pipelines.stages import VERTEX_PLACEHOLDER_PARAMETERS
    signature = inspect.signature(build_pipeline("local").pipeline_func).parameters
    parameters = {name: p for name, p in signature.items() if name not in VERTEX_PLACEHOLDER_PARAMETERS}
    return validate_inputs_for(parameters, "local", launches_jobs=False), parameters


def write(path: Path, rows) -> str:
    path.write_text("".join((json.dumps(r) if isinstance(r, dict) else r) + "\n" for r in rows))
    return str(path)


def test_component_writes_canonical_data_stats_summary_and_metrics(local_runner, tmp_path):
    pref = write(tmp_path / "pref.jsonl", [
        {"input_text": "post 0", "candidate_0": "a", "candidate_1": "b", "choice": 1},
        {"input_text": "post 1", "candidate_0": "c", "candidate_1": "d", "choice": 0}])
    evals = write(tmp_path / "eval.jsonl", [{"input_text": "held out", "reference": "ref"}])
    task = local_runner(preference_dataset=pref, eval_dataset=evals, instruction="Summarize:")
    out = task.outputs
    assert (out["has_eval_dataset"], out["reward_model_as_job"], out["tuning_as_job"]) == (True, False, False)

    pairs = canonical.read_preference_pairs(out["preference_data"].path)
    assert [(p.chosen, p.rejected, p.instruction) for p in pairs] == [("b", "a", "Summarize:"),
                                                                      ("c", "d", "Summarize:")]
    assert Path(out["prompt_data"].path).read_text() == ""  # no prompt dataset given: empty file
    [example] = canonical.read_eval_examples(out["eval_data"].path)
    assert example.reference == "ref"
    stats = json.loads(Path(out["stats"].path).read_text())
    assert stats["datasets"]["preference"]["pairs"] == 2
    assert "| preference | google_text |" in Path(out["summary"].path).read_text()
    assert "<table>" in Path(out["summary_html"].path).read_text()
    metrics = out["metrics"].metadata
    assert metrics["data/preference_pairs"] == 2.0
    assert metrics["data/eval_rows"] == 1.0
    assert json.loads(Path(out["metrics"].path).read_text())["data/preference_pairs"] == 2.0


def test_invalid_data_fails_the_task_with_the_problems_in_the_log(local_runner, tmp_path, capfd):
    pref = write(tmp_path / "pref.jsonl", [
        {"input_text": "post 0", "candidate_0": "a", "candidate_1": "b", "choice": "1"}, "{oops"])
    with pytest.raises(RuntimeError):
        local_runner(preference_dataset=pref)
    log = "".join(capfd.readouterr())
    assert "Traceback" not in log  # a user's mistake: what to fix, not where Python was
    assert f'{pref}:1: `choice` is the string "1"' in log
    assert f"{pref}:2: invalid JSON" in log
    assert "2 problem(s) found in the datasets" in log
    # Nothing was written for the failed task.
    written = [p for p in (tmp_path / "root").rglob("*") if p.is_file() and p.name in (
        "preference_data", "prompt_data", "eval_data", "stats", "summary")]
    assert written == []


def test_an_accelerator_the_trainers_cannot_use_fails_validation_before_any_is_paid_for(local_runner, tmp_path,
                                                                                         capfd):
    pref = write(tmp_path / "pref.jsonl", [{"input_text": "p", "candidate_0": "a", "candidate_1": "b", "choice": 1}])
    with pytest.raises(RuntimeError):
        local_runner(preference_dataset=pref, accelerator_type="TPU")
    assert "parameter 'accelerator_type' 'TPU': TPUs are not supported" in "".join(capfd.readouterr())


@pytest.mark.parametrize("values, message", [
    ({"tuning_method": "DPO"}, "tuning_method 'DPO': use one of ppo, dpo"),
    ({"tuning_method": "dpo "}, "tuning_method 'dpo ': use one of ppo, dpo"),
    ({"kl_coeff": -0.5}, "kl_coeff -0.5: must be"),
    ({"reward_model_learning_rate_multiplier": 0.0}, "reward_model_learning_rate_multiplier 0.0: must be positive"),
    ({"reinforcement_learning_options": {"kl_coeff": 0.3}},
     "use the kl_coeff parameter instead of reinforcement_learning_options.kl_coeff"),
    ({"reward_model_cpu_limit": "eight"}, "'reward_model_cpu_limit' must be a number of CPUs"),
])
def test_a_bad_parameter_value_fails_the_first_task_naming_it(local_runner, tmp_path, capfd, values, message):
    """What a value typed in the Vertex console or the Kubeflow UI meets: the checks `rlhf submit` makes."""
    pref = write(tmp_path / "pref.jsonl", [{"input_text": "p", "candidate_0": "a", "candidate_1": "b", "choice": 1}])
    with pytest.raises(RuntimeError):
        local_runner(preference_dataset=pref, **values)
    log = "".join(capfd.readouterr())
    assert message in log and "nothing was trained" in log and "Traceback" not in log


def test_component_compiles_with_every_pipeline_parameter_as_an_input(tmp_path):
    import yaml
    from kfp import compiler

    from components.image import IMAGE

    component, parameters = _first_task()
    path = tmp_path / "validate.yaml"
    compiler.Compiler().compile(component, str(path))
    spec = yaml.safe_load(path.read_text())
    [definition] = spec["components"].values()
    assert set(definition["inputDefinitions"]["parameters"]) == set(parameters)
    assert {"project", "location"}.isdisjoint(parameters)  # Vertex placeholders, which nothing checks
    outputs = {k: v["artifactType"]["schemaTitle"] for k, v in definition["outputDefinitions"]["artifacts"].items()}
    assert outputs == {"preference_data": "system.Dataset", "prompt_data": "system.Dataset",
                       "eval_data": "system.Dataset", "labeled_data": "system.Dataset", "sft_data": "system.Dataset",
                       "stats": "system.Artifact",
                       "metrics": "system.Metrics", "summary": "system.Markdown",
                       "summary_html": "system.HTML"}
    assert set(definition["outputDefinitions"]["parameters"]) == {"has_eval_dataset", "reward_model_as_job",
                                                                  "tuning_as_job"}
    [executor] = spec["deploymentSpec"]["executors"].values()
    assert executor["container"]["image"] == IMAGE
    assert "pip install" not in " ".join(executor["container"]["command"])
