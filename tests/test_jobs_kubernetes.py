"""Training stages as Kubeflow Trainer TrainJobs / Training Operator PyTorchJobs (`rlhf.jobs.kubernetes`):
the manifests validate against the CRDs' published OpenAPI schemas (trimmed copies in tests/data/,
sources in their `$comment`), and the launcher creates, follows, fails and cancels them on a local
stand-in of the Kubernetes API through the real `kubernetes` client."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import pytest
import yaml

from rlhf import storage
from rlhf.errors import UserError
from rlhf.jobs import kubernetes as kube
from rlhf.jobs.follow import POLL_ENV, JobCancelled, JobFailed
from rlhf.jobs.launcher import Launch, launch_reward
from rlhf.jobs.stages import Hardware, StageJob
from rlhf.pipeline_settings import REWARD_MODEL
from standins import KubernetesStandIn

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
IMAGE = "us-docker.pkg.dev/rlhf-pipeline/rlhf/rlhf-gpu:0.1.0"
NAMESPACE, ACCOUNT = "kubeflow-user", "pipeline-runner"


def _job(replicas=2, machine_type="", gpus=8) -> StageJob:
    return StageJob("reinforcement-learning", IMAGE,
                    ["tune", "--prompt-dataset", "gs://b/p", "--output-dir", "gs://b/run/ppo_run"],
                    Hardware(replicas, "NVIDIA_H100_80GB", gpus, machine_type, "200", "1600Gi"),
                    {"PYTHONUNBUFFERED": "1", "RLHF_HUB_TOKEN_SECRET": "projects/p/secrets/hf/versions/1"})


def _schema(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def _validate(manifest: dict, schema_file: str) -> None:
    """The CRD's structural schema (jsonschema), then its CEL rules on the name, which jsonschema
    does not run: the regex and the length are read from the rules' own text."""
    crd = _schema(schema_file)
    jsonschema.Draft7Validator(crd["openAPIV3Schema"]).validate(manifest)
    assert manifest["apiVersion"] == f"{crd['group']}/{crd['version']}" and manifest["kind"] == crd["kind"]
    name = manifest["metadata"]["name"]
    for rule in crd["openAPIV3Schema"].get("x-kubernetes-validations", []):
        matches = re.fullmatch(r"self\.metadata\.name\.matches\('(.+)'\)", rule["rule"])
        size = re.fullmatch(r"size\(self\.metadata\.name\) <= (\d+)", rule["rule"])
        if matches:
            assert re.match(matches.group(1), name), rule["message"]
        elif size:
            assert len(name) <= int(size.group(1)), rule["message"]
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63  # a DNS-1035 label anyway


@pytest.mark.parametrize("replicas,machine_type", [(1, ""), (3, ""), (2, "a3-highgpu-8g")])
def test_trainjob_manifest_validates_against_the_crd_schema(replicas, machine_type):
    job = _job(replicas, machine_type)
    manifest = kube.trainjob_manifest(job, name=kube.job_name(job.stage), namespace=NAMESPACE,
                                      service_account=ACCOUNT, pipeline_job_name="RLHF run 2024/01/01")
    _validate(manifest, "trainjob-v1alpha1.schema.json")
    trainer = manifest["spec"]["trainer"]
    assert trainer["numNodes"] == replicas and trainer["image"] == IMAGE
    assert trainer["command"] + trainer["args"] == job.command
    assert trainer["resourcesPerNode"] == {"limits": {"nvidia.com/gpu": 8, "cpu": "200", "memory": "1600Gi"}}
    assert manifest["spec"]["runtimeRef"] == {"name": "torch-distributed", "apiGroup": "trainer.kubeflow.org",
                                              "kind": "ClusterTrainingRuntime"}
    (patch,) = manifest["spec"]["runtimePatches"]
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = node["template"]["spec"]["template"]["spec"]
    assert node["name"] == "node" and pod["serviceAccountName"] == ACCOUNT
    assert pod.get("nodeSelector") == ({"node.kubernetes.io/instance-type": machine_type} if machine_type else None)
    assert manifest["metadata"]["labels"] == {"rlhf.pipeline/stage": "reinforcement-learning",
                                              "rlhf.pipeline/run": "RLHF-run-2024-01-01"}


