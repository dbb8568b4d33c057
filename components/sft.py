"""KFP component: supervised fine-tuning (`rlhf.sft`) before the reward model; its merged model is
the base of every later stage."""

from typing import NamedTuple, Optional

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.image import IMAGE, TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def supervised_fine_tuning(
    preference_data: Input[Dataset],
    sft_data: Input[Dataset],  # validated sft_dataset; written only when one was given
    sft_model: Output[Model],
    metrics: Output[Metrics],
    tensorboard_logs: Output[Artifact],
    large_model_reference: str,
    prompt_sequence_length: int,
    target_sequence_length: int,
    seed: int,
    options: dict,
    supervised_tuning: str,
    tensorboard_resource_id: str,
    pipeline_job_name: str,
    instruction: Optional[str] = None,  # None: Google's "not given"
) -> NamedTuple("Outputs", base_model=str):
    """Fine-tune a LoRA adapter on the validated demonstrations (`supervised_tuning` sft_dataset) or
    the preferred candidates of the validated preference pairs (preferred_candidates) and write the
    merged model to `sft_model` (Hugging Face format, tokenizer included); `base_model` is its URI,
    the `large_model_reference` of the later stages. The run (checkpoints) lives beside it
    (`../sft_run`), so a preempted task restarted on the same outputs resumes. Settings default in `SFTConfig`, never here; `options` sets any other field (e.g.
    {"sft_train_steps": 200, "lora_rank": 16})."""
    from collections import namedtuple

    from rlhf import launch, storage
    from rlhf.errors import UserError
    from rlhf.pipeline_settings import SUPERVISED_FINE_TUNING as SFT, SUPERVISED_TUNING
    from rlhf.sft.outputs import export_merged_model, run_dir_beside
    from rlhf.sft.run import train_sft
    from rlhf.vertex_tensorboard import upload_logs

    if supervised_tuning not in SUPERVISED_TUNING[1:]:
        raise UserError(f"supervised_tuning {supervised_tuning!r}: use one of {', '.join(SUPERVISED_TUNING[1:])}")
    on_demonstrations = supervised_tuning == "sft_dataset"
    run_dir = run_dir_beside(sft_model.path)
    config = SFT.build({**SFT.settings_of(locals()), "sft_dataset": sft_data.path if on_demonstrations else "",
                        "preference_dataset": "" if on_demonstrations else preference_data.path,
                        "output_dir": run_dir, "tensorboard_dir": tensorboard_logs.path,
                        "save_merged_model": True}, options)
    summary = launch.run(train_sft, config)  # one process per GPU the task was given
    export_merged_model(run_dir, sft_model.path)
    for name, value in summary.items():
        metrics.log_metric(name, value)
    storage.write_json(metrics.path, summary)  # a file at .path keeps KFP's cache working
    sft_model.metadata["base_model"] = large_model_reference
    upload_logs(tensorboard_logs.path, tensorboard_resource_id, pipeline_job_name, run_name="sft")
    return namedtuple("Outputs", ["base_model"])(sft_model.uri)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def base_model_as_given(large_model_reference: str) -> str:
    """The base model of the later stages when no supervised fine-tuning runs: the other side of
    its condition, which `dsl.OneOf` joins with the SFT model's URI."""
    return large_model_reference
