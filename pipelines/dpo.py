"""Stage 3 with `tuning_method=dpo`: tune the policy with DPO on the preference pairs (no reward
model needed; the pipeline still trains one for evaluation's reward scores). It trains in its
pipeline task on the tuning stage's GPUs (`reinforcement_learning_*` hardware); no multi-node job."""

import functools
from typing import NamedTuple

from kfp.dsl import Artifact, Model

from components.dpo import tune_policy_dpo
from pipelines.targets import in_task_stage

DPOOutputs = NamedTuple("DPOOutputs", policy_adapter=Model, tensorboard_logs=Artifact, samples=Artifact)


@functools.lru_cache(maxsize=None)
def dpo_stage(target: str):
    return in_task_stage(target, tune_policy_dpo, name="dpo",
                         description="Tunes a LoRA policy with DPO on the preference pairs.",
                         display_name="Tune policy with DPO", tensorboard_run="dpo",
                         upload_display_name="Upload DPO metrics to TensorBoard", outputs=DPOOutputs)