@pytest.mark.parametrize("replicas", [1, 3])
def test_pytorchjob_manifest_validates_against_the_crd_schema(replicas):
    job = _job(replicas, "a2-ultragpu-8g")
    manifest = kube.pytorchjob_manifest(job, name=kube.job_name(job.stage), namespace=NAMESPACE,
                                        service_account=ACCOUNT)
    _validate(manifest, "pytorchjob-v1.schema.json")
    specs = manifest["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1 and specs.get("Worker", {}).get("replicas", 0) == replicas - 1
    for spec in specs.values():
        pod = spec["template"]["spec"]
        (container,) = pod["containers"]
        assert container["name"] == "pytorch"  # the Training Operator finds its container by this name
        assert container["command"] + container["args"] == job.command
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
        assert pod["serviceAccountName"] == ACCOUNT
        assert pod["nodeSelector"] == {"node.kubernetes.io/instance-type": "a2-ultragpu-8g"}


def test_the_schemas_refuse_what_the_api_server_would():
    job = _job()
    manifest = kube.trainjob_manifest(job, name="rlhf-x-1", namespace=NAMESPACE)
    manifest["spec"]["trainer"]["numNode"] = 2  # a typo
    with pytest.raises(jsonschema.ValidationError, match="numNode"):
        _validate(manifest, "trainjob-v1alpha1.schema.json")
    manifest = kube.pytorchjob_manifest(job, name="rlhf-x-1", namespace=NAMESPACE)
    manifest["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        _validate(manifest, "pytorchjob-v1.schema.json")
    with pytest.raises(AssertionError, match="RFC 1035"):
        _validate(kube.trainjob_manifest(job, name="Rlhf_x", namespace=NAMESPACE), "trainjob-v1alpha1.schema.json")


def test_a_cluster_without_gpus_asks_for_none():
    manifest = kube.trainjob_manifest(_job(gpus=0), name="rlhf-x-1", namespace=NAMESPACE)
    assert manifest["spec"]["trainer"]["resourcesPerNode"] == {"limits": {"cpu": "200", "memory": "1600Gi"}}
    (patch,) = manifest["spec"]["runtimePatches"]  # no account, no machine type: only the shared memory
    pod = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert set(pod) == {"volumes", "containers"}


def test_the_pods_identity_comes_from_its_service_account_token(tmp_path):
    import base64
    claims = {"sub": f"system:serviceaccount:{NAMESPACE}:{ACCOUNT}", "iss": "https://kubernetes.default.svc"}
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    (tmp_path / "namespace").write_text(NAMESPACE + "\n")
    (tmp_path / "token").write_text(f"eyJhbGciOiJSUzI1NiJ9.{payload}.signature")
    assert kube.pod_identity(str(tmp_path)) == (NAMESPACE, ACCOUNT)
    assert kube.pod_identity(str(tmp_path / "absent")) == ("", "")


# -- on a stand-in of the Kubernetes API through the real client ----------------------------------------

CREATED = {"type": "Created", "status": "True", "reason": "JobSetCreated", "message": "JobSet created"}


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
    monkeypatch.setenv(POLL_ENV, "0.05")


def _run(standin, operator="trainjob", job=None, say=None):
    lines = []
    status = kube.run_kubernetes_job(job or _job(), operator, namespace=NAMESPACE, service_account=ACCOUNT,
                                     host=standin.url, say=say or lines.append)
    return status, lines


def test_a_trainjob_is_created_and_followed_to_completion():
    complete = {"type": "Complete", "status": "True", "reason": "JobSetCompleted", "message": "done"}
    with KubernetesStandIn(conditions=[[], [CREATED], [CREATED, complete]]) as api:
        status, lines = _run(api)
    (create,) = api.requests_to("POST", r"/trainjobs$")
    assert create.path == f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{NAMESPACE}/trainjobs"
    _validate(create.body, "trainjob-v1alpha1.schema.json")
    assert create.body["spec"]["trainer"]["numNodes"] == 2
    assert status.state == "Complete" and not status.failed
    name = create.body["metadata"]["name"]
    assert [line for line in lines if line.startswith(f"TrainJob {name}: ")] == [
        f"TrainJob {name}: Pending", f"TrainJob {name}: Created", f"TrainJob {name}: Complete"]
    assert len(api.requests_to("GET", rf"/trainjobs/{name}$")) == 3


def test_a_failed_trainjob_raises_with_its_failure_condition():
    failed = {"type": "Failed", "status": "True", "reason": "JobSetFailed",
              "message": "jobset failed: node-1 exited with code 1 (CUDA out of memory)"}
    with KubernetesStandIn(conditions=[[CREATED], [CREATED, failed]]) as api:
        with pytest.raises(JobFailed, match=r"ended Failed: JobSetFailed: jobset failed: node-1 exited with code 1 "
                                            r"\(CUDA out of memory\)"):
            _run(api)


def test_a_pytorchjob_is_created_and_followed_to_success():
    succeeded = {"type": "Succeeded", "status": "True", "reason": "PyTorchJobSucceeded", "message": "ok"}
    running = {"type": "Running", "status": "True", "reason": "PyTorchJobRunning", "message": "running"}
    with KubernetesStandIn(conditions=[[CREATED], [CREATED, running], [CREATED, dict(running, status="False"), succeeded]]) as api:
        status, _ = _run(api, "pytorchjob", _job(3))
    (create,) = api.requests_to("POST", r"/pytorchjobs$")
    assert create.path == f"/apis/kubeflow.org/v1/namespaces/{NAMESPACE}/pytorchjobs"
    _validate(create.body, "pytorchjob-v1.schema.json")
    assert create.body["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 2
    assert status.state == "Succeeded"


def test_sigterm_deletes_the_trainjob():
    running = {"type": "Created", "status": "True", "reason": "JobSetCreated", "message": ""}
    with KubernetesStandIn(conditions=[[running]]) as api:  # runs until deleted
        def terminate_when_followed():
            deadline = time.monotonic() + 30
            while len(api.requests_to("GET", r"/trainjobs/")) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            os.kill(os.getpid(), signal.SIGTERM)  # handled by the launcher's follow loop (main thread)
        killer = threading.Thread(target=terminate_when_followed, daemon=True)
        killer.start()
        with pytest.raises(JobCancelled, match="was cancelled with the pipeline run"):
            _run(api)
        killer.join()
    (delete,) = api.requests_to("DELETE", r"/trainjobs/")
    assert delete.body == {"propagationPolicy": "Foreground"}
    assert not api.objects


def test_on_kubeflow_the_launcher_copies_the_outputs_into_its_task(gcs_prefix, tmp_path, monkeypatch):
    """KFP uploads a task's local output directories after it ends: the launcher puts what rank 0
    wrote on Cloud Storage there."""
    def artifact(name):
        return SimpleNamespace(uri=f"{gcs_prefix}/{name}", path=str(tmp_path / name))
    model, tensorboard = artifact("reward_model"), artifact("tensorboard_logs")
    storage.write_json(f"{model.uri}/metrics.json", {"eval/accuracy": 0.9, "eval/confusion_matrix": [[1, 0], [0, 1]]})
    storage.write_text(f"{tensorboard.uri}/events.out.tfevents.1", "events")
    complete = {"type": "Complete", "status": "True", "reason": "JobSetCompleted", "message": ""}
    with KubernetesStandIn(conditions=[[CREATED, complete]]) as api:
        launch = Launch("trainjob", IMAGE, Hardware(2, "", 1, "", "8", "32G"), pipeline_job_name="run-1")
        monkeypatch.setenv(kube.API_ENV, api.url)
        scalars, confusion = launch_reward(launch, REWARD_MODEL.defaults(), {}, artifact("pref"), artifact("eval"),
                                           model, tensorboard)
    assert scalars == {"eval/accuracy": 0.9} and confusion == [[1, 0], [0, 1]]
    assert json.loads((tmp_path / "reward_model" / "metrics.json").read_text())["eval/accuracy"] == 0.9
    assert (tmp_path / "tensorboard_logs" / "events.out.tfevents.1").read_text() == "events"
    (create,) = api.requests_to("POST", r"/trainjobs$")
    args = create.body["spec"]["trainer"]["args"]
    assert args[args.index("--eval-dataset") + 1] == f"{gcs_prefix}/eval"


def test_an_unknown_operator_is_refused():
    with pytest.raises(UserError, match="unknown training operator 'mpijob'"):
        kube.manifest("mpijob", _job(), name="x", namespace="y")


# -- compiling for Kubeflow with either operator ----------------------------------------------------------

def _compile(tmp_path, *flags):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLHF_")}
    out = tmp_path / "p.yaml"
    done = subprocess.run([sys.executable, "-m", "rlhf", "compile", "--output", str(out), *flags], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    return done, (yaml.safe_load(out.read_text()) if done.returncode == 0 else None)


def _launcher_platforms(spec) -> set:
    found = set()
    for component in spec["components"].values():
        for task in component.get("dag", {}).get("tasks", {}).values():
            if task["componentRef"]["name"].startswith("comp-launch-"):
                found.add(task["inputs"]["parameters"]["platform"]["runtimeValue"]["constant"])
    return found


def test_the_training_operator_flag_picks_the_kubeflow_job_kind(tmp_path):
    done, spec = _compile(tmp_path, "--target", "kfp", "--training-operator", "pytorchjob")
    assert done.returncode == 0, done.stderr
    assert "multi-node stages as pytorchjobs" in done.stdout
    assert _launcher_platforms(spec) == {"pytorchjob"}
    done, spec = _compile(tmp_path, "--target", "kfp", "--training-operator", "trainjob", "--no-gpu")
    assert _launcher_platforms(spec) == {"trainjob"}
    launcher = spec["deploymentSpec"]["executors"]["exec-launch-tuning-job"]["container"]
    assert "accelerator" not in launcher.get("resources", {})  # a CPU step; the job's nodes hold the GPUs
    done, _ = _compile(tmp_path, "--target", "vertex", "--training-operator", "trainjob")
    assert done.returncode == 2 and "--training-operator applies to --target kfp" in done.stderr


def test_without_an_operator_a_kubeflow_template_trains_in_one_pod_and_refuses_replicas(tmp_path):
    """The default Kubeflow YAML keeps a graph kfp's local runner can run (`rlhf run-local
    --template`: it cannot resolve dsl.OneOf), so it has no launcher, and submit says how to get one."""
    from rlhf.parameters import check_parameters, load_template
    done, spec = _compile(tmp_path, "--target", "kfp")
    assert done.returncode == 0, done.stderr
    assert _launcher_platforms(spec) == set()
    template = load_template(str(tmp_path / "p.yaml"))
    assert not template.launches_jobs
    given = {"prompt_dataset": "gs://bucket/p.jsonl", "preference_dataset": "gs://bucket/pref.jsonl",
             "large_model_reference": "smollm2-135m-instruct"}
    with pytest.raises(UserError, match=r"reinforcement_learning_replica_count 2: this template trains every stage "
                                        r"in one pod; compile it with `rlhf compile --target kfp --training-operator"):
        check_parameters(template, {**given, "reinforcement_learning_replica_count": 2}, {})
    assert check_parameters(template, given, {}) == given


# -- what the Training Operator then puts in each pod (kubeflow/training-operator v1.9,
#    pkg/controller.v1/pytorch/envvar.go and master.go), and what our bootstrap makes of it ------------

def _operator_pod_env(manifest: dict, replica_type: str, index: int) -> dict[str, str]:
    """The environment the operator injects into replica `index` of `replica_type` (Master/Worker):
    WORLD_SIZE = replicas x nprocPerNode (1 when not a number, e.g. "auto"), RANK and PET_NODE_RANK =
    the node's index (workers after the master), PET_NNODES = replicas, PET_NPROC_PER_NODE as given,
    MASTER_/PET_MASTER_ADDR = `<job>-master-0` and the port named `pytorchjob-port`."""
    spec = manifest["spec"]
    replicas = sum(r["replicas"] for r in spec["pytorchReplicaSpecs"].values())
    nproc = spec.get("nprocPerNode", "auto")
    world = replicas * (int(nproc) if nproc.isdigit() else 1)
    rank = index + (1 if replica_type == "Worker" else 0)
    [container] = spec["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == "pytorchjob-port")
    master = f"{manifest['metadata']['name']}-master-0"
    return {"PYTHONUNBUFFERED": "0", "MASTER_PORT": str(port), "PET_MASTER_PORT": str(port),
            "MASTER_ADDR": master, "PET_MASTER_ADDR": master, "WORLD_SIZE": str(world), "RANK": str(rank),
            "PET_NPROC_PER_NODE": nproc, "PET_NODE_RANK": str(rank), "PET_NNODES": str(replicas)}


@pytest.mark.parametrize("replicas", [1, 2])
def test_a_pytorchjob_node_runs_one_process_per_gpu_as_the_operator_sets_it_up(monkeypatch, replicas):
    """One replica on an 8-GPU machine: the operator's WORLD_SIZE=1/RANK=0/PET_NNODES=1 once made the
    bootstrap take the pod for one launched process, so 7 of the 8 GPUs sat idle."""
    import torch
    from rlhf import launch
    from rlhf.ppo.config import PPOConfig
    job = _job(replicas=replicas, machine_type="a3-highgpu-8g", gpus=8)
    manifest = kube.pytorchjob_manifest(job, name="rlhf-rl-1a2b3c4d", namespace=NAMESPACE)
    assert manifest["spec"]["nprocPerNode"] == "8"
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "CLUSTER_SPEC", "PET_NNODES", "PET_NODE_RANK",
                 "PET_MASTER_ADDR", "PET_MASTER_PORT", "PET_NPROC_PER_NODE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in _operator_pod_env(manifest, "Master", 0).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the node's 8 GPUs
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert os.environ["WORLD_SIZE"] == str(8 * replicas) and os.environ["PET_NNODES"] == str(replicas)
    assert not launch.inside_launched_worker()  # the pod is a node to launch, not a launched process
    layout = launch.node_layout(PPOConfig())
    assert (layout.nnodes, layout.nproc_per_node) == (replicas, 8) and launch.reports()
    # the processes our launcher then starts are launched workers, which run the step themselves
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert launch.inside_launched_worker()


def test_a_cpu_pytorchjob_runs_one_process_per_node():
    job = _job(replicas=2, gpus=8)
    manifest = kube.pytorchjob_manifest(job, name="rlhf-rl-1a2b3c4d", namespace=NAMESPACE, gpus=False)
    assert manifest["spec"]["nprocPerNode"] == "1"  # each process holds a whole model copy
    assert _operator_pod_env(manifest, "Worker", 0)["WORLD_SIZE"] == "2"


@pytest.mark.parametrize("operator", ["trainjob", "pytorchjob"])
def test_every_node_gets_a_memory_backed_dev_shm_sized_per_process(operator):
    """Kubernetes gives a pod 64 MB of /dev/shm; NCCL takes ~33 MB per communicator (Trainer's own
    guides mount a Memory emptyDir): 8 ranks on a node would fail without it."""
    job = _job(replicas=2, gpus=8)
    manifest = kube.manifest(operator, job, name="rlhf-rl-1a2b3c4d", namespace=NAMESPACE, service_account=ACCOUNT)
    _validate(manifest, "trainjob-v1alpha1.schema.json" if operator == "trainjob" else "pytorchjob-v1.schema.json")
    if operator == "trainjob":
        (patch,) = manifest["spec"]["runtimePatches"]
        [pod] = [j["template"]["spec"]["template"]["spec"] for j in
                 patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]]
    else:
        pod = manifest["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    [volume] = pod["volumes"]
    assert volume["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    [container] = pod["containers"]
    assert {"name": volume["name"], "mountPath": "/dev/shm"} in container["volumeMounts"]
