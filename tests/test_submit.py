"""`rlhf submit` through the real clients (google-cloud-aiplatform over REST, kfp.Client) to local
stand-ins of the Vertex `pipelineJobs` API and the KFP v2beta1 API, asserting on what they received;
bad parameter values that must send nothing; and the checks before sending (`rlhf.preflight`)
against a registry stand-in, the Cloud Storage emulator and an IAM stand-in."""

from __future__ import annotations

import json
import socket
import uuid

import pytest
import yaml

from rlhf import __version__, cli
from rlhf.preflight import ACT_AS, IAM_ENDPOINT_ENV, REGISTRY_ENDPOINTS_ENV
from standins import IamStandIn, KfpStandIn, RegistryStandIn, VertexStandIn
from test_preflight import IMAGES, REGISTRY, SERVING, compile_template, registry_endpoints

SERVICE_ACCOUNT = "runner@p1.iam.gserviceaccount.com"
KMS_KEY = "projects/p1/locations/us-central1/keyRings/ring/cryptoKeys/key"


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    """Compiled against REGISTRY, which the registry stand-in serves; and with the placeholder."""
    out = tmp_path_factory.mktemp("templates")
    return {"vertex": compile_template(out / "vertex.yaml"), "kfp": compile_template(out / "kfp.yaml", "kfp"),
            "placeholder": compile_template(out / "placeholder.yaml", registry=None),
            "placeholder-kfp": compile_template(out / "placeholder-kfp.yaml", "kfp", registry=None)}


class Cloud:
    """What `rlhf submit` checks before sending, all local: the registry and IAM stand-ins (found
    through RLHF_REGISTRY_ENDPOINTS / RLHF_IAM_ENDPOINT), and GOOD's datasets in the emulator."""

    def __init__(self, registry: RegistryStandIn, iam: IamStandIn):
        self.registry, self.iam = registry, iam


@pytest.fixture
def cloud(gcs_emulator, monkeypatch):
    bucket = gcs_emulator.client().bucket(gcs_emulator.bucket)
    for name in ("pref.jsonl", "prompts.jsonl", "eval.jsonl"):
        bucket.blob(f"data/{name}").upload_from_string('{"x": 1}\n')
    # submit() checks that an existing pipeline-root bucket belongs to the project, asking Resource
    # Manager for the project number over gRPC, which no local stand-in can answer (the client
    # insists on TLS): ~55 s of retries offline, then only a logged error. Answer that one call as
    # Resource Manager would for the emulator's bucket.
    from google.cloud.aiplatform.utils import resource_manager_utils
    number = str(gcs_emulator.client().get_bucket(gcs_emulator.bucket).project_number)
    monkeypatch.setattr(resource_manager_utils, "get_project_number", lambda *a, **k: number)
    with RegistryStandIn(images=IMAGES | {SERVING}) as registry, \
            IamStandIn({SERVICE_ACCOUNT: {ACT_AS}, "viewer@p1.iam.gserviceaccount.com": set()}) as iam:
        monkeypatch.setenv(REGISTRY_ENDPOINTS_ENV,
                           ",".join(f"{host}={url}" for host, url in registry_endpoints(registry.url).items()))
        monkeypatch.setenv(IAM_ENDPOINT_ENV, iam.url)
        yield Cloud(registry, iam)


@pytest.fixture
def vertex(cloud):
    with VertexStandIn() as standin:
        yield standin


@pytest.fixture
def kfp_api(cloud):
    with KfpStandIn() as standin:
        yield standin


def _vertex_args(template, vertex, *extra):
    # The pipeline root must exist (preflight): the emulator's bucket, a fresh directory per call.
    root = f"gs://rlhf-test-bucket/runs/{uuid.uuid4().hex[:10]}"
    return ["submit", "--template", template, "--project", "p1", "--location", "us-central1",
            "--pipeline-root", root, "--api-endpoint", vertex.url,
            "--service-account", SERVICE_ACCOUNT, *extra]


