"""Submit a compiled pipeline to Vertex AI Pipelines or to a Kubeflow Pipelines cluster.

Plain functions over the official clients (`google.cloud.aiplatform.PipelineJob`, `kfp.Client`).
Parameter values are expected to be checked already (`rlhf.parameters.resolve_parameters`), and
what the run needs in the cloud by `preflight(...)` (images, datasets, the pipeline-root bucket, the
service account; `rlhf.preflight`, re-exported here), as `rlhf submit` does before sending.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from rlhf.errors import UserError
from rlhf.preflight import Problem, preflight

__all__ = ["Problem", "SubmittedRun", "parse_labels", "preflight", "submit_to_kfp", "submit_to_vertex"]

log = logging.getLogger(__name__)

# Vertex label rules: keys start with a lowercase letter; keys and values hold at most 63 lowercase
# letters, digits, '_' and '-' (https://cloud.google.com/vertex-ai/docs/general/labels-and-tags).
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")


@dataclass
class SubmittedRun:
    name: str  # Vertex: projects/P/locations/L/pipelineJobs/ID; KFP: the run id
    url: str = ""
    state: str = ""


def parse_labels(items) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--label {item!r}: expected KEY=VALUE, e.g. --label team=nlp")
        if not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value):
            raise UserError(f"--label {item!r}: Vertex labels are lowercase letters, digits, '_' and "
                            f"'-' (at most 63 each), and a key starts with a letter")
        labels[key] = value
    return labels


def submit_to_vertex(
    template_path: str,
    *,
    project: str,
    location: str,
    pipeline_root: str,
    parameter_values: Mapping[str, Any],
    service_account: Optional[str] = None,
    network: Optional[str] = None,
    encryption_spec_key_name: Optional[str] = None,
    labels: Optional[Mapping[str, str]] = None,
    display_name: Optional[str] = None,
    enable_caching: Optional[bool] = None,
    api_endpoint: Optional[str] = None,
    wait: bool = False,
) -> SubmittedRun:
    """Create a Vertex AI PipelineJob from the compiled template.

    `enable_caching=None` keeps each task's setting in the template (on by default). An `http://`
    `api_endpoint` (a local stand-in or a plain-HTTP proxy) is spoken to over REST without
    credentials; an `https://` or bare host endpoint uses the REST transport with the caller's
    application-default credentials.
    """
    from google.cloud import aiplatform

    init_args: dict[str, Any] = {"project": project, "location": location}
    if api_endpoint:
        init_args["api_endpoint"] = api_endpoint
        init_args["api_transport"] = "rest"
        if api_endpoint.startswith("http://"):
            from google.auth.credentials import AnonymousCredentials
            init_args["credentials"] = AnonymousCredentials()
    aiplatform.init(**init_args)
    job = aiplatform.PipelineJob(
        display_name=display_name or _template_name(template_path),
        template_path=template_path,
        pipeline_root=pipeline_root,
        parameter_values=dict(parameter_values),
        enable_caching=enable_caching,
        encryption_spec_key_name=encryption_spec_key_name or None,
        labels=dict(labels or {}) or None,
        project=project,
        location=location,
    )
    job.submit(service_account=service_account or None, network=network or None)
    run = SubmittedRun(name=job.resource_name, url=_vertex_console_url(job.resource_name))
    if wait:
        try:
            job.wait()
        except RuntimeError as e:  # the SDK raises when the job ends in failure
            log.error("%s", e)
        run.state = job.state.name if job.state is not None else ""
    return run


def submit_to_kfp(
    template_path: str,
    *,
    host: str,
    parameter_values: Mapping[str, Any],
    experiment: Optional[str] = None,
    run_name: Optional[str] = None,
    pipeline_root: Optional[str] = None,
    enable_caching: Optional[bool] = None,
    service_account: Optional[str] = None,
    wait: bool = False,
    timeout_s: int = 7 * 24 * 3600,
) -> SubmittedRun:
    """Create a run on a Kubeflow Pipelines cluster (its API at `host`, e.g. a port-forward)."""
    import kfp

    client = kfp.Client(host=host)
    result = client.create_run_from_pipeline_package(
        template_path,
        arguments=dict(parameter_values),
        run_name=run_name,
        experiment_name=experiment,
        pipeline_root=pipeline_root,
        enable_caching=enable_caching,
        service_account=service_account,
    )
    run = SubmittedRun(name=result.run_id, url=f"{host.rstrip('/')}/#/runs/details/{result.run_id}")
    if wait:
        finished = client.wait_for_run_completion(result.run_id, timeout=timeout_s)
        run.state = str(getattr(finished, "state", "") or "")
    return run


def _template_name(template_path: str) -> str:
    from rlhf.parameters import load_template
    return load_template(template_path).name or "rlhf-pipeline"


def _vertex_console_url(resource_name: str) -> str:
    # projects/P/locations/L/pipelineJobs/ID
    parts = resource_name.split("/")
    if len(parts) != 6:
        return ""
    _, project, _, location, _, job_id = parts
    return (f"https://console.cloud.google.com/vertex-ai/locations/{location}/pipelines/runs/"
            f"{job_id}?project={project}")
