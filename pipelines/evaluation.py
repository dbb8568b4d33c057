"""Stage 4 (when an eval dataset is given): compare the tuned policy with its base model on the held-out
prompts: reward-model and independent-judge scores, KL, ROUGE-L, a report and a summary."""

import functools

from kfp import dsl

from components.evaluate import evaluate_model
from components.image import TRAINER_IMAGE
from pipelines.targets import GPU_PROFILE, component_inputs, declared, request_accelerator, sub_pipeline


@functools.lru_cache(maxsize=None)
def evaluation_stage(target: str):
    inputs = declared({"has_eval_dataset": bool}) + component_inputs(evaluate_model) + declared(GPU_PROFILE)

    @sub_pipeline("evaluation", "Evaluates the tuned policy against its base model on the eval dataset.", inputs)
    def pipeline(has_eval_dataset, gpu_type, gpu_count, cpu_limit, memory_limit, **settings):
        with dsl.If(has_eval_dataset == True, name="Eval dataset given"):  # noqa: E712 (a pipeline condition)
            evaluated = evaluate_model(**settings).set_display_name("Evaluate tuned model")
            # Evaluation generates with base and tuned models: a GPU (and the CUDA image), also when
            # training ran on TPUs.
            request_accelerator(evaluated, target, gpu_type, gpu_count, cpu_limit, memory_limit,
                                image=TRAINER_IMAGE if target in ("vertex", "kfp") else None)

    return pipeline
