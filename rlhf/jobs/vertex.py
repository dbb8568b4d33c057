"""A training stage as a Vertex AI CustomJob, created and followed with google-cloud-aiplatform.

Worker pool 0 holds one replica (the master: node rank 0, global rank 0 writes the outputs), pool 1
the other `replica_count - 1`; every replica has the same machine (machine type, accelerator type
and count), image and command. Vertex AI tells each replica its place in `CLUSTER_SPEC`, which the
training command's bootstrap (`rlhf.launch`) reads.

What the pipeline run itself was given passes through: its service account and VPC network (from
the pipeline job, read at run time: what `rlhf submit --service-account/--network` set), its CMEK
key (the `encryption_spec_key_name` parameter, else the pipeline job's), its labels, and its
Cloud Storage root (the job's base output directory lies under it).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from rlhf.jobs.follow import Status, follow, say
from rlhf.jobs.machines import machine_type_for
from rlhf.jobs.stages import StageJob

log = logging.getLogger(__name__)

# The Vertex API to talk to, e.g. http://127.0.0.1:PORT for a local stand-in (spoken to over REST
# without credentials); unset: the region's endpoint with the task's own credentials.
API_ENDPOINT_ENV = "RLHF_VERTEX_API_ENDPOINT"

# Room for the image, a 70B model's weights (~140 GB in bf16) and the Hugging Face cache.
BOOT_DISK_GB = 500
BOOT_DISK_TYPE = "pd-ssd"
# Machine families that boot from Hyperdisk only: A3 Ultra (H200; Vertex's DiskSpec documents
# hyperdisk-balanced as its default) and A4 / A4X (B200, GB200: Compute Engine offers them no
# Persistent Disk).
HYPERDISK_FAMILIES = ("a3-ultragpu-", "a4-", "a4x-")
HYPERDISK_TYPE = "hyperdisk-balanced"


def boot_disk_type(machine_type: str) -> str:
    """The boot disk a replica of `machine_type` can have: pd-ssd, or Hyperdisk where only that boots."""
    return HYPERDISK_TYPE if machine_type.startswith(HYPERDISK_FAMILIES) else BOOT_DISK_TYPE

_DONE = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED",
         "JOB_STATE_PARTIALLY_SUCCEEDED"}
_LABEL = re.compile(r"[^a-z0-9_-]")


@dataclass(frozen=True)
class PipelineContext:
    """What the running pipeline job carries that its custom jobs should carry too."""
    service_account: str = ""
    network: str = ""
    kms_key_name: str = ""
    labels: dict = field(default_factory=dict)


def worker_pool_specs(job: StageJob) -> list[dict[str, Any]]:
    """Pool 0: one replica; pool 1: the rest (absent with one replica). The same spec in each."""
    hw = job.hardware
    machine = {"machine_type": machine_type_for(hw.accelerator_type, hw.accelerator_count, hw.machine_type,
                                                f"{job.stage.replace('-', '_')}_machine_type")}
    if hw.accelerator_count > 0:
        machine.update(accelerator_type=hw.accelerator_type, accelerator_count=hw.accelerator_count)
    container = {"image_uri": job.image, "command": job.command[:3], "args": job.command[3:],
                 "env": [{"name": k, "value": v} for k, v in sorted(job.env.items())]}
    pool = {"machine_spec": machine, "container_spec": container,
            "disk_spec": {"boot_disk_type": boot_disk_type(machine["machine_type"]),
                          "boot_disk_size_gb": BOOT_DISK_GB}}
    pools = [dict(pool, replica_count=1)]
    if hw.replica_count > 1:
        pools.append(dict(pool, replica_count=hw.replica_count - 1))
    return pools


def label_value(text: str) -> str:
    """A Vertex label value: at most 63 lowercase letters, digits, '_' and '-'."""
    return _LABEL.sub("-", text.lower())[:63]


def console_url(resource_name: str) -> str:
    """The Cloud console page of `projects/P/locations/L/customJobs/ID`."""
    parts = resource_name.split("/")
    if len(parts) != 6:
        return ""
    _, project, _, location, _, job_id = parts
    return f"https://console.cloud.google.com/vertex-ai/locations/{location}/training/{job_id}/cpu?project={project}"


def init_client(project: str, location: str, api_endpoint: Optional[str] = None) -> None:
    """`aiplatform.init` for `project`/`location`; an http:// endpoint is a local stand-in (REST,
    anonymous), any other endpoint is used over REST with the task's credentials."""
    from google.cloud import aiplatform
    args: dict[str, Any] = {"project": project, "location": location}
    api_endpoint = api_endpoint or os.environ.get(API_ENDPOINT_ENV) or None
    if api_endpoint:
        args.update(api_endpoint=api_endpoint, api_transport="rest")
        if api_endpoint.startswith("http://"):
            from google.auth.credentials import AnonymousCredentials
            args["credentials"] = AnonymousCredentials()
    aiplatform.init(**args)