GOOD = ["--parameter", "preference_dataset=gs://rlhf-test-bucket/data/pref.jsonl",
        "--parameter", "prompt_dataset=gs://rlhf-test-bucket/data/prompts.jsonl",
        "--parameter", "large_model_reference=smollm2-135m-instruct"]


def test_vertex_submit_sends_the_template_values_and_options(templates, vertex, cloud, tmp_path, capsys):
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"reward_model_train_steps": 50, "kl_coeff": 0.2, "deploy_model": False,
                                  "instruction": "Summarize in less than 50 words."}))
    args = _vertex_args(
        templates["vertex"], vertex, *GOOD, "--parameter-file", str(params),
        "--parameter", "reward_model_train_steps=300",  # overrides the file
        "--parameter", "accelerator_type=GPU",
        "--network", "projects/123/global/networks/vpc",
        "--encryption-spec-key-name", KMS_KEY, "--label", "team=nlp", "--label", "run=test-1",
        "--display-name", "my-rlhf-run", "--no-cache")
    code = cli.main(args)
    assert code == 0, capsys.readouterr()
    # checked before sending: the images (not the serving one: deploy_model is false), the service
    # account, the datasets and the bucket
    assert len(cloud.registry.requests_to("HEAD", r"/manifests/")) == len(IMAGES)
    assert cloud.iam.requests_to("POST", rf"/{SERVICE_ACCOUNT}:testIamPermissions$")
    created = vertex.requests_to("POST", r"/pipelineJobs$")
    assert len(created) == 1
    request = created[0]
    assert request.path == "/v1/projects/p1/locations/us-central1/pipelineJobs"
    body = request.body
    template = yaml.safe_load(open(templates["vertex"]))
    assert body["pipelineSpec"]["root"]["inputDefinitions"] == template["root"]["inputDefinitions"]
    assert body["pipelineSpec"]["root"]["dag"].keys() == template["root"]["dag"].keys()
    assert body["pipelineSpec"]["deploymentSpec"] == template["deploymentSpec"]
    assert body["runtimeConfig"]["gcsOutputDirectory"] == args[args.index("--pipeline-root") + 1]
    assert body["runtimeConfig"]["parameterValues"] == {
        "preference_dataset": "gs://rlhf-test-bucket/data/pref.jsonl",
        "prompt_dataset": "gs://rlhf-test-bucket/data/prompts.jsonl",
        "large_model_reference": "smollm2-135m-instruct",
        "reward_model_train_steps": 300,
        "kl_coeff": 0.2,
        "deploy_model": False,
        "instruction": "Summarize in less than 50 words.",
        "accelerator_type": "GPU",
        # the run's CMEK key also encrypts what the pipeline creates, unless given as a parameter
        "encryption_spec_key_name": KMS_KEY,
    }
    assert body["serviceAccount"] == "runner@p1.iam.gserviceaccount.com"
    assert body["network"] == "projects/123/global/networks/vpc"
    assert body["encryptionSpec"] == {"kmsKeyName": KMS_KEY}
    assert body["labels"]["team"] == "nlp" and body["labels"]["run"] == "test-1"
    assert body["displayName"] == "my-rlhf-run"
    # --no-cache turns caching off in every task of the submitted spec
    caching = [t["cachingOptions"] for c in body["pipelineSpec"]["components"].values()
               for t in c.get("dag", {}).get("tasks", {}).values()]
    assert caching and all(not c.get("enableCache") for c in caching)
    out = capsys.readouterr().out
    assert "projects/p1/locations/us-central1/pipelineJobs/" in out
    assert "console.cloud.google.com" in out


def test_vertex_submit_keeps_caching_and_wait_reports_the_final_state(templates, vertex, capsys):
    code = cli.main(_vertex_args(templates["vertex"], vertex, *GOOD, "--wait"))
    assert code == 0, capsys.readouterr()
    body = vertex.requests_to("POST", r"/pipelineJobs$")[0].body
    assert "encryptionSpec" not in body and "network" not in body
    # Condition groups (dsl.If branches) are tasks without caching options of their own.
    caching = [t["cachingOptions"] for t in body["pipelineSpec"]["root"]["dag"]["tasks"].values()
               if "cachingOptions" in t]
    assert caching and all(c.get("enableCache") for c in caching)
    assert vertex.requests_to("GET", r"/pipelineJobs/")  # polled until done
    assert "PIPELINE_STATE_SUCCEEDED" in capsys.readouterr().out


