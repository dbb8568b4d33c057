"""The whole pipeline with `supervised_tuning`, run by kfp's local runner on a tiny model: SFT on the
preferred candidates runs first and its merged model is the base of PPO (recorded in the adapter);
a bad demonstrations file stops the run at validation with file:line, before anything trains; a
wrong `supervised_tuning` or a missing `sft_dataset` is refused before any task."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from rlhf import cli
from rlhf.commands import run_local
from rlhf.commands.run_local import evaluation_summary, find_outputs
from test_pipeline import TINY_SETTINGS, _run_dir, quiet_tmp, tiny_model  # noqa: F401  (fixtures)
from test_reward_helpers import write_jsonl

pytestmark = pytest.mark.slow

SFT_SETTINGS = ["--parameter", 'sft_options={"sft_train_steps": 2, "batch_size": 4, "checkpoint_every": 0, '
                               '"heldout_fraction": 0.0}']


def test_sft_on_the_preferred_candidates_is_the_base_of_ppo(tiny_model, quiet_tmp, tmp_path, capsys):  # noqa: F811
    root = tmp_path / "root"
    code = cli.main(["run-local", "--pipeline-root", str(root), "--model", str(tiny_model), *TINY_SETTINGS,
                     *SFT_SETTINGS, "--parameter", "supervised_tuning=preferred_candidates"])
    stdout = capsys.readouterr().out
    assert code == 0, stdout[-3000:]
    run = _run_dir(root)
    outputs = find_outputs(run)
    sft_model = outputs["supervised-fine-tuning/sft_model"]
    assert (sft_model / "config.json").exists(), sorted(outputs)
    summary = json.loads((sft_model.parent / "sft_run" / "summary.json").read_text())
    assert summary["steps"] == 2
    ppo = json.loads((outputs["tune-policy/policy_adapter"] / "ppo_config.json").read_text())
    assert ppo["base_model"] == str(sft_model)  # PPO's policy (and its KL reference) start from SFT
    reward_info = json.loads((outputs["train-reward-model/reward_model"] / "reward_model.json").read_text())
    assert reward_info["base_model"] == str(sft_model)  # so does the reward model
    found = evaluation_summary(run)
    assert found is not None and found.read_text() in stdout


def _bad_sft_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "sft.jsonl", [
        {"input_text": "Summarize: the cat sat on the mat.", "output_text": "A cat sat."},
        {"input_text": "Summarize: it rained all day."}])  # line 2: no answer


def test_a_bad_sft_dataset_stops_the_pipeline_at_validation(tiny_model, quiet_tmp, tmp_path, capfd):  # noqa: F811
    """Run as compiled, without run-local's own check first: the validation task fails with the
    file and line, and no task after it runs."""
    import kfp.local

    bad = _bad_sft_file(tmp_path)
    parser = argparse.ArgumentParser()
    run_local.add_arguments(parser)
    args = parser.parse_args(["--model", str(tiny_model), *TINY_SETTINGS, *SFT_SETTINGS,
                              "--parameter", "supervised_tuning=sft_dataset", "--parameter", f"sft_dataset={bad}"])
    pipeline = run_local.load_pipeline(None)
    values = run_local.parameter_values(args, run_local.template_of(pipeline, None))
    root = tmp_path / "root"
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
                   workspace_root=str(root / ".workspace"))
    with pytest.raises(RuntimeError, match="validate-inputs"):
        pipeline(**values)
    out, err = capfd.readouterr()
    assert f"{bad}:2: " in out + err
    ran = {p.name for p in _run_dir(root).iterdir()}
    assert not ran & {"supervised-fine-tuning", "train-reward-model", "tune-policy"}, ran


def test_run_local_refuses_a_bad_sft_dataset_before_any_task(tiny_model, quiet_tmp, tmp_path, capsys):  # noqa: F811
    bad = _bad_sft_file(tmp_path)
    root = tmp_path / "root"
    code = cli.main(["run-local", "--pipeline-root", str(root), "--model", str(tiny_model), *TINY_SETTINGS,
                     "--parameter", "supervised_tuning=sft_dataset", "--parameter", f"sft_dataset={bad}"])
    err = capsys.readouterr().err
    assert code == 2 and f"{bad}:2: " in err
    assert not root.exists()


@pytest.mark.parametrize("parameters, message", [
    (["supervised_tuning=sft_dataset"], "supervised_tuning sft_dataset needs sft_dataset: set it to"),
    (["supervised_tuning=yes"], "supervised_tuning 'yes': use one of off, sft_dataset, preferred_candidates"),
    (["sft_dataset=/tmp/x.jsonl"], "sft_dataset is set but supervised_tuning is off"),
])
def test_supervised_tuning_mistakes_are_refused_before_any_task(tiny_model, quiet_tmp, tmp_path, capsys,  # noqa: F811
                                                                parameters, message):
    root = tmp_path / "root"
    flags = [x for p in parameters for x in ("--parameter", p)]
    code = cli.main(["run-local", "--pipeline-root", str(root), "--model", str(tiny_model), *TINY_SETTINGS, *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert not root.exists()
