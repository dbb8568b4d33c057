"""KFP components: the Upload and Deploy stage (Vertex AI), and its empty answer elsewhere.

Thin wrappers over `rlhf.deploy` (merge, upload, deploy), which runs and is tested without kfp.
"""

from typing import NamedTuple, Optional

from kfp import dsl
from kfp.dsl import Input, Model, Output

from components.image import IMAGE

@dsl.component(base_image=IMAGE, install_kfp_package=False)
def upload_and_deploy(
    tuned_model: Input[Model],
    merged_model: Output[Model],
    deploy_model: bool,
    project: str,
    location: str,
    large_model_reference: str,
    pipeline_job_name: str,
    serving_container_image_uri: str,
    serving_container_args: list,
    serving_machine_type: str,
    serving_accelerator_type: str,
    serving_accelerator_count: int,
    prompt_sequence_length: int,
    target_sequence_length: int,
    encryption_spec_key_name: str,
    model_display_name: Optional[str] = None,  # None: Google's "not given"
    api_endpoint: Optional[str] = None,  # None: the region's public Vertex endpoint
) -> NamedTuple("DeployOutputs", model_resource_name=str, endpoint_resource_name=str):
    """With `deploy_model`: merge the policy adapter into its base (`merged_model`, Hugging Face
    format), upload it to the Model Registry and deploy it to a new endpoint; returns their resource
    names. Without: empty names, as Google's pipeline returns, and nothing else happens.
    `api_endpoint`: a private or regional Vertex endpoint."""
    from collections import namedtuple

    from rlhf.deploy import upload_and_deploy as run

    names = run(adapter_dir=tuned_model.path, merged_uri=merged_model.uri,
                deploy_model=deploy_model, project=project, location=location,
                large_model_reference=large_model_reference, pipeline_job_name=pipeline_job_name,
                model_display_name=model_display_name or "",
                serving_container_image_uri=serving_container_image_uri,
                serving_container_args=serving_container_args, machine_type=serving_machine_type,
                accelerator_type=serving_accelerator_type, accelerator_count=serving_accelerator_count,
                max_model_len=prompt_sequence_length + target_sequence_length,
                encryption_spec_key_name=encryption_spec_key_name, api_endpoint=api_endpoint or "")
    return namedtuple("DeployOutputs", ["model_resource_name", "endpoint_resource_name"])(*names)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def deployment_skipped() -> NamedTuple("DeployOutputs", model_resource_name=str, endpoint_resource_name=str):
    """Empty resource names, as Google's pipeline returns when the model is not deployed: a Kubeflow
    cluster has no Vertex AI to deploy to."""
    from collections import namedtuple
    return namedtuple("DeployOutputs", ["model_resource_name", "endpoint_resource_name"])("", "")
