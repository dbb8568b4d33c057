"""`train_dpo(config)`: the whole DPO step, from preference pairs to a policy adapter. The CLI
(`rlhf dpo`) and the KFP component call this. Shaped like the PPO step (``rlhf.ppo.run``): data
first (a bad file fails before a model loads), then the policy on one copy of the base
(``SharedBaseModel``: the reference is the adapter disabled), the run directory (``rlhf.rundir``),
the loop (``rlhf.dpo.trainer``) and the files (``rlhf.dpo.outputs``, PPO's layout). The chores
around the loop are shared with SFT (``rlhf.policy_training.setup``).
"""

from __future__ import annotations

import logging

from rlhf import distributed, storage
from rlhf.dpo.config import DPOConfig
from rlhf.dpo.trainer import DPOTrainer
from rlhf.policy_training.setup import load_policy, load_tokenizer, open_run, publish_policy, train_timed
from rlhf.ppo.policy import parameter_count
from rlhf.reward import batching, data
from rlhf.reward.setup import set_seed

log = logging.getLogger(__name__)


def encoded_pairs(config: DPOConfig, tokenizer, use_chat_template: bool) -> tuple[list, list]:
    """(training pairs, held-out pairs) encoded as every step encodes them (``rlhf.encoding``)."""
    pairs, _ = data.load_datasets(config.preference_dataset, "", config.instruction)
    encoded, stats = batching.encode_pairs(
        tokenizer, pairs, prompt_sequence_length=config.prompt_sequence_length,
        target_sequence_length=config.target_sequence_length, use_chat_template=use_chat_template,
        instruction=config.instruction)
    if stats.truncated_prompts or stats.truncated_responses:
        log.warning("truncated %d prompts to %d tokens and %d responses to %d tokens", stats.truncated_prompts,
                    config.prompt_sequence_length, stats.truncated_responses, config.target_sequence_length)
    train_idx, heldout_idx = data.split_heldout(len(encoded), config.heldout_fraction, config.max_heldout_pairs,
                                                config.seed, groups=[tuple(e.prompt) for e in encoded])
    return [encoded[i] for i in train_idx], [encoded[i] for i in heldout_idx]


def train_dpo(config: DPOConfig) -> dict[str, float]:
    """Train (or resume) and write the policy adapter to ``config.output_dir``; returns the final
    metrics (what ``summary.json`` holds)."""
    config.validate()
    set_seed(config.seed)  # the same on every process: the same split, plan and LoRA initialisation
    rank, world, device = distributed.init(config.device or None)
    base_ref = config.large_model_reference
    tokenizer, use_chat = load_tokenizer(config)
    train_set, heldout = encoded_pairs(config, tokenizer, use_chat)
    model = load_policy(config, device)
    trainable, total = parameter_count(model)
    log.info("DPO policy %s on %s: %.1fM parameters, %.2fM trainable; %d training pairs, %d held out; "
             "%d steps × %d pairs; world size %d", base_ref, device, total / 1e6, trainable / 1e6,
             len(train_set), len(heldout), config.reinforcement_learning_train_steps, config.pairs_per_step, world)

    run, layout, tb = open_run(config, prefix="rlhf-dpo-")
    trainer = DPOTrainer(config, model, train_set, tokenizer.pad_token_id, layout, heldout, tokenizer, tb)
    summary = train_timed(trainer)
    if rank == 0:
        publish_policy(run, layout, model, config, tokenizer,
                       {**summary, "base_model": base_ref, "steps": trainer.step, "tuning_method": "dpo"})
        log.info("policy adapter written to %s", storage.join(config.output_dir, "policy_adapter"))
    distributed.shutdown()
    return summary
