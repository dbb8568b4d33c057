"""Serve the tuned model on Vertex AI: merge the policy adapter into its base, upload the merged
model to the Model Registry, deploy it to an endpoint.

Plain Python (google-cloud-aiplatform and peft, both imported lazily; never kfp), so it runs and is
tested without a pipeline; `components/deploy.py` wraps each step in a few lines. The uploaded
directory is the tuned model in Hugging Face format (the policy merged into its base), served by a
configurable container: by default Vertex Model Garden's vLLM image, which loads the model from the
`gs://` directory itself.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from typing import Optional

from rlhf.errors import UserError

# Vertex Model Garden's vLLM serving image (the one its Llama/Gemma notebooks deploy with).
DEFAULT_SERVING_IMAGE = "us-docker.pkg.dev/vertex-ai/vertex-vision-model-garden-dockers/pytorch-vllm-serve:latest"
SERVING_PORT = 8080


def vllm_args(model_uri: str, accelerator_count: int, max_model_len: int) -> list[str]:
    """The default container's command line: vLLM's HTTP server (`/generate`, `/ping`) on Vertex's port."""
    return ["python", "-m", "vllm.entrypoints.api_server", "--host=0.0.0.0", f"--port={SERVING_PORT}",
            f"--model={model_uri}", f"--tensor-parallel-size={max(int(accelerator_count), 1)}",
            f"--max-model-len={int(max_model_len)}", "--swap-space=16", "--gpu-memory-utilization=0.9"]


