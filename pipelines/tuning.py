"""Stage 3: tune the policy with PPO against the trained reward model (reinforcement learning)."""

import functools
from typing import NamedTuple, Optional

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model

from components.ppo import tune_policy
from pipelines.targets import on_accelerators
from pipelines.tensorboard import upload_training_metrics

ReinforcementLearningOutputs = NamedTuple(
    "ReinforcementLearningOutputs", policy_adapter=Model, tensorboard_logs=Artifact, samples=Artifact)


@functools.lru_cache(maxsize=None)
def reinforcement_learning_stage(target: str):
    @dsl.pipeline(name="reinforcement-learning",
                  description="Tunes a LoRA policy with PPO against the reward model.")
    def pipeline(
        prompt_data: Input[Dataset],
        reward_model: Input[Model],
        large_model_reference: str,
        prompt_sequence_length: int,
        target_sequence_length: int,
        reinforcement_learning_train_steps: int,
        reinforcement_learning_rate_multiplier: float,
        kl_coeff: float,
        batch_size: int,
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
    ) -> ReinforcementLearningOutputs:
        def tune(kind: str):
            task = tune_policy(
                prompt_data=prompt_data,
                reward_model=reward_model,
                large_model_reference=large_model_reference,
                instruction=instruction,
                prompt_sequence_length=prompt_sequence_length,
                target_sequence_length=target_sequence_length,
                reinforcement_learning_train_steps=reinforcement_learning_train_steps,
                reinforcement_learning_rate_multiplier=reinforcement_learning_rate_multiplier,
                kl_coeff=kl_coeff,
                batch_size=batch_size,
                seed=seed,
                options=options,
            ).set_display_name(f"Tune policy with PPO ({kind.upper()})")
            upload_training_metrics(task, target, tensorboard_resource_id, run_name="reinforcement-learning",
                                    display_name="Upload PPO metrics to TensorBoard")
            return task

        output = on_accelerators(
            target, tune, accelerator_type=accelerator_type, gpu_type=gpu_type, gpu_count=gpu_count,
            cpu_limit=cpu_limit, memory_limit=memory_limit, tpu_type=tpu_type, tpu_count=tpu_count)
        return ReinforcementLearningOutputs(policy_adapter=output("policy_adapter"),
                                            tensorboard_logs=output("tensorboard_logs"),
                                            samples=output("samples"))

    return pipeline
