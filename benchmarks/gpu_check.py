"""A prepared GPU check: the reward step, PPO and the evaluation on a 0.5-1.5B architecture, with
the correctness checks asserted and the throughput and memory numbers printed.

No network: the model is random weights built from a shipped config (`rlhf/model_configs.json`),
saved as a Hugging Face directory in a temp dir; the tokenizer is SmolLM2's when it is already
cached (`rlhf prepare-model`), else a byte-level tokenizer built here. The steps are the library's
own entry points, the ones the CLI calls, through the same launcher (`rlhf.launch.run`, so
`--devices N` runs N processes): `train_reward_model`, `tune`, `evaluate`, on the sample data
shipped in `rlhf/sample_data/`. Probes (wrappers around trainer functions, as
`tests/test_precision.py` observes the PPO step) record what each step did.

Checks (any failure: exit 1 with a summary):
- reward: bf16 training runs and every step's loss is finite;
- PPO: the first minibatch's probability ratio is 1 within 1e-6 and the old values are the
  training pass's (the inputs of `policy_loss` / `value_loss`, as tests/test_precision.py);
- PPO: the fused log-prob head gives the model's own logits' log-softmax (as tests/test_logprobs.py),
  in scoring (the training pass) and in sampling (the KV-cached decoding loop);
- evaluation: runs to its report, with a finite KL.

Printed (CUDA only, "n/a" elsewhere): rollout decode tokens/s against the memory-bandwidth
roofline, reward and PPO-update MFU, and the memory plan's peak against the measured one.

    python benchmarks/gpu_check.py                              # one GPU, qwen2.5-0.5b-instruct, bf16
    python benchmarks/gpu_check.py --model qwen2.5-1.5b-instruct --devices 2
    python benchmarks/gpu_check.py --device cpu --tiny          # seconds; what tests/test_gpu_check.py runs
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# -- device figures -----------------------------------------------------------------------------------
# (substring of torch.cuda.get_device_name(), memory bandwidth TB/s, dense bf16 TFLOPS), first match
# wins. From NVIDIA's product datasheets (bf16 tensor-core figures without sparsity, i.e. half the
# "with sparsity" number printed there): H100 SXM5 80GB 3.35 TB/s, 989 TFLOPS; H100 PCIe 2.0 TB/s,
# 756; H200 SXM 141GB 4.8 TB/s, 989; A100 80GB SXM 2.0 TB/s (2,039 GB/s), 312; A100 40GB 1.55 TB/s
# (1,555 GB/s), 312; L4 0.3 TB/s, 121.
DEVICES = [
    ("H200", 4.8, 989, "NVIDIA H200 datasheet (SXM)"),
    ("H100 PCIe", 2.0, 756, "NVIDIA H100 datasheet (PCIe)"),
    ("H100", 3.35, 989, "NVIDIA H100 datasheet (SXM5)"),
    ("A100-SXM4-80GB", 2.0, 312, "NVIDIA A100 datasheet (80GB SXM)"),
    ("A100 80GB", 2.0, 312, "NVIDIA A100 datasheet (80GB)"),
    ("A100", 1.55, 312, "NVIDIA A100 datasheet (40GB)"),
    ("L4", 0.3, 121, "NVIDIA L4 datasheet"),
]

RATIO_TOL = 1e-6  # |ratio - 1| and |new value - old value| on the first minibatch

TINY_CONFIG = dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)

SAMPLE_DATA = Path(__file__).resolve().parent.parent / "rlhf" / "sample_data"


def device_figures(name: str):
    """(bandwidth bytes/s, peak FLOP/s, source) for a CUDA device name, or (None, None, reason)."""
    for key, tbps, tflops, source in DEVICES:
        if key in name:
            return tbps * 1e12, tflops * 1e12, source
    return None, None, f"no figures for {name!r} in DEVICES"


# -- settings -----------------------------------------------------------------------------------------

def sizes(args) -> dict:
    """Lengths, batches and steps: small in --tiny (seconds on CPU), GPU-sized otherwise."""
    if args.tiny:
        return dict(prompt=32, target=8, reward_steps=2, reward_batch=4, ppo_steps=2, ppo_batch=4,
                    ppo_mini=4, ppo_accum=2, ppo_epochs=2, eval_examples=4, eval_batch=4, norm_pairs=8)
    return dict(prompt=256, target=64, reward_steps=args.reward_steps, reward_batch=16, ppo_steps=args.ppo_steps,
                ppo_batch=64, ppo_mini=16, ppo_accum=2, ppo_epochs=2, eval_examples=32, eval_batch=16,
                norm_pairs=64)


def configs(args, model_dir: str, work: Path):
    from rlhf.evaluate.config import EvalConfig
    from rlhf.ppo.config import PPOConfig
    from rlhf.reward.config import RewardConfig
    s = sizes(args)
    common = dict(device=args.device, devices=args.devices, dtype=args.dtype,
                  prompt_sequence_length=s["prompt"], target_sequence_length=s["target"])
    reward = RewardConfig(
        preference_dataset=str(SAMPLE_DATA / "preference.jsonl"), output_dir=str(work / "reward"),
        large_model_reference=model_dir, reward_model_train_steps=s["reward_steps"], batch_size=s["reward_batch"],
        gradient_accumulation_steps=1, eval_every=s["reward_steps"], log_every=1, checkpoint_every=0,
        normalization_pairs=s["norm_pairs"], max_heldout_pairs=s["norm_pairs"], **common)
    ppo = PPOConfig(
        prompt_dataset=str(SAMPLE_DATA / "prompts.jsonl"), reward_model=str(work / "reward"),
        output_dir=str(work / "ppo"), reinforcement_learning_train_steps=s["ppo_steps"], batch_size=s["ppo_batch"],
        mini_batch_size=s["ppo_mini"], gradient_accumulation_steps=s["ppo_accum"], ppo_epochs=s["ppo_epochs"],
        checkpoint_every=0, sample_count=0, log_every=1, **common)
    evaluation = EvalConfig(
        eval_dataset=str(SAMPLE_DATA / "eval.jsonl"), model=str(work / "ppo" / "policy_adapter"),
        large_model_reference=model_dir, reward_model=str(work / "reward"), output_dir=str(work / "eval"),
        max_examples=s["eval_examples"], batch_size=s["eval_batch"], **common)
    return reward, ppo, evaluation


# -- the model directory: random weights, no network ---------------------------------------------------

def byte_tokenizer():
    """A byte-level tokenizer (256 bytes + EOS), built here: works with no cache and no network."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def load_tokenizer(kind: str):
    from rlhf import models
    cached = (models.cache_dir() / "models" / models.DEFAULT_MODEL / "config.json").exists()
    if kind == "smollm2" or (kind == "auto" and cached):
        return models.load_tokenizer(models.DEFAULT_MODEL), "SmolLM2-135M-Instruct's (cached)"
    return byte_tokenizer(), "byte-level, built here (SmolLM2's is not cached)"


