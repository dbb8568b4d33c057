"""Training metrics to a Vertex AI TensorBoard, for every training stage alike."""

from kfp import dsl
from kfp.dsl import PipelineTask

from components.tensorboard import upload_tensorboard_logs
from pipelines.targets import request_small_machine


def upload_training_metrics(training_task: PipelineTask, target: str, tensorboard_resource_id,
                            run_name: str, display_name: str) -> None:
    """On Vertex, upload `training_task`'s TensorBoard event files to `tensorboard_resource_id`
    (the component does nothing when it is empty); other targets have no Vertex TensorBoard."""
    if target != "vertex":
        return
    upload = upload_tensorboard_logs(
        tensorboard_logs=training_task.outputs["tensorboard_logs"],
        tensorboard_resource_id=tensorboard_resource_id,
        run_name=run_name,
        pipeline_job_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
    ).set_display_name(display_name)
    request_small_machine(upload, target)