def test_vertex_wait_exits_1_when_the_run_fails(templates, cloud, capsys):
    with VertexStandIn(final_state="PIPELINE_STATE_FAILED") as vertex:
        code = cli.main(_vertex_args(templates["vertex"], vertex, *GOOD, "--wait"))
    assert code == 1
    assert "PIPELINE_STATE_FAILED" in capsys.readouterr().out


def test_vertex_refuses_a_local_path_that_kfp_pods_may_hold(templates, kfp_api, capsys):
    local = ["--parameter", "eval_dataset=/data/eval.jsonl"]
    with VertexStandIn() as vertex:
        assert cli.main(_vertex_args(templates["vertex"], vertex, *GOOD, *local)) == 2
        assert "a path on this machine" in capsys.readouterr().err
        assert vertex.requests == []
    # on a Kubeflow cluster an absolute path may be on a volume or in the image
    assert cli.main(["submit", "--kfp-host", kfp_api.url, "--template", templates["kfp"], *GOOD, *local]) == 0
    runs = kfp_api.requests_to("POST", r"/apis/v2beta1/runs$")
    assert runs[0].body["runtime_config"]["parameters"]["eval_dataset"] == "/data/eval.jsonl"


def test_kfp_submit_sends_the_run_to_the_v2beta1_api(templates, kfp_api, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("reinforcement_learning_train_steps: 40\neval_dataset: gs://rlhf-test-bucket/data/eval.jsonl\n"
                      "instruction: null  # unset, as if not given\n")
    code = cli.main(["submit", "--kfp-host", kfp_api.url, "--template", templates["kfp"], *GOOD,
                     "--parameter-file", str(params), "--experiment", "rlhf", "--run-name", "run-1"])
    assert code == 0, capsys.readouterr()
    experiments = kfp_api.requests_to("POST", r"/apis/v2beta1/experiments$")
    assert [e.body["display_name"] for e in experiments] == ["rlhf"]
    runs = kfp_api.requests_to("POST", r"/apis/v2beta1/runs$")
    assert len(runs) == 1
    body = runs[0].body
    assert body["display_name"] == "run-1"
    assert body["experiment_id"] == next(iter(kfp_api.experiments))
    assert body["pipeline_spec"]["root"] == yaml.safe_load(open(templates["kfp"]))["root"]
    assert body["runtime_config"]["parameters"] == {
        "preference_dataset": "gs://rlhf-test-bucket/data/pref.jsonl",
        "prompt_dataset": "gs://rlhf-test-bucket/data/prompts.jsonl",
        "large_model_reference": "smollm2-135m-instruct",
        "reinforcement_learning_train_steps": 40,
        "eval_dataset": "gs://rlhf-test-bucket/data/eval.jsonl",
    }
    assert next(iter(kfp_api.runs)) in capsys.readouterr().out


def test_preflight_lists_every_problem_together_and_sends_nothing(templates, vertex, cloud, capsys):
    cloud.registry.images.discard(f"p1/rlhf/rlhf-gpu:{__version__}")
    misspelt = ["--parameter", "preference_dataset=gs://rlhf-test-bucket/data/prefs.jsonl"]
    args = _vertex_args(templates["vertex"], vertex, *misspelt, *GOOD[2:])
    args[args.index("--pipeline-root") + 1] = "gs://rlhf-no-such-root/runs"
    args[args.index("--service-account") + 1] = "viewer@p1.iam.gserviceaccount.com"
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "4 problem(s) found before submitting; nothing was submitted" in err and "Traceback" not in err
    assert f"{REGISTRY}/rlhf-gpu:{__version__}: does not exist" in err
    assert f"gcloud builds submit --config cloudbuild.yaml --substitutions=_REGISTRY={REGISTRY}" in err
    assert "parameter preference_dataset=gs://rlhf-test-bucket/data/prefs.jsonl: no such object" in err
    assert "bucket rlhf-no-such-root does not exist" in err
    assert "roles/iam.serviceAccountUser" in err
    assert vertex.requests == []


def test_a_template_with_the_placeholder_registry_is_refused_even_offline(templates, vertex, capsys, monkeypatch):
    from components.image import DEFAULT_REGISTRY

    attempts = []

    def refuse(*args):
        attempts.append(args)
        raise OSError("network is unreachable (test)")
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: refuse(address))
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    code = cli.main(_vertex_args(templates["placeholder"], vertex, *GOOD, "--skip-preflight"))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "warning: --skip-preflight" in err
    assert f"the template names the placeholder registry {DEFAULT_REGISTRY}" in err
    registry = "us-central1-docker.pkg.dev/p1/rlhf"  # from --location and --project
    assert f"gcloud builds submit --config cloudbuild.yaml --substitutions=_REGISTRY={registry}" in err
    assert f"make push-images REGISTRY={registry}" in err and f"rlhf compile --image-registry {registry}" in err
    assert attempts == [] and vertex.requests == []


