"""KFP component: tune the policy with PPO (`rlhf.ppo`) against the trained reward model."""

from typing import Optional

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.image import TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def tune_policy(
    prompt_data: Input[Dataset],
    reward_model: Input[Model],  # trained, or a reference to an existing classifier (rlhf.reward.existing)
    policy_adapter: Output[Model],
    metrics: Output[Metrics],
    tensorboard_logs: Output[Artifact],
    samples: Output[Artifact],
    large_model_reference: str,
    prompt_sequence_length: int,
    target_sequence_length: int,
    reinforcement_learning_train_steps: int,
    reinforcement_learning_rate_multiplier: float,
    kl_coeff: float,
    batch_size: int,
    seed: int,
    options: dict,
    instruction: Optional[str] = None,  # None: Google's "not given"
):
    """PPO-tune a LoRA policy; `policy_adapter` is the peft adapter directory (loads with
    `PeftModel.from_pretrained(base, path)`). Checkpoints live beside it (`../ppo_run`), so a
    preempted task restarted on the same outputs resumes. Settings default in `PPOConfig`, never
    here; `options` sets any field the pipeline has no parameter for (e.g. {"mini_batch_size": 4,
    "adaptive_kl": true})."""
    import os

    from rlhf import launch, storage
    from rlhf.pipeline_settings import REINFORCEMENT_LEARNING
    from rlhf.ppo.outputs import export_artifacts, run_dir_beside
    from rlhf.ppo.run import tune
    from rlhf.reward.existing import reward_settings

    run_dir = run_dir_beside(policy_adapter.path)
    config = REINFORCEMENT_LEARNING.build({
        **REINFORCEMENT_LEARNING.settings_of(locals()), "prompt_dataset": prompt_data.path,
        **reward_settings(reward_model.path), "output_dir": run_dir}, options)
    summary = launch.run(tune, config)  # one process per GPU the task was given
    export_artifacts(run_dir, policy_adapter.path, tensorboard_logs.path, samples.path)
    for name, value in summary.items():
        metrics.log_metric(name, value)
    storage.write_json(metrics.path, summary)  # a file at .path keeps KFP's cache working
    policy_adapter.metadata["base_model"] = storage.read_json(
        os.path.join(policy_adapter.path, "ppo_config.json"))["base_model"]
