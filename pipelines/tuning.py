"""Stage 3: tune the policy with PPO against the trained reward model (reinforcement learning)."""

import functools
from typing import NamedTuple

from kfp.dsl import Artifact, Model

from components.jobs import launch_ppo_job
from components.ppo import tune_policy
from pipelines.targets import training_stage

ReinforcementLearningOutputs = NamedTuple(
    "ReinforcementLearningOutputs", policy_adapter=Model, tensorboard_logs=Artifact, samples=Artifact)


@functools.lru_cache(maxsize=None)
def reinforcement_learning_stage(target: str, training_operator: str | None = None):
    return training_stage(
        target, tune_policy, launch_ppo_job, training_operator=training_operator,
        name="reinforcement-learning",
        description="Tunes a LoRA policy with PPO against the reward model.",
        display_name="Tune policy with PPO", tensorboard_run="reinforcement-learning",
        upload_display_name="Upload PPO metrics to TensorBoard", outputs=ReinforcementLearningOutputs)