def test_skip_preflight_sends_without_the_network_checks(templates, vertex, cloud, capsys):
    args = _vertex_args(templates["vertex"], vertex, *GOOD, "--skip-preflight")
    args[args.index("--service-account") + 1] = "nobody@p1.iam.gserviceaccount.com"  # would be refused
    cloud.registry.images.clear()  # so would the images
    assert cli.main(args) == 0, capsys.readouterr()
    assert "warning: --skip-preflight: images, datasets" in capsys.readouterr().err
    assert cloud.registry.requests == [] and cloud.iam.requests == []
    assert len(vertex.requests_to("POST", r"/pipelineJobs$")) == 1


def test_kfp_only_warns_about_images_a_cluster_may_hold(templates, kfp_api, cloud, capsys):
    cloud.registry.images.clear()
    for template in (templates["kfp"], templates["placeholder-kfp"]):
        assert cli.main(["submit", "--kfp-host", kfp_api.url, "--template", template, *GOOD]) == 0
        err = capsys.readouterr().err
        assert "warning: " in err and ("does not exist" in err or "kind load" in err)
    assert len(kfp_api.requests_to("POST", r"/apis/v2beta1/runs$")) == 2
    # datasets are checked there too
    assert cli.main(["submit", "--kfp-host", kfp_api.url, "--template", templates["kfp"], *GOOD,
                     "--parameter", "eval_dataset=gs://rlhf-test-bucket/data/missing.jsonl"]) == 2
    assert "parameter eval_dataset=gs://rlhf-test-bucket/data/missing.jsonl: no such object" in capsys.readouterr().err
    assert len(kfp_api.requests_to("POST", r"/apis/v2beta1/runs$")) == 2


