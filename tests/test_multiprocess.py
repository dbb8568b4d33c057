"""Every step on several processes (`--devices 2`: two gloo processes of one thread on CPU, started
by `rlhf.launch` with PyTorch's launcher), against the same step on one process.

- reward training: the global batch is the setting (each process takes half of every micro-batch),
  so two processes train what one does. Weights and metrics agree to 1e-4 (absolute): the only
  differences are float summation orders (two half-batches and a gradient all-reduce instead of one
  batch; shorter padding), ~1e-7 per step, which AdamW's normalized steps carry through 6 steps.
  LoRA dropout is off: each process draws its own masks.
- PPO: the same global batch, split. With top_k=1 the rollouts do not depend on the random stream,
  one minibatch per step and advantages whitened over both processes make the update the one
  process's when both hold as many response tokens: metrics and weights agree to 1e-3 after 3 steps
  (the same rounding, amplified by the ratio and clip terms).
- evaluation: greedy predictions identical (the processes generate the very batches one process
  forms), reward and judge scores to 1e-5.
- a killed 2-process run (reward, PPO) resumes to the uninterrupted 2-process result (reward: the
  same to 1e-6; PPO: each process's sampling is seeded per step, so exactly the same metrics).
- only rank 0 writes: one metrics line per step, one checkpoint series, no stray files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_eval_inference import POSTS, built_once, tiny  # noqa: F401  (fixture)
from test_ppo_train import build_tiny_setup
from test_reward_helpers import build_tiny_model, synthetic_rows, write_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "RLHF_DEVICE": "cpu", "TOKENIZERS_PARALLELISM": "false"}


def run_rlhf(args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "rlhf", *args], env=_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def _run_killed_after(args: list[str], marker: Path) -> None:
    """Start `rlhf ARGS`, kill its whole process group (launcher and workers, as a preempted VM)
    once `marker` exists."""
    proc = subprocess.Popen([sys.executable, "-m", "rlhf", *args], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 240
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert marker.exists(), proc.stderr.read().decode()[-3000:]


def history(path: Path, drop=("time/", "perf/")) -> list[dict]:
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(drop)} for r in rows]


def close(a: list[dict], b: list[dict], atol: float) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert set(ra) == set(rb)
        for k in ra:
            assert ra[k] == pytest.approx(rb[k], abs=atol), (ra["step"], k, ra[k], rb[k])


def weights_close(a: dict, b: dict, atol: float) -> None:
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


def no_strays(out: Path) -> None:
    """Nothing half-written or written twice: no temporary names anywhere under `out`."""
    strays = [str(p) for p in out.rglob("*") if p.name.startswith((".tmp", "tmp"))]
    assert not strays, strays


# -- reward training ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reward_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("mp-reward")
    tiny_dir = build_tiny_model(root / "tiny", hidden=32)
    data = write_jsonl(root / "pref.jsonl", synthetic_rows(72, seed=5))
    return tiny_dir, data


def reward_args(inputs, out: Path, devices: int) -> list[str]:
    tiny_dir, data = inputs
    return ["train-reward", "--preference-dataset", str(data), "--output-dir", str(out),
            "--large-model-reference", str(tiny_dir), "--reward-model-train-steps", "6", "--batch-size", "6",
            "--gradient-accumulation-steps", "2", "--reward-model-learning-rate-multiplier", "20",
            "--lora-dropout", "0", "--checkpoint-every", "2", "--eval-every", "3", "--log-every", "1",
            "--normalization-pairs", "20", "--lora-target-modules", "q_proj", "v_proj",
            "--prompt-sequence-length", "32", "--target-sequence-length", "16", "--devices", str(devices)]


def reward_weights(out: Path) -> dict:
    return {k: v for k, v in load_file(str(out / "adapter_model.safetensors")).items()}


def test_reward_training_on_two_processes_matches_one_and_resumes(reward_inputs, tmp_path):
    one, two, killed = tmp_path / "one", tmp_path / "two", tmp_path / "killed"
    run_rlhf(reward_args(reward_inputs, one, 1))
    done = run_rlhf(reward_args(reward_inputs, two, 2))
    assert "world size 2" in done.stderr and done.stderr.count("world size 2 (") == 1  # rank 0 logs it, once

    # Written once, by rank 0: one metrics line per step, one model, one info file.
    assert [r["step"] for r in history(two / "metrics.jsonl")] == list(range(1, 7))
    assert sorted(os.listdir(two / "checkpoints")) == ["step-00000004", "step-00000006"]
    no_strays(two)
    info1, info2 = (json.loads((d / "reward_model.json").read_text()) for d in (one, two))
    close(history(one / "metrics.jsonl"), history(two / "metrics.jsonl"), atol=1e-4)
    weights_close(reward_weights(one), reward_weights(two), atol=1e-4)
    for key in ("mean", "std"):
        assert info1["normalization"][key] == pytest.approx(info2["normalization"][key], abs=1e-4)

    _run_killed_after(reward_args(reward_inputs, killed, 2), killed / "checkpoints" / "step-00000002" / "state.json")
    assert not (killed / "reward_model.json").exists()
    again = run_rlhf(reward_args(reward_inputs, killed, 2))
    assert json.loads(again.stdout[again.stdout.index("{"):])["resumed_from"] >= 2
    close(history(two / "metrics.jsonl"), history(killed / "metrics.jsonl"), atol=1e-6)
    weights_close(reward_weights(two), reward_weights(killed), atol=1e-6)
    no_strays(killed)


# -- PPO ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ppo_setup(tmp_path_factory):
    return build_tiny_setup(tmp_path_factory.mktemp("mp-ppo"))


def tune_args(setup: Path, out: Path, devices: int, extra=()) -> list[str]:
    return ["tune", "--prompt-dataset", str(setup / "prompts.jsonl"), "--reward-model", str(setup / "reward"),
            "--output-dir", str(out), "--reinforcement-learning-train-steps", "3", "--batch-size", "4",
            "--mini-batch-size", "4", "--ppo-epochs", "1", "--target-sequence-length", "6",
            "--checkpoint-every", "1", "--sample-count", "2", "--device", "cpu", "--top-k", "1",
            "--missing-eos-penalty", "0", "--reinforcement-learning-rate-multiplier", "30",
            "--adaptive-kl", "--kl-target", "0.01", "--kl-horizon", "8", "--devices", str(devices), *extra]


def ppo_state(out: Path):
    weights = load_file(str(out / "policy_adapter" / "adapter_model.safetensors"))
    weights.update({"value_head." + k: v for k, v in
                    load_file(str(out / "policy_adapter" / "value_head.safetensors")).items()})
    return weights, history(out / "metrics.jsonl")


def test_ppo_on_two_processes_matches_one_and_resumes(ppo_setup, tmp_path):
    one, two, killed = tmp_path / "one", tmp_path / "two", tmp_path / "killed"
    run_rlhf(tune_args(ppo_setup, one, 1))
    done = run_rlhf(tune_args(ppo_setup, two, 2))
    assert done.stderr.count("world size 2 (2 episodes per process)") == 1

    w1, m1 = ppo_state(one)
    w2, m2 = ppo_state(two)
    assert [r["step"] for r in m2] == [1, 2, 3]
    assert sorted(os.listdir(two / "samples")) == ["step-00000001.jsonl", "step-00000002.jsonl",
                                                  "step-00000003.jsonl"]
    assert len((two / "samples" / "step-00000003.jsonl").read_text().splitlines()) == 2
    no_strays(two)
    # Every response ran to the token limit (top_k=1 on a random model): both processes hold as
    # many tokens, so the DDP average is the global token mean and the runs agree.
    assert all(r["response/length"] == 6 for r in m1 + m2)
    assert len({r["objective/kl_coeff"] for r in m2}) > 1  # the adaptive β moved (the same on both ranks)
    close(m1, m2, atol=1e-3)
    weights_close(w1, w2, atol=1e-3)

    _run_killed_after(tune_args(ppo_setup, killed, 2), killed / "checkpoints" / "step-00000001" / "state.json")
    assert not (killed / "policy_adapter").exists()
    run_rlhf(tune_args(ppo_setup, killed, 2))
    w3, m3 = ppo_state(killed)
    close(m2, m3, atol=1e-6)
    weights_close(w2, w3, atol=1e-6)


# -- evaluation -----------------------------------------------------------------------------------


def test_evaluation_on_two_processes_writes_the_predictions_of_one(tiny, tmp_path):  # noqa: F811
    _, adapter_dir = tiny
    rows = [{"input_text": f"{POSTS[i % len(POSTS)]} ({i})", "instruction": "Summarize in less than 20 words.",
             "reference": f"Summary {i}."} for i in range(7)]
    data = write_jsonl(tmp_path / "eval.jsonl", rows)

    def args(out, devices):
        return ["evaluate", "--eval-dataset", str(data), "--model", adapter_dir, "--output-dir", str(out),
                "--target-sequence-length", "6", "--batch-size", "2", "--device", "cpu", "--devices", str(devices)]

    run_rlhf(args(tmp_path / "one", 1))
    done = run_rlhf(args(tmp_path / "two", 2))
    assert done.stdout.count("## Evaluation: tuned vs base on 7 eval prompts") == 1  # printed once
    for name in ("base", "tuned"):
        one = (tmp_path / "one" / "predictions" / f"{name}.jsonl").read_text()
        two = (tmp_path / "two" / "predictions" / f"{name}.jsonl").read_text()
        assert one == two and len(two.splitlines()) == 7
    s1, s2 = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert set(s1) == set(s2)
    for k in s1:
        if not k.startswith("time/"):
            assert s1[k] == pytest.approx(s2[k], abs=1e-5), k
    assert sorted(os.listdir(tmp_path / "two")) == ["metrics.json", "predictions", "report.html", "summary.md"]
    no_strays(tmp_path / "two")


# -- the setting and the launcher -----------------------------------------------------------------


def _fail_on_rank_1(message: str) -> str:
    from rlhf import distributed
    from rlhf.errors import UserError
    rank, world, _ = distributed.init("cpu")
    if rank == 1:
        raise UserError(message)
    distributed.barrier()  # rank 0 waits here until the launcher stops it
    return "unreachable"


def test_a_user_error_in_a_worker_comes_back_as_one_user_error():
    from rlhf import launch
    from rlhf.errors import UserError
    with pytest.raises(UserError, match=r"^\(process 1\) --flag 3: wrong$"):
        launch.launch(2, _fail_on_rank_1, "--flag 3: wrong")


@pytest.mark.parametrize("config_class", ["reward", "ppo", "evaluate"])
def test_devices_is_checked_defaults_to_the_gpus_and_leaves_the_resume_fingerprint_alone(config_class):
    from rlhf import launch
    from rlhf.errors import UserError
    from rlhf.evaluate.config import EvalConfig
    from rlhf.ppo.config import PPOConfig
    from rlhf.reward.config import RewardConfig
    from rlhf.rundir import settings_fingerprint
    cls = {"reward": RewardConfig, "ppo": PPOConfig, "evaluate": EvalConfig}[config_class]
    assert cls().devices is None
    with pytest.raises(UserError, match="--devices 0: must be a positive integer"):
        cls(devices=0).validate(inputs=False)
    if hasattr(cls, "RESUME_MAY_CHANGE"):
        assert settings_fingerprint(cls(devices=4)) == settings_fingerprint(cls())
    assert launch.resolve_devices(None, "") == (torch.cuda.device_count() if torch.cuda.is_available() else 1)
    assert launch.resolve_devices(None, "cpu") == 1 and launch.resolve_devices(3, "cpu") == 3


def test_a_global_batch_that_does_not_split_is_refused_naming_the_flag(tmp_path):
    from rlhf.errors import UserError
    from rlhf.ppo.outputs import OutputLayout
    from rlhf.ppo.trainer import PPOTrainer
    from test_ppo_train import IdTokenizer, shorter_is_better, tiny_model, toy_config, toy_prompts
    with pytest.raises(UserError, match="--batch-size 6 does not split over 4 devices"):
        PPOTrainer(toy_config(batch_size=6, mini_batch_size=2), tiny_model(), IdTokenizer(), toy_prompts(),
                   shorter_is_better, OutputLayout(str(tmp_path)), rank=0, world_size=4)
