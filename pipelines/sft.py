"""Stage 1b, with `supervised_tuning` on: supervised fine-tuning between validation and the reward
model. Its `base_model` output (the merged model's URI) is the `large_model_reference` of the reward
model, the tuning and evaluation stages and deployment, so PPO starts from the SFT model and measures
its KL against it (Stiennon et al. 2020). It trains in its pipeline task on the tuning stage's GPUs
(`reinforcement_learning_*` hardware: a policy-sized LoRA run, as DPO); no multi-node job."""

import functools
from typing import NamedTuple

from kfp.dsl import Artifact, Model

from components.sft import supervised_fine_tuning
from pipelines.targets import in_task_stage

SFTOutputs = NamedTuple("SFTOutputs", sft_model=Model, base_model=str, tensorboard_logs=Artifact)


@functools.lru_cache(maxsize=None)
def sft_stage(target: str):
    return in_task_stage(target, supervised_fine_tuning, name="supervised-fine-tuning",
                         description="Fine-tunes the base model on demonstrations (LoRA, merged).",
                         display_name="Supervised fine-tuning", tensorboard_run="sft",
                         upload_display_name="Upload SFT metrics to TensorBoard", outputs=SFTOutputs)
