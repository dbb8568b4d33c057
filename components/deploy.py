"""KFP components: upload the tuned model to the Vertex AI Model Registry and deploy it to an endpoint.

`upload_and_deploy` is plain Python (google-cloud-aiplatform only) so it can be called and tested
without kfp; the components are thin wrappers around it.
"""

from typing import NamedTuple, Optional

from kfp import dsl

from components.image import IMAGE

# Vertex Model Garden's vLLM serving image: serves a Hugging Face model directory (the merged tuned
# model) behind Vertex's prediction routes. Any container that does is fine: it is a pipeline parameter.
DEFAULT_SERVING_IMAGE = "us-docker.pkg.dev/vertex-ai/vertex-vision-model-garden-dockers/pytorch-vllm-serve:latest"

DeployOutputs = NamedTuple("DeployOutputs", model_resource_name=str, endpoint_resource_name=str)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def deployment_skipped() -> NamedTuple("DeployOutputs", model_resource_name=str, endpoint_resource_name=str):
    """Empty resource names, as Google's pipeline returns when the model is not deployed."""
    from collections import namedtuple
    return namedtuple("DeployOutputs", ["model_resource_name", "endpoint_resource_name"])("", "")