@pytest.mark.parametrize("bad, message", [
    (["--parameter", "reward_model_train_step=10"], "did you mean 'reward_model_train_steps'"),
    (["--parameter", "reward_model_train_steps=ten"], "must be an integer"),
    (["--parameter", "reward_model_train_steps=0"], "reward_model_train_steps 0: must be a positive integer"),
    (["--parameter", "reinforcement_learning_train_steps=-5"], "must be a positive integer"),
    (["--parameter", "kl_coeff=abc"], "must be a number"),
    (["--parameter", "kl_coeff=-0.5"], "kl_coeff -0.5: must be 0 or more"),
    # Each step's own config checks the values its options carry, under the options' name.
    (["--parameter", 'reinforcement_learning_options={"kl_coeff": 0.5}'],
     "use the kl_coeff parameter instead of reinforcement_learning_options.kl_coeff"),
    (["--parameter", 'reward_model_options={"batch_size": 4, "seed": 1}'],
     "use the reward_model_batch_size parameter instead of reward_model_options.batch_size; "
     "use the seed parameter instead of reward_model_options.seed"),
    (["--parameter", 'reinforcement_learning_options={"mini_batch_size": 5}'],
     "reinforcement_learning_options.mini_batch_size 5: must divide batch_size 16"),
    (["--parameter", 'reinforcement_learning_options={"prompt_dataset": "gs://b/p.jsonl"}'],
     "reinforcement_learning_options.prompt_dataset is set by the pipeline"),
    (["--parameter", 'reward_model_options={"marjin": 0.5}'], "unknown reward_model_options setting(s) marjin"),
    (["--parameter", "large_model_reference=flan-t5-xl"], "'flan-t5-xl': is google/flan-t5-xl (an encoder-decoder model)"),
    (["--parameter", 'reward_model_options={"lr_scheduler": "step"}'],
     "reward_model_options.lr_scheduler 'step': use one of linear, cosine, constant"),
    (["--parameter", "deploy_model=maybe"], "must be true or false"),
    (["--parameter", "eval_dataset=gs:/bucket/eval.jsonl"], "malformed Cloud Storage URI"),
    (["--parameter", "eval_dataset=gs://Bad_Bucket!/eval.jsonl"], "not a valid bucket name"),
    (["--parameter", "eval_dataset=data/eval.jsonl"], "a path on this machine"),
    (["--parameter", "accelerator_type=FPGA"], "use GPU; TPUs are not supported"),
    (["--parameter", "accelerator_type=TPU"], "TPUs are not supported: the trainers run on NVIDIA GPUs"),
    (["--parameter", "reward_model_accelerator_type=NVIDIA_L5"], "did you mean 'NVIDIA_L4'"),
    (["--parameter", "reward_model_memory_limit=32 GB"], "amount of memory"),
    (["--parameter", "evaluation_cpu_limit=eight"], "number of CPUs"),
    (["--parameter", "reinforcement_learning_options=[1, 2]"], "must be a JSON object"),
    (["--parameter", "steps"], "expected NAME=VALUE"),
])
def test_a_bad_parameter_exits_2_and_sends_nothing(templates, bad, message, capsys):
    with VertexStandIn() as vertex, KfpStandIn() as kfp_api:
        code = cli.main(_vertex_args(templates["vertex"], vertex, *GOOD, *bad))
        assert code == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
        code = cli.main(["submit", "--kfp-host", kfp_api.url, "--template", templates["kfp"], *GOOD, *bad])
        assert code == 2
        assert message in capsys.readouterr().err
        assert vertex.requests == [] and kfp_api.requests == []


@pytest.mark.parametrize("case, message", [
    ("file-type", "must be an integer"),
    ("missing-required", "required parameter 'large_model_reference'"),
    ("bad-file", "cannot parse the parameter file"),
    ("wrong-target", "was compiled for 'kfp'"),
    ("bad-root", "--pipeline-root"),
    ("bad-kms", "--encryption-spec-key-name"),
    ("bad-label", "--label"),
    ("no-template", "no such"),
])
def test_other_mistakes_exit_2_and_send_nothing(templates, case, message, tmp_path, capsys):
    params = tmp_path / "params.json"
    with VertexStandIn() as vertex:
        args = _vertex_args(templates["vertex"], vertex, *GOOD)
        if case == "file-type":
            params.write_text(json.dumps({"reward_model_train_steps": "100"}))
            args += ["--parameter-file", str(params)]
        elif case == "missing-required":
            args = _vertex_args(templates["vertex"], vertex, *GOOD[:4])
        elif case == "bad-file":
            params.write_text("{not json")
            args += ["--parameter-file", str(params)]
        elif case == "wrong-target":
            args[args.index(templates["vertex"])] = templates["kfp"]
        elif case == "bad-root":
            args[args.index("--pipeline-root") + 1] = "rlhf-test-bucket/runs"
        elif case == "bad-kms":
            args += ["--encryption-spec-key-name", "my-key"]
        elif case == "bad-label":
            args += ["--label", "Team=NLP"]
        elif case == "no-template":
            args[args.index(templates["vertex"])] = str(tmp_path / "missing.yaml")
        code = cli.main(args)
        err = capsys.readouterr().err
        assert code == 2, err
        assert message in err and "Traceback" not in err
        assert vertex.requests == []
