"""PPO throughput and memory: ours (`rlhf.ppo`) against TRL 1.12.0's `trl.experimental.ppo.PPOTrainer`
(the last TRL release with PPO), on the same policy, reward model, prompts, rollout batch, response
length, LoRA config, PPO epochs and steps.

    python benchmarks/ppo_vs_trl.py --quick            # SmolLM2-135M-Instruct on CPU, < 15 min on 2 cores
    python benchmarks/ppo_vs_trl.py                    # longer CPU run
    python benchmarks/ppo_vs_trl.py --device cuda --model-config qwen2.5-0.5b   # random weights, GPU,
                                                       # prints tokens/s against the memory roofline
    python benchmarks/ppo_vs_trl.py --value-model-study  # ours only: value head vs value adapter

Each side runs in its own subprocess (peak RSS is per process; on CUDA, peak allocated memory too).
TRL runs in a separate virtualenv (default /tmp/trl-venv), created here when missing with
`pip install torch==<ours> trl==1.12.0 peft` (TRL 1.12 pins differ from ours). The reward model is
`--reward-model DIR` (a `rlhf train-reward` output) or, by default, a freshly initialised score head
on the base model (random but identical for both sides: throughput does not depend on its quality).
Both sides sample with temperature 0.7, stop at EOS, use LoRA on the same modules; TRL trains its
value model as a full copy (its design), ours a value head on the policy trunk.

Throughput counts the PPO steps after the first (warm-up excluded for both): episodes/s =
episodes / time, generated tokens/s = response tokens up to and including EOS / time. Each side
also reports CPU seconds per step: on a machine shared with other jobs the wall-clock `speedup`
moves with their load, `speedup_cpu_time` much less (use `--threads 1` there: OpenMP threads of
a busy 2-core box otherwise wait on each other). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRL_VERSION = "1.12.0"
HERE = Path(__file__).resolve()

# Random-weight architectures for GPU runs (0.5B-1.5B), with the SmolLM2 tokenizer's vocabulary.
MODEL_CONFIGS = {
    "qwen2.5-0.5b": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True),
    "llama-1b": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True),
}
# HBM bandwidth (bytes/s) of common GPUs, for the decode roofline.
GPU_BANDWIDTH = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12, "L4": 0.3e12, "A10": 0.6e12,
                 "T4": 0.32e12, "V100": 0.9e12, "L40": 0.864e12}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def response_tokens(responses, eos_id: int) -> int:
    """Tokens up to and including the first EOS of each row (all of a row without EOS)."""
    import torch
    has_eos = (responses == eos_id).any(1)
    first = (responses == eos_id).int().argmax(1) + 1
    return int(torch.where(has_eos, first, torch.full_like(first, responses.shape[1])).sum())


# ------------------------------------------------------------------------------------------------
# Setup (parent, our venv)


def prepare(args, work: Path) -> dict:
    """Base model, reward model and prompts shared by both sides; returns the worker spec."""
    from rlhf import encoding, models, samples
    from rlhf.data.canonical import Prompt, prompt_messages, write_jsonl
    if args.model_config:
        base = build_random_model(args.model_config, work / "base")
    else:
        base = models.resolve_model(args.model)
    tokenizer = models.load_tokenizer(base)
    reward_dir = args.reward_model or build_fresh_reward_model(base, tokenizer, work / "reward", args.seed)
    rows = []
    with open(samples.prompt_dataset()) as f:
        for line in f:
            rows.append(Prompt(messages=[{"role": "user", "content": json.loads(line)["input_text"]}],
                               instruction=samples.INSTRUCTION))
    write_jsonl(str(work / "prompts.jsonl"), rows)
    prompt_ids = [encoding.encode_prompt(tokenizer, prompt_messages(r), True, max_length=args.prompt_length)
                  for r in rows]
    return {
        "base": str(base), "reward_model": str(reward_dir), "prompts": str(work / "prompts.jsonl"),
        "prompt_ids": prompt_ids, "steps": args.steps, "batch_size": args.batch_size,
        "mini_batch_size": args.mini_batch_size, "ppo_epochs": args.ppo_epochs,
        "response_length": args.response_length, "prompt_length": args.prompt_length,
        "lora_rank": 8, "lora_alpha": 16, "lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "learning_rate_multiplier": 1.0, "kl_coeff": 0.1, "temperature": 0.7, "seed": args.seed,
        "device": args.device, "dtype": "bf16" if args.device == "cuda" else "fp32",
        "eos_token_id": tokenizer.eos_token_id, "work": str(work),
    }


def build_random_model(name: str, out: Path) -> str:
    """A random-weight model of a known architecture (for GPU runs: speed does not need trained weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from rlhf import models
    if name not in MODEL_CONFIGS:
        raise SystemExit(f"--model-config {name}: choose one of {', '.join(MODEL_CONFIGS)}")
    if (out / "config.json").exists():
        return str(out)
    tokenizer = models.load_tokenizer()
    spec = dict(MODEL_CONFIGS[name])
    config = AutoConfig.for_model(spec.pop("model_type"), vocab_size=len(tokenizer), **spec,
                                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    log(f"random {name}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters -> {out}")
    return str(out)


def build_fresh_reward_model(base: str, tokenizer, out: Path, seed: int) -> str:
    """A reward model in the reward step's layout: the base with a new (random) score head and a
    zero LoRA update, so it shares the policy's base like a trained one would."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification
    from rlhf.reward import outputs
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8,
                                             target_modules=["q_proj", "v_proj"], modules_to_save=["score"]))
    outputs.save(model, tokenizer, str(out), {
        "base_model": base, "base_model_resolved": base, "use_chat_template": True,
        "prompt_sequence_length": 512, "target_sequence_length": 64, "instruction": "",
        "normalization": {"mean": 0.0, "std": 1.0, "pairs": 0}})
    log(f"fresh reward model (random score head, untrained) -> {out}")
    return str(out)


# ------------------------------------------------------------------------------------------------
# Workers


def ours_worker(spec: dict, value_model: str = "head") -> dict:
    from rlhf.ppo.config import PPOConfig
    from rlhf.ppo.run import tune
    out = Path(spec["work"]) / f"ours-{value_model}-{os.getpid()}"
    config = PPOConfig(
        prompt_dataset=spec["prompts"], reward_model=spec["reward_model"], output_dir=str(out),
        large_model_reference=spec["base"], reinforcement_learning_train_steps=spec["steps"],
        batch_size=spec["batch_size"], mini_batch_size=spec["mini_batch_size"], ppo_epochs=spec["ppo_epochs"],
        target_sequence_length=spec["response_length"], prompt_sequence_length=spec["prompt_length"],
        lora_rank=spec["lora_rank"], lora_alpha=spec["lora_alpha"], lora_target_modules=spec["lora_target_modules"],
        reinforcement_learning_rate_multiplier=spec["learning_rate_multiplier"], kl_coeff=spec["kl_coeff"],
        temperature=spec["temperature"], seed=spec["seed"], device=spec["device"], dtype=spec["dtype"],
        checkpoint_every=0, sample_count=0, value_model=value_model, log_every=1)
    import torch
    if spec["device"] == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tune(config)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    timed = rows[1:] if len(rows) > 1 else rows
    seconds = sum(r["time/step_s"] for r in timed)
    cpu_seconds = sum(r["time/process_cpu_s"] for r in timed)
    tokens = sum(r["response/length"] * spec["batch_size"] for r in timed)
    split = {k: sum(r[k] for r in timed) / len(timed) for k in
             ("time/generation_s", "time/old_policy_s", "time/reference_s", "time/scoring_s", "time/training_s")}
    return {"episodes_per_s": len(timed) * spec["batch_size"] / seconds, "tokens_per_s": tokens / seconds,
            "step_s": seconds / len(timed), "cpu_s_per_step": cpu_seconds / len(timed), "split": split,
            "peak_rss_mb": peak_rss_mb(),
            **_cuda_peak(torch, spec)}


def _cuda_peak(torch, spec) -> dict:
    if spec["device"] != "cuda":
        return {}
    return {"peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20, "gpu": torch.cuda.get_device_name()}


def trl_worker(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,
                              TrainerCallback)
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as trl_ppo

    torch.manual_seed(spec["seed"])
    device = spec["device"]
    dtype = torch.bfloat16 if spec["dtype"] == "bf16" else torch.float32
    tok = AutoTokenizer.from_pretrained(spec["base"], padding_side="left")
    # TRL masks every pad-token position; with pad == EOS it would mask the EOS tokens themselves.
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        tok.pad_token = tok.convert_ids_to_tokens(0)
    policy = AutoModelForCausalLM.from_pretrained(spec["base"], dtype=dtype)
    value = AutoModelForSequenceClassification.from_pretrained(spec["base"], num_labels=1, dtype=dtype)
    reward = _trl_reward_model(spec, dtype)
    for m in (value, reward):
        m.config.pad_token_id = tok.pad_token_id
    ds = Dataset.from_dict({"input_ids": spec["prompt_ids"]})
    b, mb = spec["batch_size"], spec["mini_batch_size"]
    args = PPOConfig(
        output_dir=str(Path(spec["work"]) / "trl-out"), per_device_train_batch_size=b, gradient_accumulation_steps=1,
        num_mini_batches=b // mb, total_episodes=spec["steps"] * b, local_rollout_forward_batch_size=b,
        response_length=spec["response_length"], stop_token="eos", temperature=spec["temperature"],
        num_ppo_epochs=spec["ppo_epochs"], kl_coef=spec["kl_coeff"], missing_eos_penalty=1.0,
        learning_rate=3e-5 * spec["learning_rate_multiplier"], num_sample_generations=0, report_to=[],
        save_strategy="no", logging_steps=1, seed=spec["seed"], use_cpu=device == "cpu",
        bf16=dtype == torch.bfloat16, vf_coef=0.1, cliprange=0.2, cliprange_value=0.2, gamma=1.0, lam=0.95,
        disable_tqdm=True)
    lora = LoraConfig(r=spec["lora_rank"], lora_alpha=spec["lora_alpha"], lora_dropout=0.0,
                      target_modules=spec["lora_target_modules"], task_type="CAUSAL_LM")

    stamps, tokens = [], []
    original = trl_ppo.batch_generation

    def counting_generation(model, queries, *a, **kw):
        query_responses, logits = original(model, queries, *a, **kw)
        tokens.append(response_tokens(query_responses[:, queries.shape[1]:], tok.eos_token_id))
        return query_responses, logits

    trl_ppo.batch_generation = counting_generation

    cpu_stamps = []

    class Stamp(TrainerCallback):
        def on_step_end(self, *a, **kw):
            stamps.append(time.perf_counter())
            cpu_stamps.append(time.process_time())

    trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=None, reward_model=reward,
                         train_dataset=ds, value_model=value, eval_dataset=ds, peft_config=lora,
                         callbacks=[Stamp()])
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.train()
    stamps.insert(0, start)
    cpu_stamps.insert(0, cpu_start)
    steps = len(stamps) - 1
    first = 1 if steps > 1 else 0
    seconds = stamps[-1] - stamps[first]
    cpu_seconds = cpu_stamps[-1] - cpu_stamps[first]
    timed_tokens = sum(tokens[first:steps])
    return {"episodes_per_s": (steps - first) * b / seconds, "tokens_per_s": timed_tokens / seconds,
            "step_s": seconds / (steps - first), "cpu_s_per_step": cpu_seconds / (steps - first),
            "peak_rss_mb": peak_rss_mb(), **_cuda_peak(torch, spec)}


def _trl_reward_model(spec: dict, dtype):
    """The same reward model as ours: base + the reward adapter merged, and its score head."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification
    import torch
    model = AutoModelForSequenceClassification.from_pretrained(spec["base"], num_labels=1, dtype=dtype)
    head = load_file(str(Path(spec["reward_model"]) / "score_head.safetensors"))
    with torch.no_grad():
        model.score.weight.copy_(head["weight"].to(dtype))
    model = PeftModel.from_pretrained(model, spec["reward_model"]).merge_and_unload()
    return model.eval()


# ------------------------------------------------------------------------------------------------
# Orchestration


def ensure_trl_venv(path: Path) -> Path:
    python = path / "bin" / "python"
    check = "import trl, peft, datasets; assert trl.__version__ == '%s'" % TRL_VERSION
    if python.exists() and subprocess.run([str(python), "-c", check], capture_output=True).returncode == 0:
        return python
    import torch
    torch_version = torch.__version__.split("+")[0]
    log(f"creating {path} with trl=={TRL_VERSION} (a few minutes, once)")
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"torch=={torch_version}", f"trl=={TRL_VERSION}",
                    "peft", "datasets"], check=True)
    return python


