"""Stage 4 (when an eval dataset is given): compare the tuned policy with its base model on the held-out
prompts: reward-model and independent-judge scores, KL, ROUGE-L, a report and a summary."""

import functools
from typing import Optional

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model

from components.evaluate import evaluate_model
from components.image import TRAINER_IMAGE
from pipelines.targets import request_accelerator


@functools.lru_cache(maxsize=None)
def evaluation_stage(target: str):
    @dsl.pipeline(name="evaluation",
                  description="Evaluates the tuned policy against its base model on the eval dataset.")
    def pipeline(
        has_eval_dataset: bool,
        eval_data: Input[Dataset],
        tuned_policy: Input[Model],
        reward_model: Input[Model],
        training_logs: Input[Artifact],
        large_model_reference: str,
        prompt_sequence_length: int,
        target_sequence_length: int,
        batch_size: int,
        max_examples: int,
        seed: int,
        gpu_type: str,
        gpu_count: int,
        cpu_limit: str,
        memory_limit: str,
        instruction: Optional[str] = None,
    ):
        with dsl.If(has_eval_dataset == True, name="Eval dataset given"):  # noqa: E712 (a pipeline condition)
            evaluated = evaluate_model(
                eval_data=eval_data,
                tuned_policy=tuned_policy,
                reward_model=reward_model,
                training_logs=training_logs,
                large_model_reference=large_model_reference,
                instruction=instruction,
                prompt_sequence_length=prompt_sequence_length,
                target_sequence_length=target_sequence_length,
                batch_size=batch_size,
                max_examples=max_examples,
                seed=seed,
            ).set_display_name("Evaluate tuned model")
            # Evaluation generates with base and tuned models: a GPU (and the CUDA image), also when
            # training ran on TPUs.
            request_accelerator(evaluated, target, gpu_type, gpu_count, cpu_limit, memory_limit,
                                image=TRAINER_IMAGE if target in ("vertex", "kfp") else None)

    return pipeline
