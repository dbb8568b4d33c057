"""The whole pipeline with `reward_model` (an existing Hugging Face classifier as the reward), run by
kfp's local runner on a tiny model: no reward model is trained, PPO is rewarded by the classifier's
class and evaluation scores with it. What cannot work is refused before any task."""

from __future__ import annotations

import json

import pytest

from test_reward_helpers import build_tiny_classifier

from rlhf import cli
from rlhf.commands.run_local import evaluation_summary, find_outputs
from rlhf.reward.existing import REFERENCE_FILE
from test_pipeline import TINY_SETTINGS, _run_dir, quiet_tmp, tiny_model  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A tiny random Hugging Face sequence classifier with named classes and its own tokenizer."""
    return build_tiny_classifier(tmp_path_factory.mktemp("hf") / "sentiment")


def test_ppo_is_rewarded_by_the_existing_classifier_and_no_reward_model_trains(
        tiny_model, classifier, quiet_tmp, tmp_path, capsys):  # noqa: F811
    root = tmp_path / "root"
    code = cli.main(["run-local", "--pipeline-root", str(root), "--model", str(tiny_model), *TINY_SETTINGS,
                     "--parameter", f"reward_model={classifier}", "--parameter", "positive_label=positive"])
    stdout = capsys.readouterr().out
    assert code == 0, stdout[-3000:]
    run = _run_dir(root)
    outputs = find_outputs(run)
    reward_model = outputs["train-reward-model/reward_model"]  # the reward stage adopted it: nothing trained
    assert [p.name for p in reward_model.iterdir()] == [REFERENCE_FILE], sorted(outputs)
    reference = json.loads((reward_model / REFERENCE_FILE).read_text())
    assert reference == {"reward_model": str(classifier), "positive_label": "positive"}
    ppo = json.loads((outputs["tune-policy/policy_adapter"] / "ppo_config.json").read_text())["config"]
    assert (ppo["reward_model"], ppo["positive_label"]) == (str(classifier), "positive")
    rewards = [json.loads(line).get("reward/mean")
               for line in (outputs["tune-policy/ppo_run"] / "metrics.jsonl").read_text().splitlines()]
    assert any(r is not None for r in rewards)
    summary = evaluation_summary(run)
    assert summary is not None and "Reward-model score" in summary.read_text()


@pytest.mark.parametrize("parameters, message", [
    (["reward_model={classifier}"], "reward_model (an existing classifier) needs positive_label"),
    (["reward_model={classifier}", "positive_label=toxic"],
     "positive_label 'toxic' is not a class of the classifier"),
    (["reward_model={classifier}", "positive_label=positive", "reward_model_type=classifier"],
     "reward_model_type classifier trains a classifier reward model, but reward_model gives an existing one"),
    (["reward_model={classifier}", "positive_label=positive", "labeled_dataset={classifier}/config.json"],
     "labeled_dataset trains a classifier reward model, but reward_model gives an existing one"),
])
def test_what_cannot_work_with_an_existing_classifier_is_refused_before_any_task(
        tiny_model, classifier, quiet_tmp, tmp_path, capsys, parameters, message):  # noqa: F811
    root = tmp_path / "root"
    flags = [x for p in parameters for x in ("--parameter", p.format(classifier=classifier))]
    code = cli.main(["run-local", "--pipeline-root", str(root), "--model", str(tiny_model), *TINY_SETTINGS, *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert not root.exists()
