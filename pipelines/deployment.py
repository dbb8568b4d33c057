"""Stage 5 (Vertex AI only): upload the tuned model to the Model Registry and deploy it to an
endpoint when `deploy_model` is true; empty resource names otherwise, as Google's pipeline returns."""

import functools
from typing import NamedTuple, Optional

from kfp import dsl
from kfp.dsl import Input, Model

from components.deploy import deploy_model_to_endpoint, deployment_skipped, merge_policy, upload_model
from pipelines.targets import request_small_machine, with_hub_token_secret

MERGE_CPU, MERGE_MEMORY = "8", "64G"

DeploymentOutputs = NamedTuple("DeploymentOutputs", model_resource_name=str, endpoint_resource_name=str)


@functools.lru_cache(maxsize=None)
def deployment_stage(target: str):
    @dsl.pipeline(name="upload-and-deploy",
                  description="Uploads the tuned model to the Vertex AI Model Registry and deploys it to an endpoint.")
    def pipeline(
        tuned_model: Input[Model],
        deploy_model: bool,
        large_model_reference: str,
        project: str,
        location: str,
        encryption_spec_key_name: str,
        prompt_sequence_length: int,
        target_sequence_length: int,
        serving_container_image_uri: str,
        serving_container_args: list,
        serving_machine_type: str,
        serving_accelerator_type: str,
        serving_accelerator_count: int,
        model_display_name: Optional[str] = None,
    ) -> DeploymentOutputs:
        naming = dict(project=project, location=location, large_model_reference=large_model_reference,
                      pipeline_job_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                      model_display_name=model_display_name, encryption_spec_key_name=encryption_spec_key_name)
        with dsl.If(deploy_model == True, name="Deploy model"):  # noqa: E712 (a pipeline condition)
            merged = merge_policy(policy_adapter=tuned_model, large_model_reference=large_model_reference)
            with_hub_token_secret(merged).set_display_name("Merge policy into base model")
            if target != "local":  # the base model in bf16 fits in 64 GB up to ~30B parameters
                merged.set_cpu_limit(MERGE_CPU).set_memory_limit(MERGE_MEMORY)
            uploaded = upload_model(
                tuned_model=merged.outputs["merged_model"], serving_container_image_uri=serving_container_image_uri,
                serving_container_args=serving_container_args,
                serving_accelerator_count=serving_accelerator_count,
                prompt_sequence_length=prompt_sequence_length, target_sequence_length=target_sequence_length,
                **naming).set_display_name("Upload Model")
            deployed = deploy_model_to_endpoint(
                model_resource_name=uploaded.output, machine_type=serving_machine_type,
                accelerator_type=serving_accelerator_type, accelerator_count=serving_accelerator_count,
                **naming).set_display_name("Deploy Model")
            request_small_machine(uploaded, target)
            request_small_machine(deployed, target)
        with dsl.Else(name="Do not deploy"):
            skipped = request_small_machine(deployment_skipped(), target).set_display_name("Deployment skipped")
        return DeploymentOutputs(
            model_resource_name=dsl.OneOf(uploaded.output, skipped.outputs["model_resource_name"]),
            endpoint_resource_name=dsl.OneOf(deployed.output, skipped.outputs["endpoint_resource_name"]),
        )

    return pipeline
