"""A training stage's TensorBoard event files to a Vertex AI TensorBoard.

The trainers write event files into their `tensorboard_logs` output; when the pipeline's
`tensorboard_resource_id` is set, the stage's own task uploads them (no extra task in the graph)
into one TensorBoard experiment per pipeline run (one TensorBoard run per training stage), so the
`reward/...`, `loss/...`, `policy/...` curves appear under the same names as in the logs.
"""

import re

_TENSORBOARD = re.compile(r"^projects/([^/]+)/locations/([^/]+)/tensorboards/([^/]+)$")


def parse_tensorboard_resource_id(resource_id: str) -> tuple[str, str, str]:
    """`projects/P/locations/L/tensorboards/ID` -> (P, L, ID); ValueError naming the expected form."""
    match = _TENSORBOARD.match(resource_id.strip())
    if not match:
        raise ValueError(f"tensorboard_resource_id {resource_id!r}: expected "
                         f"projects/PROJECT_NUMBER/locations/LOCATION/tensorboards/TENSORBOARD_ID")
    return match.group(1), match.group(2), match.group(3)


def experiment_name(pipeline_job_name: str) -> str:
    """A TensorBoard experiment id from the pipeline job name: lowercase letters, digits and '-'."""
    name = re.sub(r"[^a-z0-9-]+", "-", pipeline_job_name.lower()).strip("-")
    return (name or "rlhf")[:128]


def upload_logs(logdir: str, tensorboard_resource_id: str, pipeline_job_name: str, run_name: str) -> str:
    """Upload every event file under `logdir`; returns the experiment's resource name ('' when skipped)."""
    if not tensorboard_resource_id.strip():
        return ""
    from google.cloud import aiplatform

    project, location, tensorboard_id = parse_tensorboard_resource_id(tensorboard_resource_id)
    experiment = experiment_name(pipeline_job_name)
    aiplatform.upload_tb_log(
        tensorboard_experiment_name=experiment, logdir=logdir, tensorboard_id=tensorboard_id,
        project=project, location=location, experiment_display_name=pipeline_job_name,
        run_name_prefix=f"{run_name}-")
    return f"{tensorboard_resource_id.strip()}/experiments/{experiment}"
