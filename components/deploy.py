"""KFP components: upload the tuned model to the Vertex AI Model Registry and deploy it to an endpoint.

Thin wrappers over `rlhf.deploy` (merge, upload, deploy), which runs and is tested without kfp.
"""

from typing import NamedTuple, Optional

from kfp import dsl
from kfp.dsl import Input, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def merge_policy(policy_adapter: Input[Model], merged_model: Output[Model], large_model_reference: str):
    """Merge the PPO policy adapter into its base model: a full model directory a server can load."""
    from rlhf.deploy import merge_adapter

    merged_model.metadata["base_model"] = merge_adapter(policy_adapter.path, merged_model.path,
                                                        large_model_reference)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def upload_model(
    tuned_model: Input[Model],
    project: str,
    location: str,
    large_model_reference: str,
    pipeline_job_name: str,
    serving_container_image_uri: str,
    serving_container_args: list,
    serving_accelerator_count: int,
    prompt_sequence_length: int,
    target_sequence_length: int,
    encryption_spec_key_name: str,
    model_display_name: Optional[str] = None,  # None: Google's "not given"
    api_endpoint: Optional[str] = None,  # None: the region's public Vertex endpoint
) -> str:
    """Upload the tuned model to the Vertex AI Model Registry; returns its resource name.
    `api_endpoint`: a private or regional Vertex endpoint."""
    from rlhf.deploy import default_display_name, upload

    return upload(
        model_uri=tuned_model.uri, project=project, location=location,
        display_name=model_display_name or default_display_name(large_model_reference, pipeline_job_name),
        serving_container_image_uri=serving_container_image_uri,
        serving_container_args=serving_container_args, accelerator_count=serving_accelerator_count,
        max_model_len=prompt_sequence_length + target_sequence_length,
        encryption_spec_key_name=encryption_spec_key_name, api_endpoint=api_endpoint or "")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def deploy_model_to_endpoint(
    model_resource_name: str,
    project: str,
    location: str,
    large_model_reference: str,
    pipeline_job_name: str,
    machine_type: str,
    accelerator_type: str,
    accelerator_count: int,
    encryption_spec_key_name: str,
    model_display_name: Optional[str] = None,  # None: Google's "not given"
    api_endpoint: Optional[str] = None,  # None: the region's public Vertex endpoint
) -> str:
    """Create an endpoint and deploy the uploaded model on it; returns the endpoint's resource name."""
    from rlhf.deploy import default_display_name, deploy

    return deploy(
        model_resource_name=model_resource_name, project=project, location=location,
        display_name=model_display_name or default_display_name(large_model_reference, pipeline_job_name),
        machine_type=machine_type, accelerator_type=accelerator_type, accelerator_count=accelerator_count,
        encryption_spec_key_name=encryption_spec_key_name, api_endpoint=api_endpoint or "")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def deployment_skipped() -> NamedTuple("DeployOutputs", model_resource_name=str, endpoint_resource_name=str):
    """Empty resource names, as Google's pipeline returns when the model is not deployed."""
    from collections import namedtuple
    return namedtuple("DeployOutputs", ["model_resource_name", "endpoint_resource_name"])("", "")
