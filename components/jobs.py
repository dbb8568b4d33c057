"""KFP components: a training stage as a multi-node job (`rlhf.jobs`).

A launcher takes the training component's own inputs plus where and how the job runs, and declares
the training component's outputs, so the stage returns the same artifacts whichever ran. It runs on
a small CPU machine: the job's nodes hold the GPUs. Bodies are a few lines over `rlhf.jobs.launcher`.
"""

from typing import Optional

from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def launch_reward_model_job(
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
    existing_classifier: str,
    tensorboard_resource_id: str,
    pipeline_job_name: str,
    platform: str,
    image: str,
    replica_count: int,
    machine_type: str,
    gpu_type: str,
    gpu_count: int,
    cpu_limit: str,
    memory_limit: str,
    project: str,
    location: str,
    pipeline_root: str,
    encryption_spec_key_name: str,
    eval_data: Optional[Input[Dataset]] = None,
    labeled_data: Optional[Input[Dataset]] = None,
    instruction: Optional[str] = None,
):
    """`train_reward_model` as a job of `replica_count` machines on `platform` (vertex, trainjob,
    pytorchjob); the same outputs, filled from what rank 0 wrote (the ROC curve is not written to
    disk, so only the in-task step logs it). An `existing_classifier` is adopted here, no job."""
    from rlhf import storage
    from rlhf.jobs.launcher import Hardware, Launch, launch_reward
    from rlhf.pipeline_settings import REWARD_MODEL
    from rlhf.reward.existing import adopt
    from rlhf.vertex_tensorboard import upload_logs

    if existing_classifier.strip():
        reward_model.metadata["reward_model"] = adopt(reward_model.path, existing_classifier, positive_label)
        return
    launch = Launch(platform, image, Hardware(replica_count, gpu_type, gpu_count, machine_type, cpu_limit,
                                              memory_limit), project, location, pipeline_job_name,
                    pipeline_root, encryption_spec_key_name)
    settings = REWARD_MODEL.settings_of(locals())
    scalars, confusion = launch_reward(launch, settings, options, preference_data, eval_data, reward_model,
                                       tensorboard_logs, labeled_data=labeled_data)
    for name, value in scalars.items():
        metrics.log_metric(name, value)
    storage.write_json(metrics.path, scalars)  # a file at .path keeps KFP's cache working
    if confusion is not None:
        from rlhf.reward.metrics import LABELS
        from rlhf.reward.outputs import INFO_FILE
        info = storage.join(reward_model.path, INFO_FILE)  # a classifier's class names
        labels = storage.read_json(info).get("labels") if storage.exists(info) else None
        classification_metrics.log_confusion_matrix(labels or LABELS, confusion)
        storage.write_json(classification_metrics.path, classification_metrics.metadata)
    reward_model.metadata["base_model"] = large_model_reference
    upload_logs(tensorboard_logs.path, tensorboard_resource_id, pipeline_job_name, run_name="reward-model")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def launch_tuning_job(
    prompt_data: Input[Dataset],
    preference_data: Input[Dataset],
    reward_model: Input[Model],
    policy_adapter: Output[Model],
    metrics: Output[Metrics],
    tensorboard_logs: Output[Artifact],
    samples: Output[Artifact],
    tuning_method: str,
    large_model_reference: str,
    prompt_sequence_length: int,
    target_sequence_length: int,
    reinforcement_learning_train_steps: int,
    reinforcement_learning_rate_multiplier: float,
    kl_coeff: float,
    batch_size: int,
    seed: int,
    options: dict,
    dpo_options: dict,
    tensorboard_resource_id: str,
    pipeline_job_name: str,
    platform: str,
    image: str,
    replica_count: int,
    machine_type: str,
    gpu_type: str,
    gpu_count: int,
    cpu_limit: str,
    memory_limit: str,
    project: str,
    location: str,
    pipeline_root: str,
    encryption_spec_key_name: str,
    instruction: Optional[str] = None,
):
    """`tune_policy` with PPO as a job of `replica_count` machines on `platform` (vertex, trainjob,
    pytorchjob); the same outputs, filled from the run directory rank 0 wrote. DPO trains in its
    pipeline task only (the first task refuses it here)."""
    from rlhf import storage
    from rlhf.errors import UserError
    from rlhf.jobs.launcher import Hardware, Launch, launch_ppo
    from rlhf.pipeline_settings import REINFORCEMENT_LEARNING
    from rlhf.vertex_tensorboard import upload_logs

    if tuning_method != "ppo":
        raise UserError(f"tuning_method {tuning_method!r} runs in its pipeline task, not as a multi-node job: "
                        f"set reinforcement_learning_replica_count 1 and reinforcement_learning_machine_type ''")
    launch = Launch(platform, image, Hardware(replica_count, gpu_type, gpu_count, machine_type, cpu_limit,
                                              memory_limit), project, location, pipeline_job_name,
                    pipeline_root, encryption_spec_key_name)
    settings = REINFORCEMENT_LEARNING.settings_of(locals())
    summary, base_model = launch_ppo(launch, settings, options, prompt_data, reward_model, policy_adapter,
                                     tensorboard_logs, samples)
    for name, value in summary.items():
        metrics.log_metric(name, value)
    storage.write_json(metrics.path, summary)  # a file at .path keeps KFP's cache working
    policy_adapter.metadata["base_model"] = base_model
    upload_logs(tensorboard_logs.path, tensorboard_resource_id, pipeline_job_name,
                run_name=f"reinforcement-learning-{tuning_method}")
