"""The pipeline's stages, each added once, in the order data flows: Validate Inputs, AI Feedback
Labels, Supervised Fine-Tuning, Train Reward Model, Tune Policy, Evaluate, Upload and Deploy.

An option chooses what a stage does, never how many copies of the graph exist: the reward stage
trains pairwise, trains a classifier or adopts an existing classifier; Tune Policy runs PPO or DPO;
a training stage launches a multi-node job or trains in its task (`pipelines.targets`); Upload and
Deploy does nothing without `deploy_model`. Only an optional stage that needs an accelerator sits
in a condition (SFT, evaluation); SFT's output is a string joined with `dsl.OneOf`, which kfp's
local runner resolves too (it cannot for artifacts), so the local runner runs the very template a
Kubeflow cluster runs. Each function takes the pipeline's parameters by name (`params`) and earlier
outputs.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Mapping, NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Model, PipelineTask

from components.deploy import deployment_skipped, upload_and_deploy
from components.evaluate import evaluate_model
from components.image import TRAINER_IMAGE
from components.jobs import launch_reward_model_job, launch_tuning_job
from components.label import ai_feedback_labels
from components.reward import train_reward_model
from components.sft import base_model_as_given, supervised_fine_tuning
from components.tune import tune_policy
from components.validate import validate_inputs_for
from pipelines.targets import (GPU_PROFILE, NODES_PROFILE, component_inputs, declared, job_platform,
                               request_accelerator, request_small_machine, stage_hardware, stage_settings,
                               sub_pipeline, training_stage, with_hub_token_secret)
from rlhf.pipeline_settings import (EVALUATION, LABELING, REINFORCEMENT_LEARNING, REWARD_MODEL,
                                    SUPERVISED_FINE_TUNING, SUPERVISED_TUNING)

MERGE_CPU, MERGE_MEMORY = "8", "64G"  # merging the policy into a bf16 base fits ~30B parameters

VERTEX_PLACEHOLDER_PARAMETERS = ("project", "location")
# The Upload and Deploy stage's settings, as the pipeline names them.
DEPLOYMENT_PARAMETERS = ("deploy_model", "project", "location", "model_display_name", "encryption_spec_key_name",
                         "serving_container_image_uri", "serving_container_args", "serving_machine_type",
                         "serving_accelerator_type", "serving_accelerator_count", "prompt_sequence_length",
                         "target_sequence_length")

RewardModelOutputs = NamedTuple("RewardModelOutputs", reward_model=Model, tensorboard_logs=Artifact)
PolicyOutputs = NamedTuple("PolicyOutputs", policy_adapter=Model, tensorboard_logs=Artifact, samples=Artifact)


def _tensorboard(target: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Where a training task sends its event files: a Vertex AI TensorBoard, on Vertex only."""
    on_vertex = target == "vertex"
    return {"tensorboard_resource_id": params["tensorboard_resource_id"] if on_vertex else "",
            "pipeline_job_name": dsl.PIPELINE_JOB_NAME_PLACEHOLDER if on_vertex else ""}


def validate(target: str, training_operator: str | None, signature: Mapping[str, inspect.Parameter],
             params: Mapping[str, Any]):
    """Validate Inputs: every parameter value, then every dataset line (`rlhf.pipeline_inputs`).
    `project` and `location` are left out: they default to Vertex placeholders (filled in by Vertex
    only; kfp's local runner cannot resolve them in a task's inputs) and no rule checks them."""
    checked = {name: p for name, p in signature.items() if name not in VERTEX_PLACEHOLDER_PARAMETERS}
    component = validate_inputs_for(checked, target, launches_jobs=job_platform(target, training_operator) is not None)
    task = component(**{name: params[name] for name in checked}).set_display_name("Validate Inputs")
    return request_small_machine(with_hub_token_secret(task), target)  # it loads the tokenizer


def label(target: str, params: Mapping[str, Any], checked):
    """AI Feedback Labels: label the prompts when asked to and no preference pairs were given, else
    hand the validated pairs on (a CPU step either way)."""
    task = ai_feedback_labels(
        validated_preferences=checked.outputs["preference_data"], ai_feedback=params["ai_feedback"],
        options=params["ai_feedback_options"], **stage_settings(LABELING, params),
    ).set_display_name("AI Feedback Labels")
    return request_small_machine(with_hub_token_secret(task), target)


def fine_tune(target: str, params: Mapping[str, Any], checked, preference_data):
    """Supervised Fine-Tuning, when `supervised_tuning` is on: returns the base model of every later
    stage, the SFT model's URI or `large_model_reference` as given."""
    hardware = stage_hardware("reinforcement_learning", params)  # a policy-sized LoRA run, as DPO
    with dsl.If(params["supervised_tuning"] != SUPERVISED_TUNING[0], name="Supervised tuning on"):
        sft = supervised_fine_tuning(
            preference_data=preference_data, sft_data=checked.outputs["sft_data"],
            supervised_tuning=params["supervised_tuning"], options=params["sft_options"],
            **_tensorboard(target, params), **stage_settings(SUPERVISED_FINE_TUNING, params),
        ).set_display_name("Supervised Fine-Tuning")
        request_accelerator(sft, target, *(hardware[k] for k in GPU_PROFILE))
    with dsl.Else(name="Supervised tuning off"):
        given = request_small_machine(base_model_as_given(large_model_reference=params["large_model_reference"]),
                                      target).set_display_name("Base Model as Given")
    return dsl.OneOf(sft.outputs["base_model"], given.output)


