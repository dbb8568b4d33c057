"""`rlhf plan`: will the model fit the GPUs? Each step's peak memory per device, before anything loads.

Exit status: 0 when every step fits (the plan per step on stdout), 2 when one does not (one message
naming the knobs and what would fit). Defaults are the step configs' own; never loads torch.
"""

from __future__ import annotations

import argparse

HELP = ("predict each step's peak GPU memory per device from the model's config.json (shipped for the "
        "aliases) and say whether it fits the accelerators; no weights are loaded")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from rlhf.memory_plan import ACCELERATOR_GB
    parser.add_argument("--large-model-reference", required=True,
                        help="an alias (llama-2-13b, gemma-7b-it, ...) or a local directory with config.json")
    parser.add_argument("--accelerator-type", required=True, choices=sorted(ACCELERATOR_GB, key=ACCELERATOR_GB.get),
                        metavar="TYPE", help=f"Vertex AI accelerator: {', '.join(sorted(ACCELERATOR_GB, key=ACCELERATOR_GB.get))}")
    parser.add_argument("--accelerator-count", type=int, default=1, help="devices per step (default: 1)")
    parser.add_argument("--steps", nargs="+", choices=["reward", "ppo", "evaluation"],
                        default=["reward", "ppo", "evaluation"], help="steps to plan (default: all)")
    # None: the step config's default (read below, never copied here).
    for name, kind, what in [
            ("--dtype", str, "base weights: auto (bf16), bf16, fp16 or fp32 (default: the configs')"),
            ("--prompt-sequence-length", int, "maximum prompt tokens (default: the configs')"),
            ("--target-sequence-length", int, "maximum response tokens (default: the configs')"),
            ("--reward-model-batch-size", int, "preference pairs per forward pass (default: RewardConfig's)"),
            ("--reward-lora-dim", int, "reward model LoRA rank (default: RewardConfig's)"),
            ("--reinforcement-learning-batch-size", int, "PPO episodes per step (default: PPOConfig's)"),
            ("--mini-batch-size", int, "PPO episodes per optimizer step (default: PPOConfig's)"),
            ("--lora-rank", int, "PPO policy LoRA rank (default: PPOConfig's)"),
            ("--evaluation-batch-size", int, "eval prompts per batch (default: EvalConfig's)")]:
        parser.add_argument(name, type=kind, default=None, help=what)
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                        help="reward model gradient checkpointing as configured (default: RewardConfig's; "
                             "the plan turns it on when needed)")


def _given(**values):
    return {k: v for k, v in values.items() if v is not None}


def run(args: argparse.Namespace) -> int:
    from rlhf import memory_plan as M
    from rlhf.errors import UserError
    from rlhf.evaluate.config import EvalConfig
    from rlhf.ppo.config import PPOConfig
    from rlhf.reward.config import RewardConfig

    if args.accelerator_count < 1:
        raise UserError(f"--accelerator-count {args.accelerator_count}: must be at least 1")
    ref = args.large_model_reference
    config = M.model_config(ref)
    if config is None:
        raise UserError(f"no config.json for {ref!r} here: give an alias ({', '.join(sorted(M.shipped_configs()))}) "
                        f"or a local directory holding the model's config.json")
    shared = _given(prompt_sequence_length=args.prompt_sequence_length,
                    target_sequence_length=args.target_sequence_length, dtype=args.dtype)
    reward = RewardConfig(**shared, **_given(batch_size=args.reward_model_batch_size, reward_lora_dim=args.reward_lora_dim,
                                             gradient_checkpointing=args.gradient_checkpointing))
    ppo_values = _given(batch_size=args.reinforcement_learning_batch_size, mini_batch_size=args.mini_batch_size,
                        lora_rank=args.lora_rank)
    if "batch_size" in ppo_values and "mini_batch_size" not in ppo_values:
        ppo_values["mini_batch_size"] = min(ppo_values["batch_size"], PPOConfig().mini_batch_size)
    ppo = PPOConfig(**shared, **ppo_values)
    evaluation = EvalConfig(**{k: v for k, v in shared.items() if k != "dtype"},
                            **_given(batch_size=args.evaluation_batch_size))
    for cfg in (reward, ppo, evaluation):
        cfg.validate(inputs=False)
    work = M.Workload.from_configs(reward, ppo, evaluation)
    hardware = {step: M.Hardware.vertex(args.accelerator_type, args.accelerator_count) for step in M.STEPS}
    plans, problems = M.plan_steps(ref, config, work, hardware, args.steps)
    where = f"{args.accelerator_count} x {args.accelerator_type}"
    if problems:
        raise UserError("\n".join(message for _, message in problems))
    print(f"{ref} on {where} ({work.dtype}, prompt {work.prompt} + target {work.target} tokens): fits")
    for plan in plans:
        print("  " + plan.line())
    if any(p.strategy == "sharded" for p in plans):
        print("  sharded: the frozen base is split over the devices (FSDP2); the step shards it itself")
    return 0
