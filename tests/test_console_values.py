"""Values typed in the Vertex console or the Kubeflow UI meet no `rlhf submit`: the compiled Kubeflow
template itself, loaded back and run by kfp's local runner (not `rlhf run-local`, which checks on
its own), must refuse a bad value in its first task, naming the parameter, with nothing after it run."""

from __future__ import annotations

import tempfile
from pathlib import Path

import kfp.local
import pytest
from kfp import components

from rlhf import samples
from rlhf.commands.compile import compile_pipeline
from rlhf.parameters import load_template

pytestmark = pytest.mark.filterwarnings("ignore:You may be attemping to run a task:RuntimeWarning")


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> str:
    return compile_pipeline("kfp", str(tmp_path_factory.mktemp("template") / "kfp.yaml"))


def _values(template: str, **overrides) -> dict:
    """Every parameter as a console's run form holds it: the compiled defaults, the required ones given."""
    parameters = load_template(template).parameters
    values = {n: p.default for n, p in parameters.items() if p.has_default}
    values.update({n: "" for n, p in parameters.items() if p.optional and not p.has_default})
    values.update(prompt_dataset=samples.prompt_dataset(), preference_dataset=samples.preference_dataset(),
                  eval_dataset=samples.eval_dataset(), large_model_reference="smollm2-135m-instruct",
                  instruction=samples.INSTRUCTION,
                  # tiny, so that a value the check let through fails this test in minutes, not hours
                  reward_model_train_steps=1, reinforcement_learning_train_steps=1, reward_model_batch_size=2,
                  reinforcement_learning_batch_size=2, target_sequence_length=8, evaluation_max_examples=2)
    values.update(overrides)
    return values


@pytest.mark.parametrize("bad, message", [
    ({"tuning_method": "DPO"}, "tuning_method 'DPO': use one of ppo, dpo"),
    ({"tuning_method": "dpo "}, "tuning_method 'dpo ': use one of ppo, dpo"),
    ({"kl_coeff": -1.0}, "kl_coeff -1.0: must be"),
    ({"reinforcement_learning_options": {"kl_coeff": 0.3}},
     "use the kl_coeff parameter instead of reinforcement_learning_options.kl_coeff"),
    ({"reinforcement_learning_options": {"no_such_setting": 1}}, "no_such_setting"),
    ({"tuning_method": "dpo", "dpo_options": {"beta": 0.2}}, "use the kl_coeff parameter instead of dpo_options.beta"),
    ({"reinforcement_learning_rate_multiplier": 0.0}, "reinforcement_learning_rate_multiplier 0.0: must be positive"),
])
def test_a_bad_value_fails_the_first_task_and_nothing_else_runs(template, tmp_path, monkeypatch, capfd, bad, message):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    root = tmp_path / "root"
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
                   workspace_root=str(tmp_path / "workspace"))
    with pytest.raises(RuntimeError, match="validate-inputs"):
        components.load_component_from_file(template)(**_values(template, **bad))
    log = "".join(capfd.readouterr())
    assert message in log and "nothing was trained" in log, log[-3000:]
    [run] = [p for p in root.iterdir() if p.is_dir()]
    assert sorted(p.name for p in run.iterdir()) == ["validate-inputs"]  # no later task started
    assert not [p for p in (run / "validate-inputs").rglob("*") if p.is_file() and p.stat().st_size]
