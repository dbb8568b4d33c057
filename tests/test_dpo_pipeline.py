"""The whole pipeline with `tuning_method=dpo`, run by kfp's local runner on a tiny model: DPO tunes
the policy from the preference pairs, evaluation reads its adapter (and the reward model, still
trained for its scores), and PPO does not run. A wrong `tuning_method` is refused before any task."""

from __future__ import annotations

import json

import pytest

from rlhf import cli
from rlhf.commands.run_local import evaluation_summary, find_outputs
from test_pipeline import TINY_SETTINGS, _run_dir, quiet_tmp, tiny_model  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow

DPO_SETTINGS = ["--parameter", "tuning_method=dpo",
                "--parameter", 'dpo_options={"sample_count": 2, "checkpoint_every": 0}']


def test_the_pipeline_tunes_with_dpo_and_evaluates_its_policy(tiny_model, quiet_tmp, tmp_path, capsys):  # noqa: F811
    root = tmp_path / "root"
    code = cli.main(["run-local", "--pipeline-root", str(root), "--model", str(tiny_model), *TINY_SETTINGS,
                     *DPO_SETTINGS])
    stdout = capsys.readouterr().out
    assert code == 0, stdout[-3000:]
    run = _run_dir(root)
    outputs = find_outputs(run)
    assert (outputs["tune-policy/policy_adapter"] / "adapter_config.json").exists(), sorted(outputs)
    assert "tune-policy/dpo_run" in outputs and "tune-policy/ppo_run" not in outputs  # the same stage ran DPO
    metrics = json.loads(outputs["tune-policy/metrics"].read_text())
    assert {"loss/total", "reward/margin", "reward/accuracy", "policy/kl"} <= set(metrics)
    assert any(outputs["tune-policy/samples"].iterdir())
    summary = evaluation_summary(run)
    assert summary is not None and "tuned vs base" in summary.read_text() and summary.read_text() in stdout


def test_an_unknown_tuning_method_is_refused_before_any_task(tiny_model, quiet_tmp, tmp_path, capsys):  # noqa: F811
    code = cli.main(["run-local", "--pipeline-root", str(tmp_path / "root"), "--model", str(tiny_model),
                     *TINY_SETTINGS, "--parameter", "tuning_method=rloo"])
    err = capsys.readouterr().err
    assert code == 2 and "tuning_method 'rloo': use one of ppo, dpo" in err
    assert not (tmp_path / "root").exists() or not any((tmp_path / "root").iterdir())
