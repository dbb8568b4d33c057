"""An existing Hugging Face sequence classifier as the pipeline's reward (`reward_model`), in place of
a trained reward model.

The pipeline hands PPO and evaluation one reward-model artifact either way: kfp's local runner cannot
pick between two artifacts (`dsl.OneOf`), so when a classifier is given the reward stage writes a
directory holding only `REFERENCE_FILE` ({"reward_model": REF, "positive_label": LABEL}), and the
components read it with `reward_settings`: the referenced classifier and its class, or the trained
model's directory itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterable

from rlhf import storage
from rlhf.errors import UserError
from rlhf.settings import Problem, Settings, setting

REFERENCE_FILE = "existing_reward_model.json"


@dataclass
class ExistingRewardConfig(Settings):
    """The pipeline's `reward_model` and `positive_label` when a classifier replaces the trained
    reward model."""

    STEP: ClassVar[str] = "existing reward model"

    reward_model: str = setting(
        "", "an existing Hugging Face sequence classifier as the reward (alias, local or gs:// directory): "
            "reward model training is skipped; empty: train one")
    positive_label: str = setting(
        "1", "the class whose score is the reward (a class name of the classifier's id2label)")

    def cross_checks(self) -> Iterable[Problem]:
        if self.reward_model.strip() and not self.positive_label.strip():
            yield Problem("positive_label", self.positive_label, "is empty: name the classifier's class whose "
                                                                 "score is the reward")


def check_classifier(ref: str, positive_label: str) -> None:
    """Fail early (before any GPU) when `ref` is a directory whose config.json is not a sequence
    classifier's or lacks the class `positive_label`. Aliases and Hugging Face ids are checked when
    loaded."""
    from rlhf.reward.classifier import positive_index
    from rlhf.reward.outputs import classifier_labels

    if not (storage.is_gcs(ref) or Path(ref).expanduser().is_dir()):
        return
    if not storage.exists(storage.join(ref, "config.json")):
        raise UserError(f"reward_model {ref}: no config.json there; give a Hugging Face sequence classifier's "
                        f"directory (saved with save_pretrained)")
    labels = classifier_labels(ref)
    if labels is None:
        raise UserError(f"reward_model {ref}: not a sequence classifier (its config.json needs id2label and a "
                        f"*ForSequenceClassification architecture); to train a reward model leave reward_model "
                        f"empty")
    positive_index(labels, positive_label, f"the classifier {ref}")


def write_reference(directory: str, reward_model: str, positive_label: str) -> None:
    """The reference artifact: `directory` holding only REFERENCE_FILE (written whole)."""
    storage.write_json(storage.join(directory, REFERENCE_FILE),
                       {"reward_model": reward_model, "positive_label": positive_label})


def adopt(directory: str, reward_model: str, positive_label: str) -> str:
    """The reward stage with an existing classifier: check it and write the reference artifact PPO
    and evaluation read in place of a trained reward model; returns the classifier's reference."""
    config = ExistingRewardConfig(reward_model=reward_model, positive_label=positive_label).validate(name=str)
    check_classifier(config.reward_model, config.positive_label)
    write_reference(directory, config.reward_model, config.positive_label)
    return config.reward_model


def reward_settings(reward_dir: str, resolve: bool = True) -> dict[str, str]:
    """`reward_model` and `positive_label` for a PPO or evaluation config from the pipeline's reward
    artifact: the referenced classifier and its class, or `reward_dir` itself (a trained model,
    whose own saved label applies: ""). `resolve`: turn an alias or Hugging Face id into a local
    directory here (not for a job whose machines load it elsewhere)."""
    path = storage.join(reward_dir, REFERENCE_FILE)
    if not storage.exists(path):
        return {"reward_model": reward_dir, "positive_label": ""}
    reference = storage.read_json(path)
    ref = reference["reward_model"]
    if resolve and not (storage.is_gcs(ref) or Path(ref).expanduser().is_dir()):
        from rlhf import models
        ref = models.resolve_model(ref)  # an alias or Hugging Face id: the scorers read a directory
    return {"reward_model": ref, "positive_label": reference["positive_label"]}
