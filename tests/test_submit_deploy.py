"""Uploading and deploying the tuned model: the Upload and Deploy stage (`upload_and_deploy`) and the
library calls it makes, through the real aiplatform client to a local stand-in of the Vertex API."""

from __future__ import annotations

import pytest
from kfp import dsl

from components import deploy
from rlhf import deploy as library
from rlhf.errors import UserError
from standins import VertexStandIn

KMS_KEY = "projects/p1/locations/us-central1/keyRings/ring/cryptoKeys/key"


@pytest.fixture
def vertex(monkeypatch):
    with VertexStandIn() as standin:
        yield standin


def _upload(vertex, **overrides):
    """The upload the stage makes, pointed at the stand-in."""
    args = dict(model_uri="gs://bucket/run/tuned_policy", project="p1", location="us-central1",
                display_name=library.default_display_name("smollm2-135m-instruct", "rlhf-train-template-123"),
                serving_container_image_uri=library.DEFAULT_SERVING_IMAGE, serving_container_args=[],
                accelerator_count=1, max_model_len=512 + 64, encryption_spec_key_name=KMS_KEY, api_endpoint=vertex.url)
    args.update(overrides)
    return library.upload(**args)


def test_upload_registers_the_model_with_the_vllm_container_and_cmek(vertex):
    name = _upload(vertex)
    assert name.startswith("projects/p1/locations/us-central1/models/")
    request = vertex.requests_to("POST", r"/models:upload$")[0]
    model = request.body["model"]
    assert model["displayName"] == "smollm2-135m-instruct-rlhf-rlhf-train-template-123"
    assert model["artifactUri"] == "gs://bucket/run/tuned_policy"
    container = model["containerSpec"]
    assert container["imageUri"] == library.DEFAULT_SERVING_IMAGE
    assert "--model=gs://bucket/run/tuned_policy" in container["args"]
    assert "--max-model-len=576" in container["args"]
    assert container["predictRoute"] == "/generate" and container["healthRoute"] == "/ping"
    assert model["encryptionSpec"] == {"kmsKeyName": KMS_KEY}


def test_upload_with_another_container_keeps_its_own_command(vertex):
    _upload(vertex, serving_container_image_uri="us-docker.pkg.dev/acme/serve:1",
            serving_container_args=["--port=8080"], display_name="my-model")
    model = vertex.requests_to("POST", r"/models:upload$")[0].body["model"]
    assert model["displayName"] == "my-model"
    assert model["containerSpec"]["imageUri"] == "us-docker.pkg.dev/acme/serve:1"
    assert model["containerSpec"]["args"] == ["--port=8080"]


def test_upload_refuses_a_model_outside_cloud_storage(vertex):
    with pytest.raises(UserError, match="gs:// directory"):
        library.upload(model_uri="/tmp/model", project="p1", location="us-central1", display_name="m",
                      api_endpoint=vertex.url)
    assert vertex.requests == []


def test_deploy_creates_an_endpoint_and_deploys_one_replica_on_the_gpu(vertex):
    model = _upload(vertex)
    endpoint = library.deploy(
        model_resource_name=model, project="p1", location="us-central1", display_name="my-model",
        machine_type="g2-standard-12", accelerator_type="NVIDIA_L4", accelerator_count=1,
        encryption_spec_key_name=KMS_KEY, api_endpoint=vertex.url)
    assert endpoint.startswith("projects/p1/locations/us-central1/endpoints/")
    created = vertex.requests_to("POST", r"/endpoints$")[0].body
    assert created["displayName"] == "my-model" and created["encryptionSpec"] == {"kmsKeyName": KMS_KEY}
    deployed = vertex.requests_to("POST", r":deployModel$")[0]
    assert deployed.path.endswith(endpoint.rsplit("/", 1)[1] + ":deployModel")
    spec = deployed.body["deployedModel"]
    assert spec["model"].split("@")[0] == model  # models/ID[@VERSION]
    resources = spec["dedicatedResources"]
    # the REST transport sends enums as numbers ($alt=json;enum-encoding=int): NVIDIA_L4 is 11
    from google.cloud.aiplatform_v1.types import AcceleratorType
    assert resources["machineSpec"] == {"machineType": "g2-standard-12",
                                        "acceleratorType": AcceleratorType.NVIDIA_L4.value,
                                        "acceleratorCount": 1}
    assert resources["minReplicaCount"] == 1 and resources["maxReplicaCount"] == 1
    assert deployed.body["trafficSplit"] == {"0": 100}


