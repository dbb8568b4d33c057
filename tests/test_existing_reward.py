"""`rlhf.reward.existing` and the reward stage that adopts it (in its task, or in the launcher of a
multi-node stage: no job then): the reference artifact an existing classifier becomes, how PPO and
evaluation read it (or a trained reward model's directory), and the early checks."""

from __future__ import annotations

import json

import pytest

from test_reward_helpers import build_tiny_classifier
from kfp import dsl

from components.jobs import launch_reward_model_job
from components.reward import train_reward_model
from rlhf.errors import UserError
from rlhf.pipeline_settings import REWARD_MODEL
from rlhf.reward.existing import REFERENCE_FILE, check_classifier, reward_settings


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A tiny random Hugging Face sequence classifier with named classes and its own tokenizer."""
    return build_tiny_classifier(tmp_path_factory.mktemp("hf") / "sentiment")


def _adopt(component, classifier, label: str, out, **extra) -> dsl.Model:
    """The reward stage's component called as its pipeline task would be, with `reward_model` set."""
    artifact = dsl.Model(name="reward_model", uri=str(out), metadata={})
    unused = {name: dsl.Artifact(name=name, uri=str(out.parent / name), metadata={})
              for name in ("metrics", "classification_metrics", "tensorboard_logs")}
    component.python_func(
        preference_data=dsl.Dataset(name="preference_data", uri=str(out.parent / "none"), metadata={}),
        reward_model=artifact, **unused, **{**REWARD_MODEL.defaults(), "positive_label": label},
        options={}, existing_classifier=str(classifier), tensorboard_resource_id="", pipeline_job_name="", **extra)
    return artifact


@pytest.mark.parametrize("component, extra", [
    (train_reward_model, {}),
    (launch_reward_model_job, dict(platform="vertex", image="i", replica_count=2, machine_type="", gpu_type="NVIDIA_L4",
                                   gpu_count=1, cpu_limit="8", memory_limit="32G", project="p", location="l",
                                   pipeline_root="gs://b/r", encryption_spec_key_name="")),
])
def test_the_reward_stage_writes_a_reference_that_ppo_and_evaluation_resolve(classifier, tmp_path, component, extra):
    out = tmp_path / "reference"
    artifact = _adopt(component, classifier, "positive", out, **extra)  # a launcher creates no job for it
    assert artifact.metadata["reward_model"] == str(classifier)
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
def test_the_reward_stage_refuses_a_missing_or_unknown_class(classifier, tmp_path, label, message):
    with pytest.raises(UserError, match=message):
        _adopt(train_reward_model, classifier, label, tmp_path / "reference")
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
