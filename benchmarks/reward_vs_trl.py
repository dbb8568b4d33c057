"""Reward-model training, ours vs Hugging Face TRL's RewardTrainer, on the same model, data, batch
size, sequence lengths, LoRA config, learning rate schedule and number of steps.

    python benchmarks/reward_vs_trl.py --quick        # 8 steps x 4 pairs: < 10 min on 2 CPU cores
    python benchmarks/reward_vs_trl.py                # 100 steps x 8 pairs: steadier numbers

Each trainer runs in its own subprocess (so peak RSS, ``ru_maxrss``, is its own) and reports:
training throughput in preference pairs/s (training steps only: model loading, tokenization and
evaluation excluded for both: ours from its loop timer, TRL from ``train_runtime``; the CPU time of
the same span is reported too, as ``speedup_cpu_time``, which other load on a shared machine
disturbs less than wall time), peak RSS and
accuracy on the same held-out pairs. Data: the bundled sample preference data
(``rlhf/sample_data/preference.jsonl``) when present, else a synthetic set; pairs longer than
``--max-prompt`` / ``--max-response`` tokens are dropped for both (TRL filters, it does not truncate).
Both train LoRA (rank 4, alpha 8, no dropout, q_proj/v_proj) plus the score head, in fp32 on CPU
(bf16 on CUDA), without gradient checkpointing (TRL's default turns it on; ours has it off).

The last line printed is one JSON object: ours_pairs_per_s, trl_pairs_per_s, speedup,
ours_peak_rss_mb, trl_peak_rss_mb, memory_ratio, ours_heldout_accuracy, trl_heldout_accuracy, ...
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "rlhf" / "sample_data" / "preference.jsonl"
LORA = {"r": 4, "alpha": 8.0, "dropout": 0.0, "targets": ["q_proj", "v_proj"]}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def synthetic_rows(n: int, seed: int) -> list[dict]:
    """A fallback preference set: helpful, on-topic answers beat curt or off-topic ones."""
    rng = random.Random(seed)
    topics = ["photosynthesis", "the French revolution", "binary search", "volcanoes", "compound interest",
              "the water cycle", "black holes", "vaccines", "supply and demand", "plate tectonics"]
    asks = ["Explain {} in simple terms.", "What should a beginner know about {}?",
            "Give me a short summary of {}.", "Why does {} matter?"]
    bad = ["I don't know.", "Look it up yourself.", "That is not interesting.", "No.",
           "Let's talk about something else, like the weather today."]
    rows = []
    for i in range(n):
        topic = rng.choice(topics)
        good = (f"{topic.capitalize()} is a topic many people ask about. In short, it describes how "
                f"things work step by step, and a clear example makes it easy to follow.")
        rows.append({"messages": [{"role": "user", "content": rng.choice(asks).format(topic)}],
                     "chosen": good, "rejected": rng.choice(bad), "source": f"synthetic:{i + 1}",
                     "instruction": None})
    return rows


def prepare(args, workdir: Path) -> dict:
    """Tokenize once to drop pairs over the length limits, split, and write both trainers' inputs."""
    from rlhf import models
    from rlhf.data import canonical
    from rlhf.reward.batching import encode_pairs
    from rlhf.reward.data import split_heldout

    from rlhf.reward.data import load_datasets
    source = args.data or (str(SAMPLE) if SAMPLE.exists() else "synthetic")
    if source == "synthetic":
        source_path = workdir / "synthetic.jsonl"
        canonical.write_jsonl(str(source_path), [canonical.from_dict(canonical.PreferencePair, r)
                                                 for r in synthetic_rows(args.pairs, args.seed)])
    else:
        source_path = Path(source)
    pairs, _ = load_datasets(str(source_path))  # user formats (the sample is Google's) are validated
    n_rows = len(pairs)
    pairs = pairs[: args.pairs]
    tokenizer = models.load_tokenizer(args.model)
    big = 10**6
    encoded, _ = encode_pairs(tokenizer, pairs, big, big)
    keep = [i for i, e in enumerate(encoded)
            if len(e.prompt) <= args.max_prompt and max(len(e.chosen), len(e.rejected)) <= args.max_response]
    pairs = [pairs[i] for i in keep]
    train_idx, held_idx = split_heldout(len(pairs), 0.25, args.heldout, args.seed)
    train = [pairs[i] for i in train_idx]
    held = [pairs[i] for i in held_idx]
    canonical.write_jsonl(str(workdir / "train.jsonl"), train)
    canonical.write_jsonl(str(workdir / "heldout.jsonl"), [
        canonical.EvalExample(p.messages, p.source, p.instruction, p.chosen, p.rejected) for p in held])
    lengths = [encoded[i].length(False) // 2 for i in keep]
    return {"data": source, "pairs_total": n_rows, "pairs_used": len(pairs), "train_pairs": len(train),
            "heldout_pairs": len(held), "mean_tokens_per_sequence": sum(lengths) / max(len(lengths), 1)}


def run_ours(spec: dict) -> dict:
    from rlhf.reward.config import RewardConfig
    from rlhf.reward.train import train_reward_model
    config = RewardConfig(
        preference_dataset=spec["train"], eval_dataset=spec["heldout"], output_dir=spec["out"],
        large_model_reference=spec["model"], prompt_sequence_length=spec["max_prompt"],
        target_sequence_length=spec["max_response"], reward_model_train_steps=spec["steps"],
        reward_model_learning_rate_multiplier=spec["lr"] / 1e-4, batch_size=spec["batch_size"],
        gradient_accumulation_steps=spec["accum"], warmup_ratio=spec["warmup_ratio"],
        lr_scheduler="linear", seed=spec["seed"], reward_lora_dim=LORA["r"], lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"], lora_target_modules=LORA["targets"], heldout_fraction=0.0,
        normalization_pairs=0, eval_every=10**9, checkpoint_every=0, log_every=max(spec["steps"] // 5, 1),
        share_prompt=spec.get("share_prompt", True))
    result = train_reward_model(config)
    pairs = spec["steps"] * spec["batch_size"] * spec["accum"]
    return {"pairs_per_s": pairs / result.metrics["time/train_s"], "train_s": result.metrics["time/train_s"],
            "train_cpu_s": result.metrics["time/train_cpu_s"], "heldout_accuracy": result.metrics["eval/accuracy"], "final_loss": result.metrics["loss/total"]}


def run_trl(spec: dict) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig as TrlConfig
    from trl import RewardTrainer

    from rlhf import models
    from rlhf.data import canonical

    def conversational(uri: str, eval_rows: bool) -> Dataset:
        rows = canonical.read_eval_examples(uri) if eval_rows else canonical.read_preference_pairs(uri)
        return Dataset.from_list([{
            "prompt": canonical.prompt_messages(r),
            "chosen": [{"role": "assistant", "content": r.chosen}],
            "rejected": [{"role": "assistant", "content": r.rejected}]} for r in rows])

    path = models.resolve_model(spec["model"])
    tokenizer = models.load_tokenizer(path)
    cuda = torch.cuda.is_available()
    torch.manual_seed(spec["seed"])
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, dtype=torch.bfloat16 if cuda else torch.float32, pad_token_id=tokenizer.pad_token_id)
    args = TrlConfig(
        output_dir=spec["out"], max_steps=spec["steps"], per_device_train_batch_size=spec["batch_size"],
        per_device_eval_batch_size=spec["batch_size"], gradient_accumulation_steps=spec["accum"],
        learning_rate=spec["lr"], lr_scheduler_type="linear", warmup_steps=int(spec["warmup_ratio"] * spec["steps"]),
        seed=spec["seed"], bf16=cuda, gradient_checkpointing=False, max_length=None,
        logging_steps=max(spec["steps"] // 5, 1), save_strategy="no", report_to=[], eval_strategy="no",
        dataloader_num_workers=0, disable_tqdm=True)
    lora = LoraConfig(task_type="SEQ_CLS", r=LORA["r"], lora_alpha=LORA["alpha"],
                      lora_dropout=LORA["dropout"], target_modules=LORA["targets"])
    trainer = RewardTrainer(model=model, args=args, processing_class=tokenizer,
                            train_dataset=conversational(spec["train"], False),
                            eval_dataset=conversational(spec["heldout"], True), peft_config=lora)
    cpu = time.process_time()
    out = trainer.train()
    cpu = time.process_time() - cpu
    runtime = out.metrics["train_runtime"]
    evaluated = trainer.evaluate()
    pairs = spec["steps"] * spec["batch_size"] * spec["accum"]
    return {"pairs_per_s": pairs / runtime, "train_s": runtime, "train_cpu_s": cpu, "heldout_accuracy": evaluated["eval_accuracy"],
            "final_loss": out.metrics.get("train_loss"), "trl_version": trl.__version__}


def worker(which: str, spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    if spec.get("threads"):
        import torch
        torch.set_num_threads(spec["threads"])
    result = run_ours(spec) if which == "ours" else run_trl(spec)
    result["peak_rss_mb"] = _peak_rss_mb()
    print("RESULT " + json.dumps(result), flush=True)


def launch(which: str, spec: dict, workdir: Path) -> dict:
    spec = {**spec, "out": str(workdir / f"out-{which}-{time.time_ns()}")}
    spec_path = workdir / f"spec-{which}.json"
    spec_path.write_text(json.dumps(spec))
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--worker", which, "--spec", str(spec_path)],
                          capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-5000:])
        raise SystemExit(f"{which} failed (exit {done.returncode})")
    line = [l for l in done.stdout.splitlines() if l.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    result["process_s"] = time.perf_counter() - t0
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few steps: < 10 min on 2 CPU cores")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default="", help="canonical preference JSONL (default: sample data)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="pairs per step (quick: 4, else 8)")
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-3, help="both trainers (LoRA rank 4)")
    parser.add_argument("--max-prompt", type=int, default=256)
    parser.add_argument("--max-response", type=int, default=128)
    parser.add_argument("--pairs", type=int, default=2000, help="pairs read from the data")
    parser.add_argument("--heldout", type=int, default=None, help="held-out pairs")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each; the fastest counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads in both workers (0: torch's default). On a machine shared "
                             "with other jobs, 1 gives steadier numbers: idle threads spin while they wait")
    parser.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.spec)
    steps = args.steps or (8 if args.quick else 100)
    args.batch_size = args.batch_size or (4 if args.quick else 8)
    heldout = args.heldout or (32 if args.quick else 200)
    args.heldout = heldout

    import torch
    with tempfile.TemporaryDirectory(prefix="reward-bench-") as tmp:
        workdir = Path(tmp)
        data = prepare(args, workdir)
        spec = {"model": args.model, "train": str(workdir / "train.jsonl"), "heldout": str(workdir / "heldout.jsonl"),
                "steps": steps, "batch_size": args.batch_size, "accum": args.accum, "lr": args.lr,
                "warmup_ratio": 0.1, "seed": args.seed, "max_prompt": args.max_prompt,
                "max_response": args.max_response, "threads": args.threads}
        runs = {"ours": [], "trl": []}
        for _ in range(args.repeats):
            for which in ("trl", "ours"):
                runs[which].append(launch(which, spec, workdir))
                r = runs[which][-1]
                print(f"{which:5s} {r['pairs_per_s']:8.3f} pairs/s  train {r['train_s']:7.1f} s "
                      f"(CPU {r['train_cpu_s']:7.1f} s)  "
                      f"peak RSS {r['peak_rss_mb']:7.0f} MB  held-out accuracy {r['heldout_accuracy']:.3f}",
                      flush=True)
    best = {k: max(v, key=lambda r: r["pairs_per_s"]) for k, v in runs.items()}
    ours, trl = best["ours"], best["trl"]
    device = "cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    print(f"\n| trainer | pairs/s | peak RSS (MB) | held-out accuracy |\n|---|---|---|---|\n"
          f"| ours | {ours['pairs_per_s']:.3f} | {ours['peak_rss_mb']:.0f} | {ours['heldout_accuracy']:.3f} |\n"
          f"| TRL {trl.get('trl_version', '')} RewardTrainer | {trl['pairs_per_s']:.3f} | {trl['peak_rss_mb']:.0f} | "
          f"{trl['heldout_accuracy']:.3f} |\n")
    summary = {
        "ours_pairs_per_s": round(ours["pairs_per_s"], 3), "trl_pairs_per_s": round(trl["pairs_per_s"], 3),
        "speedup": round(ours["pairs_per_s"] / trl["pairs_per_s"], 3),
        "ours_peak_rss_mb": round(ours["peak_rss_mb"], 1), "trl_peak_rss_mb": round(trl["peak_rss_mb"], 1),
        "memory_ratio": round(ours["peak_rss_mb"] / trl["peak_rss_mb"], 3),
        # CPU seconds per pair: less sensitive than wall time to other work on a shared machine.
        "speedup_cpu_time": round(trl["train_cpu_s"] / ours["train_cpu_s"], 3),
        "ours_heldout_accuracy": ours["heldout_accuracy"], "trl_heldout_accuracy": trl["heldout_accuracy"],
        "ours_final_loss": ours["final_loss"], "trl_final_loss": trl["final_loss"],
        "trl_version": trl.get("trl_version"), "device": device, "threads": args.threads or torch.get_num_threads(),
        "steps": steps,
        "pairs_per_step": args.batch_size * args.accum, "quick": args.quick, **data,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
