"""KFP component: train the reward model (`rlhf.reward.train`) on validated preference data."""

from typing import Optional

from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components.image import TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def train_reward_model(
    preference_data: Input[Dataset],
    reward_model: Output[Model],
    metrics: Output[Metrics],
    classification_metrics: Output[ClassificationMetrics],
    tensorboard_logs: Output[Artifact],
    large_model_reference: str,
    prompt_sequence_length: int,
    target_sequence_length: int,
    reward_model_train_steps: int,
    reward_model_learning_rate_multiplier: float,
    reward_lora_dim: int,
    batch_size: int,
    gradient_accumulation_steps: int,
    seed: int,
    reward_model_type: str,
    positive_label: str,
    options: dict,
    existing_classifier: str,  # the pipeline's reward_model: adopted instead of trained when given
    tensorboard_resource_id: str,
    pipeline_job_name: str,
    eval_data: Optional[Input[Dataset]] = None,  # an artifact that may be absent, not a setting
    labeled_data: Optional[Input[Dataset]] = None,  # read only by a classifier
    instruction: Optional[str] = None,  # None: Google's "not given"
):
    """Train a LoRA reward model (Bradley–Terry on `preference_data`, or with reward_model_type
    classifier a sequence classifier on `labeled_data`) and write it to `reward_model` (layout in
    `rlhf.reward`); a preempted task restarted on the same output resumes from its checkpoint.
    Settings default in `RewardConfig`, never here; `options` sets any field the pipeline has no
    parameter for (e.g. {"margin": 0.5, "checkpoint_every": 50}). With `existing_classifier` (a
    Hugging Face sequence classifier) nothing is trained: `reward_model` refers to it.
    `tensorboard_resource_id`: a Vertex AI TensorBoard that receives the event files ("": none)."""
    from rlhf import launch, storage
    from rlhf.pipeline_settings import REWARD_MODEL
    from rlhf.reward.existing import adopt
    from rlhf.reward.metrics import LABELS, scalar_metrics
    from rlhf.reward.train import train_reward_model as train
    from rlhf.vertex_tensorboard import upload_logs

    if existing_classifier.strip():
        reward_model.metadata["reward_model"] = adopt(reward_model.path, existing_classifier, positive_label)
        return

    config = REWARD_MODEL.build({
        **REWARD_MODEL.settings_of(locals()), "preference_dataset": preference_data.path,
        "output_dir": reward_model.path, "eval_dataset": eval_data.path if eval_data is not None else "",
        "labeled_dataset": labeled_data.path if labeled_data is not None else "",
        "tensorboard_dir": tensorboard_logs.path}, options)
    result = launch.run(train, config)  # one process per GPU the task was given
    scalars = scalar_metrics(result.metrics)
    for name, value in scalars.items():
        metrics.log_metric(name, value)
    storage.write_json(metrics.path, scalars)  # a file at .path keeps KFP's cache working
    prefix = "eval" if "eval/confusion_matrix" in result.metrics else "heldout"
    if f"{prefix}/confusion_matrix" in result.metrics:
        classification_metrics.log_confusion_matrix(result.labels or LABELS,
                                                    result.metrics[f"{prefix}/confusion_matrix"])
        if prefix in result.roc:  # a classifier's held-out split may lack a class: no curve then
            fpr, tpr, thresholds = result.roc[prefix]
            classification_metrics.log_roc_curve(fpr, tpr, thresholds)
        storage.write_json(classification_metrics.path, classification_metrics.metadata)
    reward_model.metadata["base_model"] = large_model_reference
    upload_logs(tensorboard_logs.path, tensorboard_resource_id, pipeline_job_name, run_name="reward-model")
