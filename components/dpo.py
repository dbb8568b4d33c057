"""KFP component: tune the policy with DPO (`rlhf.dpo`) directly on the validated preference pairs."""

from typing import Optional

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.image import TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def tune_policy_dpo(
    preference_data: Input[Dataset],
    policy_adapter: Output[Model],
    metrics: Output[Metrics],
    tensorboard_logs: Output[Artifact],
    samples: Output[Artifact],
    large_model_reference: str,
    prompt_sequence_length: int,
    target_sequence_length: int,
    reinforcement_learning_train_steps: int,
    reinforcement_learning_rate_multiplier: float,
    beta: float,
    batch_size: int,
    seed: int,
    options: dict,
    instruction: Optional[str] = None,  # None: Google's "not given"
):
    """DPO-tune a LoRA policy; `policy_adapter` is the peft adapter directory, as PPO's (evaluation
    and deployment take either). Checkpoints live beside it (`../dpo_run`), so a preempted task
    restarted on the same outputs resumes. Settings default in `DPOConfig`, never here; `options`
    sets any field the pipeline has no parameter for (e.g. {"loss_type": "ipo"})."""
    import os

    from rlhf import launch, storage
    from rlhf.dpo.outputs import export_artifacts, run_dir_beside
    from rlhf.dpo.run import train_dpo
    from rlhf.pipeline_settings import DPO

    run_dir = run_dir_beside(policy_adapter.path)
    config = DPO.build({**DPO.settings_of(locals()), "preference_dataset": preference_data.path,
                        "output_dir": run_dir}, options)
    summary = launch.run(train_dpo, config)  # one process per GPU the task was given
    export_artifacts(run_dir, policy_adapter.path, tensorboard_logs.path, samples.path)
    for name, value in summary.items():
        metrics.log_metric(name, value)
    storage.write_json(metrics.path, summary)  # a file at .path keeps KFP's cache working
    policy_adapter.metadata["base_model"] = storage.read_json(
        os.path.join(policy_adapter.path, "ppo_config.json"))["base_model"]
