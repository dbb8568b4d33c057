"""KFP component: the Tune Policy stage, PPO (`rlhf.ppo`) against the reward model or DPO
(`rlhf.dpo`) on the preference pairs, as `tuning_method` says."""

from typing import Optional

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.image import TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def tune_policy(
    prompt_data: Input[Dataset],
    preference_data: Input[Dataset],
    reward_model: Input[Model],  # trained, or a reference to an existing classifier (rlhf.reward.existing)
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
    instruction: Optional[str] = None,  # None: Google's "not given"
):
    """Tune a LoRA policy; `policy_adapter` is the peft adapter directory (loads with
    `PeftModel.from_pretrained(base, path)`) whichever method ran. PPO samples the prompts and is
    rewarded by `reward_model`; DPO learns from the preference pairs with `kl_coeff` as its beta.
    Checkpoints live beside the adapter (`../ppo_run`, `../dpo_run`), so a preempted task restarted
    on the same outputs resumes. Settings default in `PPOConfig`/`DPOConfig`, never here; `options`
    (PPO) and `dpo_options` set any field the pipeline has no parameter for."""
    from rlhf import launch, storage
    from rlhf.errors import UserError
    from rlhf.pipeline_settings import DPO, REINFORCEMENT_LEARNING, TUNING_METHODS
    from rlhf.vertex_tensorboard import upload_logs

    if tuning_method == "ppo":
        from rlhf.ppo.outputs import export_artifacts, run_dir_beside
        from rlhf.ppo.run import tune as train
        from rlhf.reward.existing import reward_settings
        run_dir = run_dir_beside(policy_adapter.path)
        config = REINFORCEMENT_LEARNING.build({
            **REINFORCEMENT_LEARNING.settings_of(locals()), "prompt_dataset": prompt_data.path,
            **reward_settings(reward_model.path), "output_dir": run_dir}, options)
    elif tuning_method == "dpo":
        from rlhf.dpo.outputs import export_artifacts, run_dir_beside
        from rlhf.dpo.run import train_dpo as train
        run_dir = run_dir_beside(policy_adapter.path)
        config = DPO.build({**DPO.settings_of({**locals(), "beta": kl_coeff}),
                            "preference_dataset": preference_data.path, "output_dir": run_dir}, dpo_options)
    else:
        raise UserError(f"tuning_method {tuning_method!r}: use one of {', '.join(TUNING_METHODS)}")
    summary = launch.run(train, config)  # one process per GPU the task was given
    export_artifacts(run_dir, policy_adapter.path, tensorboard_logs.path, samples.path)
    for name, value in summary.items():
        metrics.log_metric(name, value)
    storage.write_json(metrics.path, summary)  # a file at .path keeps KFP's cache working
    policy_adapter.metadata["base_model"] = storage.read_json(
        storage.join(policy_adapter.path, "ppo_config.json"))["base_model"]
    upload_logs(tensorboard_logs.path, tensorboard_resource_id, pipeline_job_name,
                run_name=f"reinforcement-learning-{tuning_method}")