def run_worker(python: str, role: str, spec_path: Path, extra=(), threads=None) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [python, str(HERE), "--worker", role, "--spec", str(spec_path), *extra]
    log(f"running {role}: {' '.join(cmd)}")
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{role} worker failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def roofline(spec: dict, result: dict) -> dict:
    """Decode-phase tokens/s bound: each decoding step streams all weights once (batch rows share
    it), so tokens/s ≤ batch × bandwidth / weight bytes."""
    gpu = result.get("gpu", "")
    bandwidth = next((bw for name, bw in GPU_BANDWIDTH.items() if name in gpu), None)
    from transformers import AutoConfig, AutoModelForCausalLM
    import torch
    with torch.device("meta"):
        n_params = sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(spec["base"])).parameters())
    weight_bytes = n_params * (2 if spec["dtype"] == "bf16" else 4)
    bound = spec["batch_size"] * bandwidth / weight_bytes if bandwidth else None
    return {"gpu": gpu, "params": n_params, "bandwidth_bytes_per_s": bandwidth, "decode_roofline_tokens_per_s": bound}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few steps, short responses (< 15 min on 2 CPU cores)")
    p.add_argument("--model", default="smollm2-135m-instruct", help="policy/reward base model reference")
    p.add_argument("--model-config", default=None, choices=sorted(MODEL_CONFIGS),
                   help="use a random-weight model of this architecture instead (GPU runs)")
    p.add_argument("--reward-model", default=None, help="a trained reward model directory (default: fresh head)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--mini-batch-size", type=int, default=None)
    p.add_argument("--ppo-epochs", type=int, default=None)
    p.add_argument("--response-length", type=int, default=None)
    p.add_argument("--prompt-length", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads per side (default: torch's default). On a machine shared with other "
                        "jobs, 1 avoids OpenMP threads waiting on each other")
    p.add_argument("--trl-venv", default="/tmp/trl-venv")
    p.add_argument("--work-dir", default=None)
    p.add_argument("--value-model-study", action="store_true", help="ours only: value head vs value adapter")
    p.add_argument("--worker", choices=["ours", "ours-adapter", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        spec = json.loads(Path(args.spec).read_text())
        if args.worker == "trl":
            result = trl_worker(spec)
        else:
            import logging
            logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
            result = ours_worker(spec, "adapter" if args.worker == "ours-adapter" else "head")
        print(json.dumps(result))
        return 0

    defaults = dict(steps=4, batch_size=8, mini_batch_size=4, ppo_epochs=2, response_length=32) if args.quick \
        else dict(steps=10, batch_size=16, mini_batch_size=8, ppo_epochs=4, response_length=64)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="ppo-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    spec = prepare(args, work)
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec))
    setting = (f"model {args.model_config or args.model} | device {args.device} | steps {args.steps} | "
               f"batch {args.batch_size} | minibatch {args.mini_batch_size} | epochs {args.ppo_epochs} | "
               f"response {args.response_length} | LoRA r8 q/k/v/o | threads {args.threads or 'default'}")
    log(setting)

    if args.value_model_study:
        head = run_worker(sys.executable, "ours", spec_path, threads=args.threads)
        adapter = run_worker(sys.executable, "ours-adapter", spec_path, threads=args.threads)
        for name, r in (("head", head), ("adapter", adapter)):
            split = " ".join(f"{k.split('/')[1]} {v:.2f}s" for k, v in r["split"].items())
            print(f"value {name:8s} step {r['step_s']:.2f}s ({split}) | peak RSS {r['peak_rss_mb']:.0f} MB")
        print(json.dumps({"head_step_s": head["step_s"], "adapter_step_s": adapter["step_s"],
                          "head_peak_rss_mb": head["peak_rss_mb"], "adapter_peak_rss_mb": adapter["peak_rss_mb"],
                          "head_split": head["split"], "adapter_split": adapter["split"]}))
        return 0

    trl_python = ensure_trl_venv(Path(args.trl_venv))
    ours = run_worker(sys.executable, "ours", spec_path, threads=args.threads)
    trl = run_worker(str(trl_python), "trl", spec_path, threads=args.threads)
    print(setting)
    for name, r in (("ours", ours), (f"trl {TRL_VERSION}", trl)):
        mem = f" | peak GPU {r['peak_gpu_mb']:.0f} MB" if "peak_gpu_mb" in r else ""
        print(f"{name:10s} {r['episodes_per_s']:.3f} episodes/s | {r['tokens_per_s']:.1f} generated tokens/s | "
              f"{r['step_s']:.1f} s/step ({r['cpu_s_per_step']:.1f} CPU s/step) | peak RSS {r['peak_rss_mb']:.0f} MB{mem}")
    result = {
        "ours_episodes_per_s": ours["episodes_per_s"], "trl_episodes_per_s": trl["episodes_per_s"],
        "speedup": ours["episodes_per_s"] / trl["episodes_per_s"],
        "ours_tokens_per_s": ours["tokens_per_s"], "trl_tokens_per_s": trl["tokens_per_s"],
        "ours_peak_rss_mb": ours["peak_rss_mb"], "trl_peak_rss_mb": trl["peak_rss_mb"],
        "memory_ratio": ours["peak_rss_mb"] / trl["peak_rss_mb"],
        # CPU seconds per PPO step: on a machine shared with other jobs, wall time depends on their load
        # while CPU time measures the work; compare both.
        "ours_cpu_s_per_step": ours["cpu_s_per_step"], "trl_cpu_s_per_step": trl["cpu_s_per_step"],
        "speedup_cpu_time": trl["cpu_s_per_step"] / ours["cpu_s_per_step"],
        "ours_time_split_s": ours["split"], "device": args.device,
    }
    if args.device == "cuda":
        result.update(ours_peak_gpu_mb=ours["peak_gpu_mb"], trl_peak_gpu_mb=trl["peak_gpu_mb"],
                      gpu_memory_ratio=ours["peak_gpu_mb"] / trl["peak_gpu_mb"])
        roof = roofline(spec, ours)
        result["roofline"] = roof
        if roof["decode_roofline_tokens_per_s"]:
            gen_tps = spec["batch_size"] * spec["response_length"] / ours["split"]["time/generation_s"]
            print(f"{roof['gpu']}: {roof['params'] / 1e6:.0f}M params, decode roofline "
                  f"{roof['decode_roofline_tokens_per_s']:.0f} tokens/s at batch {spec['batch_size']}; ours "
                  f"generates ~{gen_tps:.0f} tokens/s ({100 * gen_tps / roof['decode_roofline_tokens_per_s']:.0f}%"
                  f" of it, upper estimate: full-length responses)")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
