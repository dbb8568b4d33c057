"""`benchmarks/gpu_check.py --device cpu --tiny` runs the GPU check's whole code path on CPU (the
reward step, PPO and the evaluation through `rlhf.launch`, every probe and check) in seconds, so the
script a GPU machine runs is exercised here: exit 0, every check reported as passed, the final
tables printed, the CUDA-only numbers as "n/a"."""

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
CHECKS = ["reward: trains in bf16, finite loss", "ppo: first-minibatch ratio = 1",
          "ppo: old values = training-pass values", "ppo: fused head = own logits (scoring)",
          "ppo: fused head = own logits (sampling)", "evaluation: report written, KL finite"]


def test_tiny_cpu_run_passes_every_check_and_prints_the_table(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny"], env=env,
                          capture_output=True, text=True, timeout=120)
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-4000:]
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in out.splitlines()
            if line.startswith("| ") and line.count("|") >= 4}
    for name in CHECKS:
        assert rows.get(name) == "PASS", (name, out)
    for name in ("decode tokens/s (PPO rollouts, per device)", "reward training MFU", "PPO update MFU"):
        assert rows.get(name) == "n/a", (name, out)  # CUDA-only numbers
    assert rows["peak memory, ppo (max over PPO steps)"] == "n/a"
    assert "gpu_check passed: 6 of 6 checks" in out
    assert not list(tmp_path.glob("rlhf-gpu-check-*"))  # its work dir is removed