def default_display_name(large_model_reference: str, pipeline_job_name: str) -> str:
    """`<model name>-rlhf-<job>`, cut to the 128 characters Vertex allows for a display name."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", large_model_reference.rstrip("/").rsplit("/", 1)[-1]).strip("-")
    return f"{base or 'model'}-rlhf-{pipeline_job_name}"[:128]


def _recorded_base_model(adapter_dir: str) -> str:
    """The base model an adapter records: PPO's own summary first, then PEFT's config."""
    for name, key in (("ppo_config.json", "base_model"), ("adapter_config.json", "base_model_name_or_path")):
        path = os.path.join(adapter_dir, name)
        if os.path.exists(path):
            with open(path) as f:
                base_model = json.load(f).get(key) or ""
            if base_model:
                return base_model
    return ""


def merge_adapter(adapter_dir: str, out_dir: str, base_model: str = "") -> str:
    """Merge a LoRA policy adapter (what PPO writes) into its base model and save the result in
    Hugging Face format (safetensors, config, tokenizer) at `out_dir`, a local or gs:// directory;
    returns the base model used. The base is `base_model`, else the one the adapter records."""
    from peft import PeftModel

    from rlhf import models, storage

    with tempfile.TemporaryDirectory(prefix="rlhf-merge-") as tmp:
        local_adapter = adapter_dir
        if storage.is_gcs(adapter_dir):
            local_adapter = storage.download_dir(adapter_dir, os.path.join(tmp, "adapter"))
        base_model = base_model or _recorded_base_model(local_adapter)
        # bf16 halves the memory of the merge; serving runs in bf16 anyway.
        base = models.load_causal_lm(base_model, dtype="bf16", device="cpu")
        merged = PeftModel.from_pretrained(base, local_adapter).merge_and_unload()
        staged = os.path.join(tmp, "merged")
        merged.save_pretrained(staged, safe_serialization=True)
        models.load_tokenizer(base_model).save_pretrained(staged)
        if storage.is_gcs(out_dir):
            storage.upload_dir(staged, out_dir)
        else:
            shutil.copytree(staged, out_dir, dirs_exist_ok=True)
    return base_model


def _init(project: str, location: str, api_endpoint: str = ""):
    from google.cloud import aiplatform

    kwargs = {"project": project, "location": location}
    if api_endpoint:  # private or regional endpoints; http:// is a local stand-in (no credentials)
        kwargs.update(api_endpoint=api_endpoint, api_transport="rest")
        if api_endpoint.startswith("http://"):
            from google.auth.credentials import AnonymousCredentials
            kwargs["credentials"] = AnonymousCredentials()
    aiplatform.init(**kwargs)
    return aiplatform


def upload(*, model_uri: str, project: str, location: str, display_name: str,
           serving_container_image_uri: str = DEFAULT_SERVING_IMAGE,
           serving_container_args: Optional[list] = None, accelerator_count: int = 1,
           max_model_len: int = 2048, encryption_spec_key_name: str = "", labels: Optional[dict] = None,
           api_endpoint: str = "") -> str:
    """Upload `model_uri` (a gs:// directory) to the Model Registry; returns the model's resource name.
    With the default container and no `serving_container_args`, vLLM's command line is supplied."""
    if not model_uri.startswith("gs://"):
        raise UserError(f"the tuned model is at {model_uri!r}; the Model Registry needs a gs:// directory "
                        f"(run the pipeline with a gs:// pipeline root)")
    aiplatform = _init(project, location, api_endpoint)
    args = list(serving_container_args or [])
    if not args and serving_container_image_uri == DEFAULT_SERVING_IMAGE:
        args = vllm_args(model_uri, accelerator_count, max_model_len)
    model = aiplatform.Model.upload(
        display_name=display_name, artifact_uri=model_uri,
        serving_container_image_uri=serving_container_image_uri, serving_container_args=args or None,
        serving_container_ports=[SERVING_PORT], serving_container_predict_route="/generate",
        serving_container_health_route="/ping", labels=labels or None,
        encryption_spec_key_name=encryption_spec_key_name or None)
    return model.resource_name


def deploy(*, model_resource_name: str, project: str, location: str, display_name: str,
           machine_type: str, accelerator_type: str, accelerator_count: int,
           encryption_spec_key_name: str = "", api_endpoint: str = "") -> str:
    """Create an endpoint and deploy the model on it (one replica); returns the endpoint's resource name."""
    aiplatform = _init(project, location, api_endpoint)
    model = aiplatform.Model(model_resource_name)
    endpoint = aiplatform.Endpoint.create(display_name=display_name,
                                          encryption_spec_key_name=encryption_spec_key_name or None)
    model.deploy(endpoint=endpoint, deployed_model_display_name=display_name, machine_type=machine_type,
                 accelerator_type=accelerator_type or None,
                 accelerator_count=int(accelerator_count) if accelerator_type else None,
                 min_replica_count=1, max_replica_count=1, traffic_percentage=100,
                 encryption_spec_key_name=encryption_spec_key_name or None)
    return endpoint.resource_name


def upload_and_deploy(*, adapter_dir: str, merged_uri: str, deploy_model: bool, project: str,
                      location: str, large_model_reference: str, pipeline_job_name: str, model_display_name: str,
                      serving_container_image_uri: str, serving_container_args: list, machine_type: str,
                      accelerator_type: str, accelerator_count: int, max_model_len: int,
                      encryption_spec_key_name: str = "", api_endpoint: str = "") -> tuple[str, str]:
    """The pipeline's Upload and Deploy stage: with `deploy_model`, merge the adapter at `adapter_dir`
    into `merged_uri` (the Cloud Storage directory the Model Registry reads), upload and deploy it;
    returns the (model, endpoint) resource names, both empty without `deploy_model`."""
    if not deploy_model:
        return "", ""
    merge_adapter(adapter_dir, merged_uri, large_model_reference)
    display_name = model_display_name or default_display_name(large_model_reference, pipeline_job_name)
    model = upload(model_uri=merged_uri, project=project, location=location, display_name=display_name,
                   serving_container_image_uri=serving_container_image_uri,
                   serving_container_args=serving_container_args, accelerator_count=accelerator_count,
                   max_model_len=max_model_len, encryption_spec_key_name=encryption_spec_key_name,
                   api_endpoint=api_endpoint)
    endpoint = deploy(model_resource_name=model, project=project, location=location, display_name=display_name,
                      machine_type=machine_type, accelerator_type=accelerator_type,
                      accelerator_count=accelerator_count, encryption_spec_key_name=encryption_spec_key_name,
                      api_endpoint=api_endpoint)
    return model, endpoint
