"""`rlhf.reward.existing` and its component: the reference artifact an existing classifier becomes,
how PPO and evaluation read it (or a trained reward model's directory), and the early checks."""

from __future__ import annotations

import json

import pytest

from test_reward_helpers import build_tiny_classifier
from kfp import dsl

from components.existing_reward import existing_reward_model
from rlhf.errors import UserError
from rlhf.reward.existing import REFERENCE_FILE, check_classifier, reward_settings


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A tiny random Hugging Face sequence classifier with named classes and its own tokenizer."""
    return build_tiny_classifier(tmp_path_factory.mktemp("hf") / "sentiment")


def test_the_component_writes_a_reference_that_ppo_and_evaluation_resolve(classifier, tmp_path):
    out = tmp_path / "reference"
    artifact = dsl.Model(name="reference", uri=str(out), metadata={})
    existing_reward_model.python_func(reward_model=str(classifier), positive_label="positive", reference=artifact)
    assert json.loads((out / REFERENCE_FILE).read_text()) == {"reward_model": str(classifier),
                                                            "positive_label": "positive"}
    assert reward_settings(str(out)) == {"reward_model": str(classifier), "positive_label": "positive"}
    trained = tmp_path / "trained"  # a trained reward model: its own directory, its own saved label
    trained.mkdir()
    assert reward_settings(str(trained)) == {"reward_model": str(trained), "positive_label": ""}


@pytest.mark.parametrize("label, message", [
    ("", "positive_label '': is empty: name the classifier's class whose score is the reward"),
    ("toxic", r"positive_label 'toxic' is not a class of the classifier .*'negative', 'positive'"),
])
def test_the_component_refuses_a_missing_or_unknown_class(classifier, tmp_path, label, message):
    artifact = dsl.Model(name="reference", uri=str(tmp_path / "reference"), metadata={})
    with pytest.raises(UserError, match=message):
        existing_reward_model.python_func(reward_model=str(classifier), positive_label=label, reference=artifact)
    assert not (tmp_path / "reference").exists()


def test_a_directory_that_is_not_a_sequence_classifier_is_refused(tmp_path):
    with pytest.raises(UserError, match="no config.json there"):
        check_classifier(str(tmp_path), "positive")
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(UserError, match="not a sequence classifier"):
        check_classifier(str(tmp_path), "positive")


def test_a_batch_of_empty_responses_is_scored(classifier):
    """A tiny or badly tuned policy may answer nothing at all; scoring must not crash on it."""
    from rlhf.reward.hf_classifier import ClassifierScorer
    scorer = ClassifierScorer(str(classifier), "positive", device="cpu")
    alone = scorer.logits(["", ""])
    mixed = scorer.logits(["Hello there.", ""])
    assert alone.shape == (2, 2)
    assert alone[1].tolist() == pytest.approx(mixed[1].tolist(), abs=1e-5)  # the same score in any batch
