"""`train_sft(config)`: the whole SFT step, from demonstrations to a merged model. The CLI
(`rlhf sft`) and the KFP component call this. Shaped like the DPO and PPO steps: data first (a bad
file fails before a model loads), then the LoRA policy on the base (``SharedBaseModel``), the run
directory (``rlhf.rundir``), the loop (``rlhf.sft.trainer``) and the files (``rlhf.ppo.outputs``'
layout plus ``merged_model/``: the base model of every later step). The chores around the loop
are shared with DPO (``rlhf.policy_training.setup``).
"""

from __future__ import annotations

import logging

from rlhf import distributed, storage
from rlhf.errors import UserError
from rlhf.policy_training.setup import load_policy, load_tokenizer, open_run, publish_policy, train_timed
from rlhf.ppo.outputs import OutputLayout
from rlhf.ppo.policy import parameter_count
from rlhf.reward.data import split_heldout
from rlhf.reward.setup import set_seed
from rlhf.sft.batching import encode_examples
from rlhf.sft.config import SFTConfig
from rlhf.sft.data import load_examples
from rlhf.sft.provenance import RECORD_FILE, sft_record
from rlhf.sft.trainer import SFTTrainer

log = logging.getLogger(__name__)


def merged_model_dir(output_dir: str) -> str:
    """Where a finished SFT run's merged model is: the base model of the steps after it."""
    return OutputLayout(output_dir).merged_dir


def encoded_examples(config: SFTConfig, examples: list, tokenizer, use_chat_template: bool) -> tuple[list, list]:
    """(training examples, held-out examples) encoded as every step encodes prompts and responses."""
    encoded, stats = encode_examples(tokenizer, examples, config.prompt_sequence_length,
                                     config.target_sequence_length, use_chat_template, config.instruction)
    if stats.truncated_prompts or stats.truncated_responses:
        log.warning("truncated %d prompts to %d tokens and %d answers to %d tokens", stats.truncated_prompts,
                    config.prompt_sequence_length, stats.truncated_responses, config.target_sequence_length)
    if len(encoded) < 2 and config.heldout_fraction:
        raise UserError(f"{len(encoded)} demonstration(s): too few to hold any out; give more, or "
                        "--heldout-fraction 0")
    train_idx, heldout_idx = split_heldout(len(encoded), config.heldout_fraction, config.max_heldout_examples,
                                           config.seed, groups=[tuple(e.prompt) for e in encoded])
    return [encoded[i] for i in train_idx], [encoded[i] for i in heldout_idx]


def train_sft(config: SFTConfig) -> dict[str, float]:
    """Train (or resume) and write the adapter and the merged model to ``config.output_dir``;
    returns the final metrics (what ``summary.json`` holds)."""
    config.validate()
    set_seed(config.seed)  # the same on every process: the same split, plan and LoRA initialisation
    rank, world, device = distributed.init(config.device or None)
    base_ref = config.large_model_reference
    examples = load_examples(config.sft_dataset, config.preference_dataset, config.instruction)
    tokenizer, use_chat = load_tokenizer(config)
    train_set, heldout = encoded_examples(config, examples, tokenizer, use_chat)
    model = load_policy(config, device)
    trainable, total = parameter_count(model)
    log.info("SFT of %s on %s: %.1fM parameters, %.2fM trainable; %d training examples, %d held out; "
             "%d steps × %d examples; world size %d", base_ref, device, total / 1e6, trainable / 1e6,
             len(train_set), len(heldout), config.sft_train_steps, config.examples_per_step, world)

    run, layout, tb = open_run(config, prefix="rlhf-sft-")
    trainer = SFTTrainer(config, model, train_set, tokenizer.pad_token_id, layout, heldout, tb)
    summary = train_timed(trainer)
    if rank == 0:
        info = {**summary, "base_model": base_ref, "steps": trainer.step, "stage": "sft",
                "merged_model": merged_model_dir(config.output_dir) if config.save_merged_model else None}
        # The merged model says what it was fine-tuned from: evaluation compares with both.
        publish_policy(run, layout, model, config, tokenizer, info,
                       merged_records={RECORD_FILE: sft_record(config, trainer.step)})
        log.info("SFT outputs written to %s", storage.join(config.output_dir))
    distributed.shutdown()
    return summary
