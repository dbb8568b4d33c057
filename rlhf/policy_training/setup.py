"""What a LoRA-policy step (DPO, SFT) does around its loop, the same for each: the tokenizer and
whether prompts take its chat template, the policy on one copy of the base, the run directory
(``rlhf.rundir``, PPO's layout), the timed loop itself, and the published outputs."""

from __future__ import annotations

import time
from typing import Optional

from rlhf import distributed, encoding, models
from rlhf.errors import UserError
from rlhf.ppo.outputs import SUMMARY_FILE, OutputLayout, save_merged_model, save_policy_adapter
from rlhf.ppo.policy import SharedBaseModel
from rlhf.rundir import RunDir


def load_tokenizer(config) -> tuple[object, bool]:
    """(the base's tokenizer, left-padding; whether prompts take its chat template)."""
    base_ref = config.large_model_reference
    tokenizer = models.load_tokenizer(base_ref, padding_side="left")
    use_chat = (encoding.has_chat_template(tokenizer) if config.use_chat_template is None
                else config.use_chat_template)
    if use_chat and not encoding.has_chat_template(tokenizer):
        raise UserError(f"use_chat_template is set but the tokenizer of {base_ref} has no chat template")
    return tokenizer, use_chat


def load_policy(config, device) -> SharedBaseModel:
    """The base with a fresh LoRA policy adapter (the reference is the adapter disabled)."""
    dtype = models.parse_dtype(config.dtype) or models.default_dtype(device)
    return SharedBaseModel(models.load_causal_lm(config.large_model_reference, dtype=dtype, device=device),
                           config.lora_rank, config.lora_alpha, config.lora_dropout, config.target_modules)


def open_run(config, prefix: str) -> tuple[RunDir, OutputLayout, Optional[str]]:
    """(the run directory, staged locally when on gs://; its layout; the staged TensorBoard
    directory when one is set apart from the run)."""
    run = RunDir(config.output_dir, prefix=prefix)
    layout = OutputLayout(run.local, checkpoints=run.checkpoints_dir)
    return run, layout, run.stage(config.tensorboard_dir) if config.tensorboard_dir else None


def train_timed(trainer) -> dict[str, float]:
    """Resume ``trainer`` (a ``PolicyTrainer``) and run its remaining steps; the summary gains
    ``time/total_s``. Every process returns once all have finished."""
    trainer.resume()
    start = time.perf_counter()
    summary = trainer.train()
    summary["time/total_s"] = time.perf_counter() - start
    distributed.barrier()
    return summary


def publish_policy(run: RunDir, layout: OutputLayout, model: SharedBaseModel, config, tokenizer, info: dict,
                   merged_records: Optional[dict[str, dict]] = None) -> None:
    """Write the policy adapter, and the merged model (with ``merged_records``, file name -> JSON) when
    ``config.save_merged_model``, then ``summary.json`` = ``info`` last (``RunDir.publish``: a
    directory that has it is complete)."""
    with run.publish(SUMMARY_FILE, info):
        save_policy_adapter(model, layout.adapter_dir, config, config.large_model_reference, tokenizer)
        if config.save_merged_model:
            save_merged_model(model, layout.merged_dir, tokenizer, merged_records)  # consumes the model: last
