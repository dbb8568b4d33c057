"""The memory plan (rlhf.memory_plan, `rlhf plan`, the `rlhf submit` check): the required outcomes,
the parameter count against transformers, and the prediction against a measured step."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf import memory_plan as M
from rlhf.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _plan(ref, accelerator, count):
    hardware = {step: M.Hardware.vertex(accelerator, count) for step in M.STEPS}
    return M.plan_steps(ref, M.model_config(ref), M.Workload.from_configs(), hardware)


@pytest.mark.parametrize("ref, accelerator, count, fits", [
    ("llama-2-13b", "NVIDIA_L4", 1, False),
    ("llama-2-70b", "NVIDIA_H100_80GB", 1, False),
    ("llama-2-13b", "NVIDIA_A100_80GB", 1, True),
    ("llama-2-70b", "NVIDIA_H100_80GB", 8, True),
])
def test_required_outcomes(ref, accelerator, count, fits, capsys):
    code = main(["plan", "--large-model-reference", ref, "--accelerator-type", accelerator,
                 "--accelerator-count", str(count)])
    out, err = capsys.readouterr()
    if fits:
        assert code == 0 and f"{ref} on {count} x {accelerator}" in out and "fits" in out
        assert all(name in out for name in ("reward model:", "reinforcement learning:", "evaluation:"))
    else:
        assert code == 2 and out == "" and "Traceback" not in err
        assert err.count("\n") == 1  # one message
        assert f"{ref} does not fit 1 x {accelerator}" in err and "fits on 1 x NVIDIA_" in err
        assert f"x {accelerator} sharded" in err  # more of the same GPU, sharded
        for knob in ("reward_model_batch_size", "prompt_sequence_length", "--accelerator-count", "--accelerator-type"):
            assert knob in err


def test_plan_turns_on_what_keeps_results_and_says_sharded():
    plans, problems = _plan("llama-2-70b", "NVIDIA_H100_80GB", 8)
    assert not problems and {p.strategy for p in plans} == {"sharded"}
    reward = next(p for p in plans if p.step == "reward")
    assert reward.settings == {"gradient_checkpointing": True}
    plans, _ = _plan("smollm2-135m-instruct", "NVIDIA_L4", 1)
    assert all(p.strategy == "replicated" and not p.settings and p.fits for p in plans)


def test_cli_refuses_unknown_model_and_lower_settings_fit(capsys):
    assert main(["plan", "--large-model-reference", "org/not-here", "--accelerator-type", "NVIDIA_L4"]) == 2
    assert "no config.json for 'org/not-here'" in capsys.readouterr().err
    assert main(["plan", "--large-model-reference", "gemma-2b", "--accelerator-type", "NVIDIA_L4",
                 "--reward-model-batch-size", "2", "--prompt-sequence-length", "128"]) == 0


def test_submit_lists_a_plan_problem():
    values = {"large_model_reference": "llama-2-13b", "reward_model_accelerator_type": "NVIDIA_L4",
              "reward_model_accelerator_count": 1, "reinforcement_learning_accelerator_type": "NVIDIA_A100_80GB",
              "reinforcement_learning_accelerator_count": 1, "evaluation_accelerator_type": "NVIDIA_A100_80GB"}
    problems = M.pipeline_problems(values)
    assert [name for name, _ in problems] == ["reward_model_accelerator_type"]
    assert "reward_model_accelerator_count" in problems[0][1]
    assert M.pipeline_problems({**values, "large_model_reference": "smollm2-135m-instruct"}) == []
    assert M.pipeline_problems({**values, "large_model_reference": "gs://bucket/model"}) == []  # skipped, offline


def test_importable_without_torch():
    code = ("import sys, rlhf.memory_plan, rlhf.commands.plan; from rlhf.cli import main; "
            "main(['plan', '--large-model-reference', 'llama-2-7b', '--accelerator-type', 'NVIDIA_L4']); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr


def test_accelerator_names_are_vertex_names():
    from google.cloud.aiplatform_v1.types import AcceleratorType
    assert set(M.ACCELERATOR_GB) <= {a.name for a in AcceleratorType}


def test_shipped_configs_cover_the_decoder_aliases():
    from rlhf.models import ALIASES, ENCODER_DECODER_ALIASES
    assert set(M.shipped_configs()) == set(ALIASES) - ENCODER_DECODER_ALIASES


def _distinct_configs():
    seen = {}
    for alias, config in M.shipped_configs().items():
        key = json.dumps({k: v for k, v in config.items() if k != "source"}, sort_keys=True)
        seen.setdefault(key, (alias, config))
    return list(seen.values())


@pytest.mark.parametrize("alias, config", _distinct_configs(), ids=lambda x: x if isinstance(x, str) else "")
def test_parameter_count_matches_transformers(alias, config):
    torch = pytest.importorskip("torch")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification
    hf = AutoConfig.for_model(config["model_type"], **{k: v for k, v in config.items()
                                                       if k not in ("source", "model_type")}, num_labels=1)
    arch = M.Architecture.from_config(config)
    with torch.device("meta"):
        assert AutoModelForCausalLM.from_config(hf).num_parameters() == arch.parameters("lm")
        if alias in ("smollm2-135m-instruct", "llama-2-7b"):  # tied and untied: the reward model's shape
            assert AutoModelForSequenceClassification.from_config(hf).num_parameters() == arch.parameters("score")


def test_prediction_against_a_measured_reward_step(tmp_path):
    """A tiny random llama (activations dominate), one real reward step in a child process; the plan's
    prediction (fp32, no CUDA runtime) within 35% of the measured peak RSS rise."""
    pytest.importorskip("torch")
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "llama", "vocab_size": 2048, "hidden_size": 512, "intermediate_size": 1536,
        "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 2, "tie_word_embeddings": True}))
    script = ROOT / "benchmarks" / "memory_plan_check.py"
    spec = importlib.util.spec_from_file_location("memory_plan_check", script)
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    out = subprocess.run([sys.executable, str(script), "--child", str(tmp_path), "reward"], capture_output=True,
                         text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    measured = json.loads(out.stdout.strip().splitlines()[-1])["measured"]
    predicted = check.predicted(str(tmp_path), "reward")
    assert abs(predicted - measured) / measured < 0.35, (predicted, measured)
