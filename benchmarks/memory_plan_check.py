"""Check `rlhf.memory_plan` against measured peak memory on CPU.

For each model (random weights built from the shipped config.json essentials: no download), a child
process builds the model, runs one real reward-model training step (forward, backward, AdamW) or one
PPO rollout + reference pass + update micro-batch (`SharedBaseModel`, `rollout.generate`, fused
log-probs), and reports the rise of its peak resident memory (VmHWM, reset after the imports) over the
resident size then. The plan is asked the same question with the same settings (fp32, without the CUDA
runtime term, which a CPU process does not have).

    python benchmarks/memory_plan_check.py [--models smollm2-135m smollm2-360m-instruct qwen2.5-0.5b-instruct]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

# Small settings, so a step takes seconds on one core, with activations still a large share.
PROMPT, TARGET = 96, 32
REWARD = dict(batch_size=2, share_prompt=False, dtype="fp32")
PPO = dict(batch_size=4, mini_batch_size=2, gradient_accumulation_steps=1, dtype="fp32")


def workload():
    from rlhf.memory_plan import Workload
    from rlhf.ppo.config import PPOConfig
    from rlhf.reward.config import RewardConfig
    return Workload.from_configs(RewardConfig(prompt_sequence_length=PROMPT, target_sequence_length=TARGET, **REWARD),
                                 PPOConfig(prompt_sequence_length=PROMPT, target_sequence_length=TARGET, **PPO),
                                 dtype="fp32", prompt=PROMPT, target=TARGET)


def predicted(alias: str, step: str) -> float:
    from rlhf import memory_plan as M
    arch = M.Architecture.from_config(M.model_config(alias))
    terms = (M.reward_terms(arch, workload(), "replicated", 1, False) if step == "reward"
             else M.ppo_terms(arch, workload(), "replicated", 1, 1))
    rows = 2 * REWARD["batch_size"] if step == "reward" else PPO["mini_batch_size"]
    # On CPU, SDPA with a padding mask takes the math path, which keeps each layer's fp32 attention
    # scores and probabilities for backward; CUDA's memory-efficient kernel keeps neither (so the plan,
    # made for GPUs, has no such term).
    cpu_scores = arch.layers * rows * arch.heads * (PROMPT + TARGET) ** 2 * 4 * 2
    return sum(t.bytes for t in terms if t.name != "runtime") + cpu_scores


def _status(field: str) -> float:
    """A memory figure of this process from /proc/self/status, in bytes (Linux)."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return float(line.split()[1]) * 1024


def _reset_peak() -> float:
    """Reset the peak resident size to the current one (Linux: clear_refs "5"), so transient peaks of
    the imports do not hide the step's; returns the resident size now."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status("VmRSS")


def _rss() -> float:
    return _status("VmHWM")  # the peak resident size since the last reset


def child(alias: str, step: str) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification
    from rlhf import memory_plan as M
    torch.set_num_threads(1)
    torch.manual_seed(0)
    essentials = {k: v for k, v in M.model_config(alias).items() if k not in ("source", "model_type")}
    config = AutoConfig.for_model(M.model_config(alias)["model_type"], **essentials, num_labels=1, pad_token_id=0)
    vocab = config.vocab_size
    base = _reset_peak()
    if step == "reward":
        from peft import LoraConfig, get_peft_model
        from rlhf.reward.config import RewardConfig
        from rlhf.reward.modeling import pair_rewards
        cfg = RewardConfig()
        model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
        model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=cfg.reward_lora_dim, lora_alpha=cfg.lora_alpha,
                                                 lora_dropout=cfg.lora_dropout, modules_to_save=["score"]))
        model.train()
        built = _rss() - base
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        rows = 2 * REWARD["batch_size"]
        ids = torch.randint(1, vocab, (rows, PROMPT + TARGET))
        chosen, rejected = pair_rewards(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
        loss = -torch.nn.functional.logsigmoid(chosen - rejected).mean()
        loss.backward()
        optimizer.step()
    else:
        from rlhf.ppo.config import PPOConfig
        from rlhf.ppo.policy import SharedBaseModel
        from rlhf.ppo.rollout import generate
        cfg = PPOConfig()
        lm = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model = SharedBaseModel(lm, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.target_modules, "head")
        built = _rss() - base
        optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-5)
        prompts = torch.randint(1, vocab, (PPO["batch_size"], PROMPT))
        r = generate(model, prompts, torch.ones_like(prompts), TARGET, eos_token_id=-1, pad_token_id=0)
        model.reference_logprobs(r.input_ids, r.attention_mask, r.prompt_width, 1.0)
        idx = torch.arange(PPO["mini_batch_size"])
        logprobs, _, values = model.response_pass(r.input_ids[idx], r.attention_mask[idx], r.prompt_width, 1.0)
        loss = -(logprobs * torch.randn_like(logprobs)).mean() + values.pow(2).mean()
        loss.backward()
        optimizer.step()
    print(json.dumps({"measured": _rss() - base, "weights": built}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "smollm2-360m-instruct", "qwen2.5-0.5b-instruct"])
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    print(f"fp32 on CPU; reward: {REWARD['batch_size']} pairs as {2 * REWARD['batch_size']} rows of {PROMPT}+{TARGET} "
          f"tokens; PPO: {PPO['batch_size']} prompts of {PROMPT} tokens, {TARGET} generated, update micro-batch "
          f"{PPO['mini_batch_size']}\n")
    print("| model | step | predicted MB | measured MB | error |")
    print("|---|---|---|---|---|")
    for alias in args.models:
        for step in ("reward", "ppo"):
            out = subprocess.run([sys.executable, __file__, "--child", alias, step], capture_output=True, text=True)
            if out.returncode:
                print(out.stderr[-2000:], file=sys.stderr)
                continue
            measured = json.loads(out.stdout.strip().splitlines()[-1])["measured"]
            guess = predicted(alias, step)
            print(f"| {alias} | {step} | {guess / 1e6:.0f} | {measured / 1e6:.0f} | {(guess - measured) / measured:+.0%} |",
                  flush=True)


if __name__ == "__main__":
    main()