def _stage_arguments(vertex, adapter: str, merged_uri: str, deploy_model: bool, base: str = "") -> dict:
    return dict(tuned_model=dsl.Model(name="policy_adapter", uri=adapter, metadata={}),
                merged_model=dsl.Model(name="merged_model", uri=merged_uri, metadata={}), deploy_model=deploy_model,
                project="p1", location="us-central1", large_model_reference=base, pipeline_job_name="rlhf-train-template-7",
                serving_container_image_uri=library.DEFAULT_SERVING_IMAGE, serving_container_args=[],
                serving_machine_type="g2-standard-12", serving_accelerator_type="NVIDIA_L4",
                serving_accelerator_count=1, prompt_sequence_length=256, target_sequence_length=64,
                encryption_spec_key_name=KMS_KEY, model_display_name=None, api_endpoint=vertex.url)


def test_the_stage_merges_uploads_and_deploys_the_tuned_policy(vertex, gcs_prefix, tmp_path):
    """The Upload and Deploy stage's own code: the adapter merged into its base in Cloud Storage, that
    directory registered with vLLM's command line, deployed on a new endpoint; the names returned."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from rlhf import storage
    from test_reward_helpers import build_tiny_model
    base_dir = build_tiny_model(tmp_path / "base")
    get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                   LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(tmp_path / "adapter")
    merged_uri = f"{gcs_prefix}/merged_model"
    model, endpoint = deploy.upload_and_deploy.python_func(
        **_stage_arguments(vertex, str(tmp_path / "adapter"), merged_uri, deploy_model=True, base=str(base_dir)))
    assert storage.exists(f"{merged_uri}/config.json") and storage.exists(f"{merged_uri}/tokenizer.json")
    uploaded = vertex.requests_to("POST", r"/models:upload$")[0].body["model"]
    assert uploaded["artifactUri"] == merged_uri and f"--model={merged_uri}" in uploaded["containerSpec"]["args"]
    assert "--max-model-len=320" in uploaded["containerSpec"]["args"]
    assert uploaded["displayName"] == "base-rlhf-rlhf-train-template-7"  # the base model's name and the run
    assert model.startswith("projects/p1/locations/us-central1/models/")
    assert endpoint.startswith("projects/p1/locations/us-central1/endpoints/")
    assert vertex.requests_to("POST", r":deployModel$")[0].body["deployedModel"]["model"].split("@")[0] == model


def test_without_deploy_model_the_stage_returns_empty_names_and_does_nothing(vertex, tmp_path):
    names = deploy.upload_and_deploy.python_func(
        **_stage_arguments(vertex, str(tmp_path / "no-adapter"), str(tmp_path / "merged"), deploy_model=False))
    assert tuple(names) == ("", "") and vertex.requests == [] and not (tmp_path / "merged").exists()


def test_skipped_deployment_returns_empty_names_like_googles():
    assert tuple(deploy.deployment_skipped.python_func()) == ("", "")


def test_deploy_library_imports_without_kfp():
    """The component wrappers need kfp; the logic they call must not (it runs and is tested alone)."""
    import subprocess
    import sys
    code = "import sys, rlhf.deploy; assert 'kfp' not in sys.modules, 'kfp imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_default_display_name_is_the_model_name_and_job_within_vertex_limits():
    assert library.default_display_name("gs://b/models/my model/", "job-1") == "my-model-rlhf-job-1"
    assert library.default_display_name("///", "job-1") == "model-rlhf-job-1"
    assert len(library.default_display_name("m", "j" * 300)) == 128


def test_merge_adapter_writes_a_full_model_that_matches_base_plus_adapter(tmp_path):
    """`rlhf.deploy.merge_adapter` on a tiny model: base found from the adapter's own config, the
    merged directory loads alone and computes what base + adapter computes (bf16 merge tolerance)."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from test_reward_helpers import build_tiny_model
    base_dir = build_tiny_model(tmp_path / "base")
    torch.manual_seed(0)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                          LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft.save_pretrained(tmp_path / "adapter")

    assert library.merge_adapter(str(tmp_path / "adapter"), str(tmp_path / "merged")) == str(base_dir)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", torch_dtype=torch.float32)
    assert (tmp_path / "merged" / "tokenizer.json").exists()
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), tmp_path / "adapter")
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, reference(input_ids=ids).logits,
                                   atol=0.05, rtol=0.05)
