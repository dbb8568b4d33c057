"""Exact resume: a `rlhf train-reward` process killed after a checkpoint and restarted with the same
output directory ends with the same weights and metrics as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from safetensors.torch import load_file

from test_reward_helpers import build_tiny_model, synthetic_rows, write_jsonl


def _command(tiny, data, out):
    return [sys.executable, "-m", "rlhf", "train-reward", "--preference-dataset", str(data),
            "--output-dir", str(out), "--large-model-reference", str(tiny),
            "--reward-model-train-steps", "16", "--batch-size", "4", "--gradient-accumulation-steps", "2",
            "--reward-model-learning-rate-multiplier", "20", "--lora-dropout", "0.1",  # dropout: RNG matters
            "--checkpoint-every", "4", "--eval-every", "6", "--log-every", "6", "--normalization-pairs", "32",
            "--lora-target-modules", "q_proj", "v_proj", "--warmup-ratio", "0.2"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "RLHF_DEVICE": "cpu"}


def _history(out):
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def test_killed_run_resumes_to_identical_results(tmp_path):
    tiny = build_tiny_model(tmp_path / "tiny")
    data = write_jsonl(tmp_path / "pref.jsonl", synthetic_rows(120, seed=3))

    straight = tmp_path / "straight"
    done = subprocess.run(_command(tiny, data, straight), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    resumed = tmp_path / "resumed"
    proc = subprocess.Popen(_command(tiny, data, resumed), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    marker = resumed / "checkpoints" / "step-00000008" / "state.json"
    deadline = time.monotonic() + 300
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # as a preempted VM: no cleanup
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (resumed / "reward_model.json").exists()

    again = subprocess.run(_command(tiny, data, resumed), env=_env(), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads(again.stdout[again.stdout.index("{"):])
    assert summary["resumed_from"] >= 8

    a = load_file(straight / "adapter_model.safetensors")
    b = load_file(resumed / "adapter_model.safetensors")
    assert a.keys() == b.keys() and len(a) > 2
    for name in a:
        assert (a[name] == b[name]).all(), name  # bit for bit
    assert _history(straight) == _history(resumed)
    info_a = json.loads((straight / "reward_model.json").read_text())
    info_b = json.loads((resumed / "reward_model.json").read_text())
    assert info_a["normalization"] == info_b["normalization"]
    drop_time = lambda m: {k: v for k, v in m.items() if not k.startswith("time/")}  # noqa: E731
    assert drop_time(info_a["metrics"]) == drop_time(info_b["metrics"])
    assert info_a["metrics"]["heldout/pairs"] > 0