def pipeline_context(project: str, location: str, pipeline_job_name: str) -> PipelineContext:
    """The running pipeline job's service account, network, CMEK key and labels; empty (with a
    warning: the custom job then runs with Vertex AI's defaults) when it cannot be read."""
    if not pipeline_job_name or "{{" in pipeline_job_name:
        return PipelineContext()
    from google.cloud import aiplatform
    name = f"projects/{project}/locations/{location}/pipelineJobs/{pipeline_job_name}"
    try:
        resource = aiplatform.PipelineJob.get(name).gca_resource
    except Exception as e:  # noqa: BLE001 - permissions or a pipeline not on Vertex: say so, go on
        log.warning("could not read the pipeline job %s (%s): the custom job gets Vertex AI's default "
                    "service account and network", name, str(e).splitlines()[0] if str(e) else type(e).__name__)
        return PipelineContext()
    return PipelineContext(service_account=resource.service_account, network=resource.network,
                           kms_key_name=resource.encryption_spec.kms_key_name, labels=dict(resource.labels))


def create_custom_job(job: StageJob, *, project: str, location: str, pipeline_job_name: str,
                      pipeline_root: str, encryption_spec_key_name: str = "", api_endpoint: Optional[str] = None):
    """Create (submit) the CustomJob; returns the `aiplatform.CustomJob`."""
    from google.cloud import aiplatform
    init_client(project, location, api_endpoint)
    context = pipeline_context(project, location, pipeline_job_name)
    labels = {**context.labels, "rlhf-stage": job.stage}
    if pipeline_job_name and "{{" not in pipeline_job_name:
        labels["rlhf-pipeline-job"] = label_value(pipeline_job_name)
    root = pipeline_root.rstrip("/")
    custom_job = aiplatform.CustomJob(
        display_name=f"{pipeline_job_name}-{job.stage}"[:128] if pipeline_job_name else f"rlhf-{job.stage}",
        worker_pool_specs=worker_pool_specs(job),
        base_output_dir=f"{root}/{pipeline_job_name or 'rlhf'}/{job.stage}-custom-job",
        staging_bucket=root,
        labels=labels,
        encryption_spec_key_name=encryption_spec_key_name or context.kms_key_name or None,
        project=project, location=location)
    # A replaced or preempted worker restarts the whole job, which resumes from its checkpoints.
    custom_job.submit(service_account=context.service_account or None, network=context.network or None,
                      restart_job_on_worker_restart=True)
    return custom_job


def status(custom_job) -> Status:
    state = custom_job.state.name  # fetches the job again
    error = custom_job.gca_resource.error
    message = error.message if error and error.message else ""
    return Status(state, done=state in _DONE, failed=state in _DONE and state != "JOB_STATE_SUCCEEDED",
                  message=message)


def run_custom_job(job: StageJob, *, project: str, location: str, pipeline_job_name: str, pipeline_root: str,
                   encryption_spec_key_name: str = "", api_endpoint: Optional[str] = None,
                   interval_s: Optional[float] = None, say: Callable[[str], None] = say) -> Status:
    """Create the CustomJob, print its console link, follow it (`rlhf.jobs.follow`): returns when
    it succeeded, raises JobFailed with its error, cancels it on SIGTERM."""
    custom_job = create_custom_job(job, project=project, location=location, pipeline_job_name=pipeline_job_name,
                                   pipeline_root=pipeline_root, encryption_spec_key_name=encryption_spec_key_name,
                                   api_endpoint=api_endpoint)
    hw = job.hardware
    say(f"custom job {custom_job.resource_name}: {hw.replica_count} x {worker_pool_specs(job)[0]['machine_spec']}")
    url = console_url(custom_job.resource_name)
    if url:
        say(f"view it at {url}")
    return follow(f"custom job {custom_job.resource_name.rsplit('/', 1)[-1]}", lambda: status(custom_job),
                  custom_job.cancel, interval_s=interval_s, say=say)
