"""The RLHF pipeline: a drop-in for Google's `rlhf_pipeline` (google-cloud-pipeline-components 2.22).

Same parameter names, types and defaults as Google's, so existing `parameter_values` keep working,
plus ours (each with a default, so the Vertex console's run form shows it editable). The body is a
table of contents: each stage is a sub-pipeline in its own module.
"""

import functools
from typing import NamedTuple, Optional

from kfp import dsl

from components.deploy import deployment_skipped
from pipelines.reward import reward_model_stage
from pipelines.targets import check_target, request_small_machine
from pipelines.validation import validation_stage

# Google's placeholders: Vertex fills in the project and region the pipeline runs in.
PROJECT_ID_PLACEHOLDER = "{{$.pipeline_google_cloud_project_id}}"
LOCATION_PLACEHOLDER = "{{$.pipeline_google_cloud_location}}"

PIPELINE_NAME = "rlhf-train-template"

# Recorded in the compiled description; `rlhf submit` reads it to refuse a template built for elsewhere.
_TARGET_NOTE = {"vertex": "vertex", "kfp": "kfp", "kfp-cpu": "kfp, no GPUs", "local": "local"}

PipelineOutput = NamedTuple("Outputs", model_resource_name=str, endpoint_resource_name=str)


@functools.lru_cache(maxsize=None)
def build_pipeline(target: str = "vertex"):
    """The pipeline compiled for `target` (see `pipelines.targets`)."""
    check_target(target)
    # Sub-pipelines are built before the pipeline that calls them (kfp builds a graph on decoration).
    validate_inputs = validation_stage(target)
    train_reward_model = reward_model_stage(target)

    @dsl.pipeline(name=PIPELINE_NAME,
                  description=f"Performs reinforcement learning from human feedback (target: {_TARGET_NOTE[target]}).")
    def rlhf_pipeline(
        # Google's rlhf_pipeline parameters, in its order, with its defaults.
        prompt_dataset: str,
        preference_dataset: str,
        large_model_reference: str,
        model_display_name: Optional[str] = None,
        prompt_sequence_length: int = 512,
        target_sequence_length: int = 64,
        reward_model_learning_rate_multiplier: float = 1.0,
        reinforcement_learning_rate_multiplier: float = 1.0,
        reward_model_train_steps: int = 1000,
        reinforcement_learning_train_steps: int = 1000,
        kl_coeff: float = 0.1,
        instruction: Optional[str] = None,
        deploy_model: bool = True,
        eval_dataset: Optional[str] = None,
        project: str = PROJECT_ID_PLACEHOLDER,
        accelerator_type: str = "GPU",
        location: str = LOCATION_PLACEHOLDER,
        encryption_spec_key_name: str = "",
        tensorboard_resource_id: str = "",
        # Ours. Reward model training.
        reward_lora_dim: int = 4,
        reward_model_batch_size: int = 16,
        reward_model_gradient_accumulation_steps: int = 4,
        # Hardware per stage: a GPU type and count (Vertex names), CPU and memory limits; Vertex picks
        # the smallest machine that fits. With accelerator_type='TPU' the training stages use the
        # TPU type and count instead. On a Kubeflow cluster the GPU count applies (nvidia.com/gpu).
        reward_model_accelerator_type: str = "NVIDIA_L4",
        reward_model_accelerator_count: int = 1,
        reward_model_cpu_limit: str = "8",
        reward_model_memory_limit: str = "32G",
        tpu_accelerator_type: str = "TPU_V5_LITEPOD",
        tpu_accelerator_count: int = 1,
    ) -> PipelineOutput:
        data = validate_inputs(
            preference_dataset=preference_dataset,
            prompt_dataset=prompt_dataset,
            eval_dataset=eval_dataset,
            instruction=instruction,
            large_model_reference=large_model_reference,
            prompt_sequence_length=prompt_sequence_length,
            target_sequence_length=target_sequence_length,
        ).set_display_name("Validate Inputs")

        reward = train_reward_model(
            preference_data=data.outputs["preference_data"],
            eval_data=data.outputs["eval_data"],
            large_model_reference=large_model_reference,
            instruction=instruction,
            prompt_sequence_length=prompt_sequence_length,
            target_sequence_length=target_sequence_length,
            reward_model_train_steps=reward_model_train_steps,
            reward_model_learning_rate_multiplier=reward_model_learning_rate_multiplier,
            reward_lora_dim=reward_lora_dim,
            batch_size=reward_model_batch_size,
            gradient_accumulation_steps=reward_model_gradient_accumulation_steps,
            accelerator_type=accelerator_type,
            gpu_type=reward_model_accelerator_type,
            gpu_count=reward_model_accelerator_count,
            cpu_limit=reward_model_cpu_limit,
            memory_limit=reward_model_memory_limit,
            tpu_type=tpu_accelerator_type,
            tpu_count=tpu_accelerator_count,
            tensorboard_resource_id=tensorboard_resource_id,
        ).set_display_name("Train Reward Model")

        deployed = request_small_machine(deployment_skipped(), target).set_display_name(
            "Upload and Deploy Tuned Model").after(reward)
        return PipelineOutput(
            model_resource_name=deployed.outputs["model_resource_name"],
            endpoint_resource_name=deployed.outputs["endpoint_resource_name"],
        )

    return rlhf_pipeline
