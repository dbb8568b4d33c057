"""`rlhf run-local`: its defaults (bundled sample data, its instruction, the embedded model, small
step counts) and the mistakes it stops before running anything. Full runs: tests/test_pipeline.py."""

from __future__ import annotations

import json

import pytest

from rlhf import cli, samples
from rlhf.commands import run_local


def _values(*argv):
    parser = cli.build_parser(["run-local", *argv])
    args = parser.parse_args(["run-local", *argv])
    pipeline = run_local.load_pipeline(args.template)
    return run_local.parameter_values(args, run_local.template_of(pipeline, args.template))


def test_defaults_are_the_bundled_data_its_instruction_and_the_embedded_model():
    values = _values()
    assert values["preference_dataset"] == samples.preference_dataset()
    assert values["prompt_dataset"] == samples.prompt_dataset()
    assert values["eval_dataset"] == samples.eval_dataset()
    assert values["instruction"] == samples.INSTRUCTION == "Summarize in less than 50 words."
    assert values["large_model_reference"] == "smollm2-135m-instruct"
    assert values["deploy_model"] is False
    # small step counts for 2 CPU cores, not Google's 1000
    assert values["reward_model_train_steps"] <= 50 and values["reinforcement_learning_train_steps"] <= 50
    # every optional parameter gets a value: kfp's local runner cannot leave one unset
    assert values["model_display_name"] == ""


def test_the_demo_starts_from_sft_and_tunes_with_dpo_unless_the_reward_is_a_classifier():
    values = _values()
    assert values["supervised_tuning"] == "preferred_candidates"
    assert values["tuning_method"] == "dpo"
    # A classifier reward only means something to PPO: the default follows it ...
    assert _values("--parameter", "reward_model_type=classifier")["tuning_method"] == "ppo"
    # ... but never overrides the user's own choice.
    assert _values("--parameter", "reward_model_type=classifier",
                   "--parameter", "tuning_method=dpo")["tuning_method"] == "dpo"
    assert _values("--parameter", "tuning_method=ppo")["tuning_method"] == "ppo"


def test_dpo_gets_twice_ppos_steps_unless_the_user_sets_them():
    """A DPO step costs far less than a PPO step, so the demo's DPO takes more of them in the same budget."""
    assert _values()["reinforcement_learning_train_steps"] == run_local.DPO_TRAIN_STEPS == 20
    assert _values("--parameter", "tuning_method=ppo")["reinforcement_learning_train_steps"] == 10
    assert _values("--parameter", "reward_model_type=classifier")["reinforcement_learning_train_steps"] == 10
    assert _values("--reinforcement-learning-train-steps", "3")["reinforcement_learning_train_steps"] == 3
    assert _values("--parameter", "reinforcement_learning_train_steps=4")["reinforcement_learning_train_steps"] == 4


def test_flags_and_parameters_override_the_defaults(tmp_path):
    data = tmp_path / "pref.jsonl"
    data.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    values = _values("--preference-dataset", str(data), "--eval-dataset", "", "--model", "/models/tiny",
                     "--reward-model-train-steps", "3", "--parameter", "kl_coeff=0.5",
                     "--parameter", "reinforcement_learning_train_steps=2")
    assert values["preference_dataset"] == str(data)
    assert values["eval_dataset"] == ""  # an empty string skips evaluation
    assert values["instruction"] == ""  # the sample instruction goes with the sample data only
    assert values["large_model_reference"] == "/models/tiny"
    assert values["reward_model_train_steps"] == 3
    assert values["reinforcement_learning_train_steps"] == 2
    assert values["kl_coeff"] == 0.5


def _run(tmp_path, capsys, *argv):
    root = tmp_path / "root"
    code = cli.main(["run-local", "--pipeline-root", str(root), *argv])
    captured = capsys.readouterr()
    return code, captured, root


def test_invalid_data_exits_2_with_file_and_line_before_any_task_runs(tmp_path, capsys):
    bad = tmp_path / "pref.jsonl"
    bad.write_text(json.dumps({"input_text": "hi", "candidate_0": "a", "candidate_1": "b", "choice": 0}) + "\n"
                   + json.dumps({"input_text": "hi", "candidate_0": "a", "candidate_1": "b", "choice": "1"}) + "\n")
    code, captured, root = _run(tmp_path, capsys, "--preference-dataset", str(bad))
    assert code == 2
    assert f"{bad}:2:" in captured.err and "Traceback" not in captured.err
    assert not root.exists() or not any(p for p in root.iterdir() if not p.name.startswith("."))


@pytest.mark.parametrize("argv, message", [
    (["--parameter", "reward_model_train_step=3"], "did you mean 'reward_model_train_steps'"),
    (["--reward-model-train-steps", "0"], "reward_model_train_steps 0: must be a positive integer"),
    (["--parameter", "deploy_model=perhaps"], "must be true or false"),
    (["--preference-dataset", "/no/such/file.jsonl"], "/no/such/file.jsonl"),
    (["--template", "/no/such/template.yaml"], "no such file"),
    (["--template", "VERTEX"], "compile one with `rlhf compile --target kfp`"),
])
def test_mistakes_exit_2_without_running(tmp_path, capsys, argv, message):
    if argv == ["--template", "VERTEX"]:
        from rlhf.commands.compile import compile_pipeline
        argv = ["--template", compile_pipeline("vertex", str(tmp_path / "vertex.yaml"))]
    code, captured, root = _run(tmp_path, capsys, *argv)
    assert code == 2, captured
    assert message in captured.err and "Traceback" not in captured.err
    assert not root.exists()
