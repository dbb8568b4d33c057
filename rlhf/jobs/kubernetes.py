"""A training stage as a Kubeflow Trainer `TrainJob` (trainer.kubeflow.org/v1alpha1, Trainer v2.2
or later) or, on clusters with the older Training Operator, a `PyTorchJob` (kubeflow.org/v1),
created and followed with the `kubernetes` client from inside the pipeline's launcher pod.

Every node gets the same image, command, environment and resources (`nvidia.com/gpu`, CPU and
memory per node), runs as the pipeline's own Kubernetes service account (so it reaches the same
buckets through Workload Identity), and lands on nodes of `machine_type` when one is given (the
`node.kubernetes.io/instance-type` label, e.g. a GKE node pool of a3-highgpu-8g). Trainer sets
`PET_NNODES`, `PET_NODE_RANK`, `PET_MASTER_ADDR`, `PET_MASTER_PORT` (and `PET_NPROC_PER_NODE`) on
each node, which the training command's bootstrap (`rlhf.launch`) reads; the Training Operator sets
the same `PET_*` names plus `MASTER_ADDR`, `WORLD_SIZE` and `RANK` (per node, not per process).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import uuid
from typing import Any, Callable, Optional

from rlhf.errors import UserError
from rlhf.jobs.follow import Status, follow, say
from rlhf.jobs.stages import StageJob

log = logging.getLogger(__name__)

OPERATORS = ("trainjob", "pytorchjob")
# (group, version, plural, kind)
TRAINJOB = ("trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob")
PYTORCHJOB = ("kubeflow.org", "v1", "pytorchjobs", "PyTorchJob")

# The ClusterTrainingRuntime every Trainer install ships for PyTorch (torchrun-style PET_* variables).
TRAINING_RUNTIME = "torch-distributed"
RUNTIME_PATCH_MANAGER = "rlhf.pipeline/launcher"
GPU_RESOURCE = "nvidia.com/gpu"
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
PYTORCHJOB_PORT = 23456  # the Training Operator's default master port

# The Kubernetes API to talk to (a local stand-in in tests); unset: the in-cluster configuration.
API_ENV = "RLHF_KUBERNETES_API"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

_NAME = re.compile(r"[^a-z0-9-]")


def job_name(stage: str) -> str:
    """An RFC 1035 label of at most 63 characters, unique per launch: rlhf-reward-model-1a2b3c4d."""
    return f"rlhf-{_NAME.sub('-', stage.lower())}"[:54] + "-" + uuid.uuid4().hex[:8]


def _label(text: str) -> str:
    value = re.sub(r"[^A-Za-z0-9_.-]", "-", text)[:63].strip("-_.")
    return value


def resources(job: StageJob, gpus: bool = True) -> dict[str, Any]:
    """Per-node limits (requests default to them): GPUs, CPU and memory as the stage asks."""
    hw = job.hardware
    limits: dict[str, Any] = {}
    if gpus and hw.accelerator_count > 0:
        limits[GPU_RESOURCE] = hw.accelerator_count
    if hw.cpu_limit:
        limits["cpu"] = hw.cpu_limit
    if hw.memory_limit:
        limits["memory"] = hw.memory_limit
    return {"limits": limits}


def processes_per_node(job: StageJob, gpus: bool = True) -> int:
    """One process per GPU a node asks for; one on a node without GPUs (each process of a CPU job
    would hold a whole model copy)."""
    return job.hardware.accelerator_count if gpus and job.hardware.accelerator_count > 0 else 1


# A pod's /dev/shm is 64 MB unless a memory-backed volume replaces it; NCCL alone takes ~33 MB per
# communicator and DataLoader workers share batches through it. It counts against the memory limit.
SHM_VOLUME = "dshm"
SHM_GI_PER_PROCESS = 1


def shm_volume(job: StageJob, gpus: bool = True) -> dict[str, Any]:
    return {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory",
                                            "sizeLimit": f"{SHM_GI_PER_PROCESS * processes_per_node(job, gpus)}Gi"}}


SHM_MOUNT = {"name": SHM_VOLUME, "mountPath": "/dev/shm"}


def _pod_settings(job: StageJob, service_account: str) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if service_account:
        spec["serviceAccountName"] = service_account
    if job.hardware.machine_type:
        spec["nodeSelector"] = {INSTANCE_TYPE_LABEL: job.hardware.machine_type}
    return spec


def _metadata(name: str, namespace: str, job: StageJob, pipeline_job_name: str) -> dict[str, Any]:
    labels = {"rlhf.pipeline/stage": job.stage}
    if pipeline_job_name and "{{" not in pipeline_job_name and _label(pipeline_job_name):
        labels["rlhf.pipeline/run"] = _label(pipeline_job_name)
    return {"name": name, "namespace": namespace, "labels": labels}


def trainjob_manifest(job: StageJob, *, name: str, namespace: str, service_account: str = "",
                      pipeline_job_name: str = "", gpus: bool = True) -> dict[str, Any]:
    """A TrainJob on the `torch-distributed` runtime (replicated job and container both named `node`);
    the service account, node selector and shared memory go in a runtime patch (Trainer v2.2+)."""
    group, version, _, kind = TRAINJOB
    trainer: dict[str, Any] = {
        "image": job.image, "command": job.command[:3], "args": job.command[3:],
        "env": [{"name": k, "value": v} for k, v in sorted(job.env.items())],
        "numNodes": job.hardware.replica_count, "resourcesPerNode": resources(job, gpus)}
    spec: dict[str, Any] = {"runtimeRef": {"name": TRAINING_RUNTIME, "apiGroup": group,
                                           "kind": "ClusterTrainingRuntime"},
                            "trainer": trainer}
    # the runtime's trainer container is named "node", like its replicated job
    pod = {**_pod_settings(job, service_account), "volumes": [shm_volume(job, gpus)],
           "containers": [{"name": "node", "volumeMounts": [SHM_MOUNT]}]}
    node_job = {"name": "node", "template": {"spec": {"template": {"spec": pod}}}}
    spec["runtimePatches"] = [{"manager": RUNTIME_PATCH_MANAGER, "trainingRuntimeSpec": {
        "template": {"spec": {"replicatedJobs": [node_job]}}}}]
    return {"apiVersion": f"{group}/{version}", "kind": kind,
            "metadata": _metadata(name, namespace, job, pipeline_job_name), "spec": spec}


def pytorchjob_manifest(job: StageJob, *, name: str, namespace: str, service_account: str = "",
                        pipeline_job_name: str = "", gpus: bool = True) -> dict[str, Any]:
    """A PyTorchJob: one Master and `replica_count - 1` Workers, no restarts by the operator (a
    failed node fails the job; the pipeline task's retry resumes from the checkpoints)."""
    group, version, _, kind = PYTORCHJOB
    container = {"name": "pytorch", "image": job.image, "command": job.command[:3], "args": job.command[3:],
                 "env": [{"name": k, "value": v} for k, v in sorted(job.env.items())],
                 "resources": resources(job, gpus), "volumeMounts": [SHM_MOUNT],
                 "ports": [{"name": "pytorchjob-port", "containerPort": PYTORCHJOB_PORT, "protocol": "TCP"}]}
    template = {"metadata": {"labels": {"rlhf.pipeline/stage": job.stage}},
                "spec": {**_pod_settings(job, service_account), "containers": [container],
                         "volumes": [shm_volume(job, gpus)]}}
    replicas = {"Master": {"replicas": 1, "restartPolicy": "Never", "template": template}}
    if job.hardware.replica_count > 1:
        replicas["Worker"] = {"replicas": job.hardware.replica_count - 1, "restartPolicy": "Never",
                              "template": template}
    return {"apiVersion": f"{group}/{version}", "kind": kind,
            "metadata": _metadata(name, namespace, job, pipeline_job_name),
            "spec": {"nprocPerNode": str(processes_per_node(job, gpus)),
                     "runPolicy": {"backoffLimit": 0, "cleanPodPolicy": "Running"},
                     "pytorchReplicaSpecs": replicas}}


def manifest(operator: str, job: StageJob, **kwargs) -> dict[str, Any]:
    if operator not in OPERATORS:
        raise UserError(f"unknown training operator {operator!r}: choose one of {', '.join(OPERATORS)}")
    return (trainjob_manifest if operator == "trainjob" else pytorchjob_manifest)(job, **kwargs)


def _true(conditions: list, kind: str) -> Optional[dict]:
    return next((c for c in conditions if c.get("type") == kind and c.get("status") == "True"), None)


def job_status(operator: str, obj: dict) -> Status:
    """Done when TrainJob's `Complete`/`Failed` (PyTorchJob's `Succeeded`/`Failed`) condition is
    True; the state shown is the newest true condition (or `Pending`)."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    success = "Complete" if operator == "trainjob" else "Succeeded"
    failed = _true(conditions, "Failed")
    if failed:
        return Status("Failed", done=True, failed=True,
                      message=": ".join(x for x in (failed.get("reason"), failed.get("message")) if x))
    if _true(conditions, success):
        return Status(success, done=True)
    true = [c for c in conditions if c.get("status") == "True"]
    return Status(true[-1]["type"] if true else "Pending")


def pod_identity(directory: str = SERVICE_ACCOUNT_DIR) -> tuple[str, str]:
    """(namespace, service account) of this pod, from its mounted service-account token (the
    token's `sub` is `system:serviceaccount:NAMESPACE:NAME`); ("", "") outside a cluster."""
    try:
        with open(os.path.join(directory, "namespace"), encoding="utf-8") as f:
            namespace = f.read().strip()
        with open(os.path.join(directory, "token"), encoding="utf-8") as f:
            payload = f.read().strip().split(".")[1]
    except (OSError, IndexError):
        return "", ""
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    subject = claims.get("sub", "").split(":")
    account = subject[3] if len(subject) == 4 and subject[:2] == ["system", "serviceaccount"] else ""
    return namespace, account


def api_client(host: Optional[str] = None):
    """A `kubernetes.client.ApiClient`: `host` (or $RLHF_KUBERNETES_API) as is, else in-cluster."""
    from kubernetes import client, config
    host = host or os.environ.get(API_ENV)
    if host:
        configuration = client.Configuration()
        configuration.host = host
        return client.ApiClient(configuration)
    config.load_incluster_config()
    return client.ApiClient()


def run_kubernetes_job(job: StageJob, operator: str, *, pipeline_job_name: str = "", gpus: bool = True,
                       namespace: str = "", service_account: str = "", host: Optional[str] = None,
                       interval_s: Optional[float] = None, say: Callable[[str], None] = say) -> Status:
    """Create the TrainJob (or PyTorchJob) in this pod's namespace, as this pod's service account;
    follow it (`rlhf.jobs.follow`): returns when it succeeded, raises JobFailed with its failure
    condition's reason and message, deletes it on SIGTERM."""
    from kubernetes import client
    here_namespace, here_account = pod_identity()
    namespace = namespace or here_namespace or "default"
    service_account = service_account or here_account
    group, version, plural, kind = TRAINJOB if operator == "trainjob" else PYTORCHJOB
    name = job_name(job.stage)
    body = manifest(operator, job, name=name, namespace=namespace, service_account=service_account,
                    pipeline_job_name=pipeline_job_name, gpus=gpus)
    api = client.CustomObjectsApi(api_client(host))
    api.create_namespaced_custom_object(group, version, namespace, plural, body)
    say(f"{kind} {namespace}/{name}: {job.hardware.replica_count} node(s) x {resources(job, gpus)['limits']}")
    say(f"follow it with: kubectl -n {namespace} get {plural}.{group} {name} -w")

    def poll() -> Status:
        try:
            return job_status(operator, api.get_namespaced_custom_object(group, version, namespace, plural, name))
        except client.ApiException as e:
            if e.status == 404:  # deleted (by us on cancel, or by someone else)
                return Status("Deleted", done=True, failed=True, message=f"{kind} {name} no longer exists")
            raise

    def cancel() -> None:
        api.delete_namespaced_custom_object(group, version, namespace, plural, name,
                                            body=client.V1DeleteOptions(propagation_policy="Foreground"))

    return follow(f"{kind} {name}", poll, cancel, interval_s=interval_s, say=say)
