"""Stage 2: train the reward model on the validated preference pairs."""

import functools
from typing import NamedTuple, Optional

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model

from components.reward import train_reward_model
from pipelines.targets import on_accelerators
from pipelines.tensorboard import upload_training_metrics

RewardModelOutputs = NamedTuple("RewardModelOutputs", reward_model=Model, tensorboard_logs=Artifact)


@functools.lru_cache(maxsize=None)
def reward_model_stage(target: str):
    @dsl.pipeline(name="reward-model",
                  description="Trains a LoRA reward model (Bradley-Terry) on the preference pairs.")
    def pipeline(
        preference_data: Input[Dataset],
        eval_data: Input[Dataset],
        large_model_reference: str,
        prompt_sequence_length: int,
        target_sequence_length: int,
        reward_model_train_steps: int,
        reward_model_learning_rate_multiplier: float,
        reward_lora_dim: int,
        batch_size: int,
        gradient_accumulation_steps: int,
        seed: int,
        options: dict,
        accelerator_type: str,
        gpu_type: str,
        gpu_count: int,
        cpu_limit: str,
        memory_limit: str,
        tpu_type: str,
        tpu_count: int,
        tensorboard_resource_id: str,
        instruction: Optional[str] = None,
    ) -> RewardModelOutputs:
        def train(kind: str):
            task = train_reward_model(
                preference_data=preference_data,
                eval_data=eval_data,
                large_model_reference=large_model_reference,
                instruction=instruction,
                prompt_sequence_length=prompt_sequence_length,
                target_sequence_length=target_sequence_length,
                reward_model_train_steps=reward_model_train_steps,
                reward_model_learning_rate_multiplier=reward_model_learning_rate_multiplier,
                reward_lora_dim=reward_lora_dim,
                batch_size=batch_size,
                gradient_accumulation_steps=gradient_accumulation_steps,
                seed=seed,
                options=options,
            ).set_display_name(f"Train reward model ({kind.upper()})")
            upload_training_metrics(task, target, tensorboard_resource_id, run_name="reward-model",
                                    display_name="Upload reward model metrics to TensorBoard")
            return task

        output = on_accelerators(
            target, train, accelerator_type=accelerator_type, gpu_type=gpu_type, gpu_count=gpu_count,
            cpu_limit=cpu_limit, memory_limit=memory_limit, tpu_type=tpu_type, tpu_count=tpu_count)
        return RewardModelOutputs(reward_model=output("reward_model"),
                                  tensorboard_logs=output("tensorboard_logs"))

    return pipeline
