"""Stage 2: train the reward model on the validated preference pairs (or, a classifier, labeled responses)."""

import functools
from typing import NamedTuple

from kfp.dsl import Artifact, Model

from components.jobs import launch_reward_model_job
from components.reward import train_reward_model
from pipelines.targets import training_stage

RewardModelOutputs = NamedTuple("RewardModelOutputs", reward_model=Model, tensorboard_logs=Artifact)


@functools.lru_cache(maxsize=None)
def reward_model_stage(target: str, training_operator: str | None = None):
    return training_stage(
        target, train_reward_model, launch_reward_model_job, training_operator=training_operator,
        name="reward-model",
        description="Trains a LoRA reward model: Bradley-Terry on the preference pairs, or a classifier on the labeled data.",
        display_name="Train reward model", tensorboard_run="reward-model",
        upload_display_name="Upload reward model metrics to TensorBoard", outputs=RewardModelOutputs)