def build_model_dir(args, target: Path):
    """Random weights of `args.model`'s shipped architecture (or the tiny one) with the tokenizer,
    saved as safetensors: what `--large-model-reference DIR` loads."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from rlhf import memory_plan
    tokenizer, tokenizer_source = load_tokenizer(args.tokenizer)
    if args.tiny:
        shipped = dict(TINY_CONFIG, vocab_size=len(tokenizer))
        name = "tiny qwen2"
    else:
        shipped = memory_plan.model_config(args.model)
        if shipped is None:
            raise SystemExit(f"--model {args.model}: no shipped config in rlhf/model_configs.json")
        name = f"{args.model} architecture"
        if len(tokenizer) > int(shipped["vocab_size"]):
            raise SystemExit(f"the tokenizer ({len(tokenizer)} ids) is larger than {args.model}'s vocabulary")
    essentials = {k: v for k, v in shipped.items() if k not in ("source", "model_type")}
    config = AutoConfig.for_model(shipped["model_type"], **essentials, eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    build_on = args.device if args.device.startswith("cuda") else "cpu"
    with torch.device(build_on):
        lm = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if args.dtype == "bf16" else torch.float32)
    lm.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    params = sum(p.numel() for p in lm.parameters())
    del lm
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return config.to_dict(), params, name, tokenizer_source


# -- probes: run in every process of a step (launched or not); rank 0's come back --------------------

class Patched:
    """Set attributes for the duration of a block, then put the originals back."""

    def __init__(self, *triples):
        self.triples, self.saved = triples, []

    def __enter__(self):
        for obj, name, value in self.triples:
            # A class keeps its staticmethod wrapper, so putting it back leaves a plain function.
            held = vars(obj)[name] if isinstance(obj, type) and name in vars(obj) else getattr(obj, name)
            self.saved.append((obj, name, held))
            setattr(obj, name, value)

    def __exit__(self, *exc):
        for obj, name, value in reversed(self.saved):
            setattr(obj, name, value)


def _cuda(device) -> bool:
    import torch
    return torch.cuda.is_available() and str(device).startswith("cuda")


def _sync(on: bool) -> float:
    import torch
    if on:
        torch.cuda.synchronize()
    return time.perf_counter()


def _reset_peak(on: bool) -> None:
    import gc
    import torch
    if on:
        gc.collect()  # what an earlier step left unreferenced is not this step's
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak(on: bool):
    import torch
    return float(torch.cuda.max_memory_allocated()) if on else None


def _device_name(on: bool) -> str:
    import torch
    return torch.cuda.get_device_name() if on else "cpu"


def reward_stage(config) -> dict:
    """`train_reward_model(config)` with each optimizer step timed and its peak memory and tokens kept."""
    import torch
    from rlhf import distributed
    from rlhf.reward import trainer as RT
    from rlhf.reward.train import train_reward_model
    on = _cuda(distributed.init(config.device or None)[2])
    steps, tokens, dtypes = [], [], set()
    original_step, original_pairs = RT.train_step, RT.pair_rewards

    def pair_rewards(model, batch):
        if model.training:  # a training micro-batch (evaluation and normalization run in eval mode)
            tokens.append(tuple(batch["input_ids"].shape))
            dtypes.add(str(next(p for p in model.parameters() if not p.requires_grad).dtype))
        return original_pairs(model, batch)

    def train_step(*a, **kw):
        tokens.clear()
        _reset_peak(on)
        t0 = _sync(on)
        out = original_step(*a, **kw)
        steps.append({"s": _sync(on) - t0, "peak": _peak(on), "shapes": list(tokens),
                      "loss": out.get("loss/total", float("nan"))})
        return out

    _reset_peak(on)
    t0 = time.perf_counter()
    # The trainer calls its class's step and forward (a classifier trainer swaps both).
    with Patched((RT.RewardTrainer, "TRAIN_STEP", staticmethod(train_step)),
                 (RT.RewardTrainer, "FORWARD", staticmethod(pair_rewards))):
        result = train_reward_model(config)
    return {"steps": steps, "stage_peak": _peak(on), "stage_s": time.perf_counter() - t0, "dtypes": sorted(dtypes),
            "final_loss": result.metrics.get("loss/total"), "device": _device_name(on),
            "world": int(os.environ.get("WORLD_SIZE", "1")), "torch": torch.__version__}


def ppo_stage(config) -> dict:
    """`tune(config)` with the trainer probed: rollouts timed, each PPO step's peak memory and update
    shapes kept, the first minibatch's loss inputs recorded (as tests/test_precision.py), then the
    fused log-prob head checked against the model's own logits (as tests/test_logprobs.py)."""
    import torch
    from rlhf import distributed as D
    from rlhf.ppo import run as R
    from rlhf.ppo import trainer as T
    on = _cuda(D.init(config.device or None)[2])
    first, rollouts, steps, kept = [], [], [], {}
    first_calls = 2 * config.gradient_accumulation_steps  # policy + value loss per micro-batch of the first minibatch

    def recording(loss_fn):
        def wrapper(new, old, *rest):
            if len(first) < first_calls:
                mask = rest[-2] > 0
                diff = (torch.exp(new.detach().float() - old.float()) - 1 if loss_fn.__name__ == "policy_loss"
                        else new.detach().float() - old.float())
                first.append((loss_fn.__name__, float(diff[mask].abs().max()) if mask.any() else float("nan")))
            return loss_fn(new, old, *rest)
        return wrapper

    class ProbedTrainer(T.PPOTrainer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            kept["trainer"] = self

        def rollout(self, indices):
            t0 = _sync(on)
            r = super().rollout(indices)
            rollouts.append({"rows": r.response_ids.shape[0], "prompt": r.prompt_width,
                             "generated": r.response_ids.shape[1], "s": _sync(on) - t0})
            return r

        def ppo_step(self):
            self._shapes = []
            _reset_peak(on)
            metrics = super().ppo_step()
            steps.append({"peak": _peak(on), "shapes": self._shapes, "train_s": metrics["time/training_s"],
                          "gen_s": metrics["time/generation_s"], "step_s": metrics["time/step_s"]})
            return metrics

        def _loss(self, input_ids, attention_mask, r, idx, advantages, returns, prompt_width):
            self._shapes.append((input_ids.shape[0], input_ids.shape[1], prompt_width))
            return super()._loss(input_ids, attention_mask, r, idx, advantages, returns, prompt_width)

    _reset_peak(on)
    t0 = time.perf_counter()
    with Patched((T, "policy_loss", recording(T.policy_loss)), (T, "value_loss", recording(T.value_loss)),
                 (R, "PPOTrainer", ProbedTrainer)):
        summary = R.tune(config)
    stage_s, stage_peak = time.perf_counter() - t0, _peak(on)
    head = fused_head_check(kept["trainer"], config.temperature)
    return {"first_minibatch": first, "rollouts": rollouts, "steps": steps, "stage_peak": stage_peak,
            "stage_s": stage_s, "head": head, "reward_mean": summary.get("reward/mean"),
            "world": int(os.environ.get("WORLD_SIZE", "1"))}


def fused_head_check(trainer, temperature: float) -> dict:
    """The policy's log-probs from the fused head, in sampling (KV-cached loop) and scoring (the
    training pass), against log_softmax of the model's own `forward(...).logits` (tests/test_logprobs.py)."""
    import torch
    from rlhf.ppo.rollout import generate
    model = trainer.model
    n = min(4, len(trainer.prompt_ids))
    ids, mask = trainer._encode_batch(list(range(n)))
    torch.manual_seed(2)
    r = generate(model, ids, mask, trainer.cfg.target_sequence_length, trainer.eos_id, trainer.pad_id, temperature)
    m = r.response_mask
    pos = (r.attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model.causal_lm(input_ids=r.input_ids, attention_mask=r.attention_mask, position_ids=pos).logits
        z = logits[:, r.prompt_width - 1:-1].float() / temperature
        own = torch.log_softmax(z, -1).gather(-1, r.input_ids[:, r.prompt_width:, None]).squeeze(-1) * m
        scored, _, _ = model.response_pass(r.input_ids, r.attention_mask, r.prompt_width, temperature)
    dtype = model.lm_head.weight.dtype
    # one rounding of the largest logit in the model's dtype (the head's matmul and the model's may
    # round differently), ×2 for the log-softmax's normalizer, / temperature
    logit_tol = torch.finfo(dtype).eps * max(1.0, float(logits.abs().max()))
    fp32 = dtype == torch.float32
    return {"fused": model.head is not None, "dtype": str(dtype),
            "scoring": float(((scored * m) - own).abs().max()), "sampling": float((r.logprobs - own).abs().max()),
            # fp32: tests/test_logprobs.py's tolerances; bf16: one rounding of the logits for scoring,
            # and for the KV-cached loop the 3e-3 rlhf/ppo/rollout.py documents, doubled
            "scoring_tol": 1e-5 if fp32 else 2 * logit_tol / temperature,
            "sampling_tol": 1e-4 if fp32 else max(6e-3, 2 * logit_tol / temperature)}


def eval_stage(config) -> dict:
    from rlhf import distributed
    from rlhf.evaluate.run import evaluate
    on = _cuda(distributed.init(config.device or None)[2])
    _reset_peak(on)
    t0 = time.perf_counter()
    result = evaluate(config)
    out = {"stage_peak": _peak(on), "stage_s": time.perf_counter() - t0}
    if result is not None:
        out.update(metrics={k: v for k, v in result.metrics.items() if isinstance(v, (int, float))},
                   report=os.path.exists(result.outputs.report_html))
    return out


# -- arithmetic: FLOPs, bytes, plans --------------------------------------------------------------------

def train_flops(arch, rows: int, width: int, head_positions: int, head_params: int, lora: int) -> float:
    """Model FLOPs of a forward + backward pass of a LoRA model on a frozen base: 4 per frozen weight
    per token (forward 2, backward through the activations 2: no weight gradients), 6 per LoRA
    weight, the head only where it is applied, and causal attention (QKᵀ and AV: 2·q_dim·ctx/2 MACs
    per token per layer forward, ×3 with its backward)."""
    linear = arch.layers * sum(a * b for a, b in arch.linear_shapes().values())
    tokens = rows * width
    attention = 3 * 2 * arch.layers * arch.q_dim * width * tokens  # Σ over tokens of 4·q_dim·(ctx/2), ×3
    return tokens * (4 * linear + 6 * lora) + head_positions * 4 * head_params + attention


def roofline(arch, weight_bytes: float, b: int, rows: int, prompt: int, generated: int, bandwidth: float) -> float:
    """Decode tokens/s if every decoding step only read the weights once and the batch's KV cache
    (the memory-bandwidth bound; compute and the prefill ignored)."""
    kv_per_position = rows * arch.layers * 2 * arch.kv_dim * b
    total = generated * weight_bytes + kv_per_position * (generated * prompt + generated * (generated - 1) / 2)
    return rows * generated * bandwidth / total


def plan_peak(step: str, arch, config, world: int, device_bytes: float) -> tuple[float, dict]:
    """The memory plan's peak per device without its runtime term (CUDA context and workspaces,
    which `max_memory_allocated` does not see), as the trainers ask for it."""
    from rlhf import memory_plan as M
    work = M.Workload.from_configs(**{"reward": {"reward": config}, "ppo": {"ppo": config},
                                      "evaluation": {"evaluation": config}}[step])
    plan = M.plan_step(step, arch, work, world, device_bytes)
    return plan.peak - sum(t.bytes for t in plan.terms if t.name == "runtime"), plan.settings


# -- the report ---------------------------------------------------------------------------------------

def tflop(x: float) -> str:
    return f"{x / 1e12:.2f} TFLOP" if x >= 1e11 else f"{x / 1e9:.3f} GFLOP"


def gb(x) -> str:
    return "n/a" if x is None else f"{x / 1e9:.2f} GB" if x >= 1e8 else f"{x / 1e6:.1f} MB"


def table(rows, header) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="", help="cuda (default when present), cuda:N or cpu")
    parser.add_argument("--devices", type=int, default=None, help="processes per step (rlhf.launch); default 1")
    parser.add_argument("--tiny", action="store_true", help="a tiny model and short steps (seconds on CPU)")
    parser.add_argument("--model", default="qwen2.5-0.5b-instruct", help="shipped architecture (rlhf/model_configs.json)")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--tokenizer", default="auto", choices=["auto", "smollm2", "bytes"],
                        help="auto: SmolLM2's when cached, else a byte-level one built here")
    parser.add_argument("--reward-steps", type=int, default=8)
    parser.add_argument("--ppo-steps", type=int, default=4)
    parser.add_argument("--keep", default="", help="write everything under this directory and keep it")
    parser.add_argument("--verbose", action="store_true", help="the steps' own INFO logs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    import torch
    from rlhf import launch
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.devices = args.devices or 1
    on_cuda = args.device.startswith("cuda")
    if on_cuda and not torch.cuda.is_available():
        print("--device cuda: CUDA is not available here (use --device cpu --tiny)", file=sys.stderr)
        return 2
    if on_cuda and ":" in args.device:
        torch.cuda.set_device(torch.device(args.device))
    start = time.perf_counter()
    work = Path(args.keep or tempfile.mkdtemp(prefix="rlhf-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        config_dict, params, model_name, tokenizer_source = build_model_dir(args, work / "model")
        reward_cfg, ppo_cfg, eval_cfg = configs(args, str(work / "model"), work)
        device_name = torch.cuda.get_device_name() if on_cuda else "cpu"
        bandwidth, peak_flops, figures_source = device_figures(device_name) if on_cuda else (None, None, "CUDA only")
        print(f"gpu_check: {model_name} ({params / 1e6:.1f}M parameters, random weights), {args.dtype}, "
              f"{args.devices} x {device_name}; tokenizer {tokenizer_source}; torch {torch.__version__}; "
              f"work dir {work}", flush=True)
        results, errors = {}, {}
        for name, stage, cfg in (("reward", reward_stage, reward_cfg), ("ppo", ppo_stage, ppo_cfg),
                                 ("evaluation", eval_stage, eval_cfg)):
            t0 = time.perf_counter()
            try:
                results[name] = launch.run(stage, cfg)
            except Exception as e:  # a crash is a failed check, reported with the others
                errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                logging.getLogger("gpu_check").exception("%s step failed", name)
                if name != "evaluation":
                    break  # the next step needs this one's output
            print(f"  {name} step: {time.perf_counter() - t0:.1f} s", flush=True)
        return report(args, results, errors, config_dict, (reward_cfg, ppo_cfg, eval_cfg), device_name,
                      bandwidth, peak_flops, figures_source, on_cuda, time.perf_counter() - start)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def report(args, results, errors, config_dict, cfgs, device_name, bandwidth, peak_flops, figures_source,
           on_cuda, elapsed) -> int:
    import torch
    from rlhf import memory_plan as M
    reward_cfg, ppo_cfg, eval_cfg = cfgs
    arch = M.Architecture.from_config(config_dict)
    b = 2 if args.dtype == "bf16" else 4
    checks = []  # (name, passed, detail)

    def check(name, ok, detail):
        checks.append((name, "PASS" if ok else "FAIL", detail))

    rw, pp, ev = results.get("reward"), results.get("ppo"), results.get("evaluation")
    if rw:
        losses = [s["loss"] for s in rw["steps"]] + [rw["final_loss"]]
        want = "torch.bfloat16" if args.dtype == "bf16" else "torch.float32"
        ok = (len(rw["steps"]) == reward_cfg.reward_model_train_steps and all(math.isfinite(x) for x in losses)
              and rw["dtypes"] == [want])
        check("reward: trains in " + args.dtype + ", finite loss", ok,
              f"{len(rw['steps'])} steps on world size {rw['world']}, base {','.join(rw['dtypes'])}, loss "
              + " ".join(f"{x:.4f}" for x in losses[:-1]))
    else:
        check("reward: trains in " + args.dtype + ", finite loss", False, errors.get("reward", "did not run"))
    if pp:
        ratios = [d for n, d in pp["first_minibatch"] if n == "policy_loss"]
        values = [d for n, d in pp["first_minibatch"] if n == "value_loss"]
        check("ppo: first-minibatch ratio = 1", bool(ratios) and max(ratios) <= RATIO_TOL,
              f"max |ratio - 1| = {max(ratios):.2e} over {len(ratios)} micro-batches (tol {RATIO_TOL:g})"
              if ratios else "no minibatch seen")
        check("ppo: old values = training-pass values", bool(values) and max(values) <= RATIO_TOL,
              f"max |value - old| = {max(values):.2e} (tol {RATIO_TOL:g})" if values else "no minibatch seen")
        h = pp["head"]
        check("ppo: fused head = own logits (scoring)", h["fused"] and h["scoring"] <= h["scoring_tol"],
              f"max |Δ log p| = {h['scoring']:.2e} (tol {h['scoring_tol']:.1e}, {h['dtype']})"
              + ("" if h["fused"] else "; the fused head is OFF (fallback)"))
        check("ppo: fused head = own logits (sampling)", h["fused"] and h["sampling"] <= h["sampling_tol"],
              f"max |Δ log p| = {h['sampling']:.2e} (tol {h['sampling_tol']:.1e}, KV-cached loop)")
    else:
        for name in ("ppo: first-minibatch ratio = 1", "ppo: old values = training-pass values",
                     "ppo: fused head = own logits (scoring)", "ppo: fused head = own logits (sampling)"):
            check(name, False, errors.get("ppo", "did not run (the reward step failed)"))
    if ev and "metrics" in ev:
        kl = [v for k, v in ev["metrics"].items() if "kl" in k.lower()]
        check("evaluation: report written, KL finite", ev["report"] and bool(kl) and all(math.isfinite(v) for v in kl),
              f"{len(ev['metrics'])} metrics, " + (f"KL {kl[0]:.4f}" if kl else "no KL metric"))
    else:
        check("evaluation: report written, KL finite", False, errors.get("evaluation", "did not run"))

    # -- measurements: computed everywhere (so this code runs on CPU too), shown on CUDA only --
    if not on_cuda:  # stand-in figures: the arithmetic runs, its numbers are not shown
        bandwidth, peak_flops = DEVICES[2][1] * 1e12, DEVICES[2][2] * 1e12
    shown = on_cuda and figures_source in {d[3] for d in DEVICES}
    na = "n/a"
    show = lambda text: text if shown else na
    rows = []
    weight_bytes = arch.parameters("lm") * b + arch.lora_parameters(ppo_cfg.lora_rank, ppo_cfg.lora_target_modules) * 4
    if pp and pp["rollouts"]:
        rolls = pp["rollouts"][1:] or pp["rollouts"]  # the first includes warm-up
        tokens = sum(r["rows"] * r["generated"] for r in rolls)
        measured = tokens / sum(r["s"] for r in rolls)
        roof = tokens / sum(r["rows"] * r["generated"] / roofline(arch, weight_bytes, b, r["rows"], r["prompt"],
                                                                  r["generated"], bandwidth) for r in rolls)
        rows.append(("decode tokens/s (PPO rollouts, per device)", f"{measured:,.0f}" if on_cuda else na,
                     show(f"roofline {roof:,.0f} ({measured / roof:.1%})"),
                     f"{f'{bandwidth / 1e12:g} TB/s, ' if shown else ''}{figures_source}; {weight_bytes / 1e9:.3f} GB weights "
                     f"+ KV cache read per decoding step, {rolls[0]['rows']} rows x {rolls[0]['prompt']}+"
                     f"{rolls[0]['generated']} tokens, prefill included in the time"))
    peak_text = show(f"{peak_flops / 1e12:g} TFLOPS bf16 dense")
    if rw and rw["steps"]:
        steps = rw["steps"][1:] or rw["steps"]
        lora = arch.lora_parameters(reward_cfg.reward_lora_dim, reward_cfg.lora_target_modules)
        flops = sum(train_flops(arch, r, w, r, arch.hidden, lora) for s in steps for r, w in s["shapes"])
        mfu = flops / sum(s["s"] for s in steps) / peak_flops
        rows.append(("reward training MFU", show(f"{mfu:.1%}"), peak_text,
                     f"{tflop(flops / len(steps))} per optimizer step (4N frozen + 6N LoRA + attention); "
                     + figures_source))
    if pp and pp["steps"]:
        steps = pp["steps"][1:] or pp["steps"]
        lora = arch.lora_parameters(ppo_cfg.lora_rank, ppo_cfg.lora_target_modules)
        flops = sum(train_flops(arch, r, w, r * (w - p), arch.vocab * arch.hidden, lora)
                    for s in steps for r, w, p in s["shapes"])
        mfu = flops / sum(s["train_s"] for s in steps) / peak_flops
        rows.append(("PPO update MFU", show(f"{mfu:.1%}"), peak_text,
                     f"{tflop(flops / len(steps))} per PPO step's update phase (time/training_s; lm head on "
                     f"response tokens only)"))
    world = args.devices
    device_bytes = (torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory if on_cuda
                    else M.ACCELERATOR_GB["NVIDIA_H100_80GB"] * M.GB)
    for step, res, cfg in (("reward", rw, reward_cfg), ("ppo", pp, ppo_cfg), ("evaluation", ev, eval_cfg)):
        if res is None:
            continue
        predicted, settings = plan_peak(step, arch, cfg, world, device_bytes)
        per_step = [s["peak"] for s in res.get("steps", []) if s.get("peak") is not None]
        measured = max(per_step) if per_step else res.get("stage_peak")
        note = "max_memory_allocated: CUDA only"
        if measured is not None:
            note = f"measured/plan {measured / predicted:.2f}" + (" UNDER-PREDICTED" if measured > predicted else "")
        extra = "".join(f", plan sets {k}={v}" for k, v in settings.items())
        what = {"reward": "reward (max over optimizer steps)", "ppo": "ppo (max over PPO steps)",
                "evaluation": "evaluation (whole step)"}[step]
        rows.append((f"peak memory, {what}", gb(measured), f"plan {gb(predicted)}",
                     note + "; plan without its 1.5 GB runtime term" + extra))

    print()
    print(table(checks, ("check", "result", "detail")))
    print()
    print(table(rows, ("measurement", "measured", "against", "how / source")))
    failed = [c for c in checks if c[1] != "PASS"]
    print()
    if failed:
        print(f"gpu_check FAILED: {len(failed)} of {len(checks)} checks: " + "; ".join(f"{c[0]} ({c[2]})" for c in failed))
    else:
        print(f"gpu_check passed: {len(checks)} of {len(checks)} checks, {elapsed:.0f} s on {world} x {device_name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