@functools.lru_cache(maxsize=None)
def sub_pipelines(target: str, training_operator: str | None):
    """The builders of the stages that are sub-pipelines (reward model, policy, evaluation). Call
    before building the pipeline: kfp builds a sub-pipeline when it is defined, and not inside
    another pipeline's definition."""
    reward = training_stage(target, train_reward_model, launch_reward_model_job, training_operator=training_operator,
                            name="train-reward-model", outputs=RewardModelOutputs,
                            description="Trains a LoRA reward model (pairwise or a classifier) or adopts an "
                                        "existing classifier.")
    policy = training_stage(target, tune_policy, launch_tuning_job, training_operator=training_operator,
                            name="tune-policy", outputs=PolicyOutputs,
                            description="Tunes a LoRA policy with PPO against the reward model, or with DPO.")
    return reward, policy, evaluation_stage(target)


def train_reward(target: str, training_operator: str | None, params: Mapping[str, Any], checked, preference_data,
                 base_model) -> PipelineTask:
    """Train Reward Model: pairwise or a classifier, or adopt an existing classifier (`reward_model`)."""
    add, _, _ = sub_pipelines(target, training_operator)
    hardware = stage_hardware("reward_model", params)
    return add("Train Reward Model", checked.outputs["reward_model_as_job"],
               {k: hardware[k] for k in GPU_PROFILE}, {k: hardware[k] for k in NODES_PROFILE},
               params["encryption_spec_key_name"],
               preference_data=preference_data, eval_data=checked.outputs["eval_data"],
               labeled_data=checked.outputs["labeled_data"], options=params["reward_model_options"],
               existing_classifier=params["reward_model"], **_tensorboard(target, params),
               **{**stage_settings(REWARD_MODEL, params), "large_model_reference": base_model})


def tune(target: str, training_operator: str | None, params: Mapping[str, Any], checked, preference_data,
         reward_model, base_model) -> PipelineTask:
    """Tune Policy: PPO against the reward model or DPO on the preference pairs (`tuning_method`)."""
    _, add, _ = sub_pipelines(target, training_operator)
    hardware = stage_hardware("reinforcement_learning", params)
    return add("Tune Policy", checked.outputs["tuning_as_job"],
               {k: hardware[k] for k in GPU_PROFILE}, {k: hardware[k] for k in NODES_PROFILE},
               params["encryption_spec_key_name"],
               prompt_data=checked.outputs["prompt_data"], preference_data=preference_data,
               reward_model=reward_model, tuning_method=params["tuning_method"],
               options=params["reinforcement_learning_options"], dpo_options=params["dpo_options"],
               **_tensorboard(target, params),
               **{**stage_settings(REINFORCEMENT_LEARNING, params), "large_model_reference": base_model})


def evaluate(target: str, training_operator: str | None, params: Mapping[str, Any], checked, policy, reward_model,
             base_model) -> PipelineTask:
    """Evaluate, when an eval dataset was given: the tuned policy against its base (and the SFT model)."""
    _, _, evaluation = sub_pipelines(target, training_operator)
    hardware = stage_hardware("evaluation", params)
    return evaluation(
        has_eval_dataset=checked.outputs["has_eval_dataset"], eval_data=checked.outputs["eval_data"],
        tuned_policy=policy.outputs["policy_adapter"], reward_model=reward_model,
        training_logs=policy.outputs["tensorboard_logs"], **{k: hardware[k] for k in GPU_PROFILE},
        **{**stage_settings(EVALUATION, params), "large_model_reference": base_model},
    ).set_display_name("Evaluate")


def evaluation_stage(target: str):
    """The Evaluate stage: a sub-pipeline whose condition reads its own input. (kfp's local runner
    resolves a condition on a parent's input, not on a named output of a task beside it.)"""
    inputs = declared({"has_eval_dataset": bool}) + component_inputs(evaluate_model) + declared(GPU_PROFILE)

    @sub_pipeline("evaluation", "Evaluates the tuned policy against its base model on the eval dataset.", inputs)
    def stage(has_eval_dataset, gpu_type, gpu_count, cpu_limit, memory_limit, **settings):
        with dsl.If(has_eval_dataset == True, name="Eval dataset given"):  # noqa: E712 (a pipeline condition)
            task = evaluate_model(**settings).set_display_name("Evaluate Tuned Model")
            # It generates with base and tuned models: a GPU and the CUDA image.
            request_accelerator(task, target, gpu_type, gpu_count, cpu_limit, memory_limit,
                                image=TRAINER_IMAGE if target in ("vertex", "kfp") else None)
    return stage


def deploy(target: str, params: Mapping[str, Any], policy, evaluation, base_model) -> tuple[Any, Any]:
    """Upload and Deploy (Vertex AI), after the evaluation of what it deploys: with `deploy_model`,
    merge the policy into its base, upload it to the Model Registry and deploy it to an endpoint;
    returns (model, endpoint) resource names, empty when not deployed, as Google's pipeline returns
    (its deploy step also decides inside)."""
    if target != "vertex":  # no Vertex AI to deploy to
        skipped = request_small_machine(deployment_skipped(), target).set_display_name(
            "Upload and Deploy (Vertex AI only): skipped").after(evaluation)
        return skipped.outputs["model_resource_name"], skipped.outputs["endpoint_resource_name"]
    task = upload_and_deploy(
        tuned_model=policy.outputs["policy_adapter"], large_model_reference=base_model,
        pipeline_job_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        **{name: params[name] for name in DEPLOYMENT_PARAMETERS})
    # A CPU machine that holds the base model in bf16 for the merge (up to ~30B parameters).
    with_hub_token_secret(task.after(evaluation)).set_display_name("Upload and Deploy").set_cpu_limit(MERGE_CPU)
    task.set_memory_limit(MERGE_MEMORY)
    return task.outputs["model_resource_name"], task.outputs["endpoint_resource_name"]
