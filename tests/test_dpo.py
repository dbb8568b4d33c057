"""DPO: the losses against plain loops (sigmoid, label smoothing, IPO), implicit rewards rising on a
toy task with only the adapter moving, the cached reference equal to the adapter-disabled pass,
exact resume, the non-finite guard, the whole step's outputs (loaded as evaluation and deployment
load a PPO policy) and the CLI's errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from rlhf.dpo.batching import collate, sequence_logprobs
from rlhf.dpo.config import DPOConfig
from rlhf.dpo.losses import dpo_loss
from rlhf.dpo.trainer import DPOTrainer
from rlhf.errors import UserError
from rlhf.ppo.outputs import OutputLayout
from rlhf.reward.batching import EncodedPair
from policy_trainer_checks import (check_a_killed_run_resumes_to_the_uninterrupted_result,
                                   check_a_non_finite_loss_stops_the_run_before_saving)
from test_ppo_train import EOS, tiny_model
from test_reward_helpers import build_tiny_model, synthetic_rows, write_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")


# -- the losses against plain loops --------------------------------------------------------------

def reference_loss(pc, pr, rc, rr, beta, loss_type, eps):
    """DPO / conservative DPO / IPO for one pair, written out from the papers."""
    delta = (pc - rc) - (pr - rr)
    if loss_type == "ipo":
        return (delta - 1 / (2 * beta)) ** 2
    logsig = lambda x: -math.log1p(math.exp(-x))  # noqa: E731
    return -(1 - eps) * logsig(beta * delta) - eps * logsig(-beta * delta)


@pytest.mark.parametrize("loss_type,beta,eps", [("sigmoid", 0.1, 0.0), ("sigmoid", 0.5, 0.2),
                                                ("ipo", 0.1, 0.0), ("ipo", 2.0, 0.0)])
def test_losses_and_implicit_rewards_match_plain_loops(loss_type, beta, eps):
    g = torch.Generator().manual_seed(3)
    pc, pr, rc, rr = (torch.randn(6, generator=g, dtype=torch.float64) * 5 - 20 for _ in range(4))
    losses, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta, loss_type, eps)
    for i in range(6):
        want = reference_loss(pc[i].item(), pr[i].item(), rc[i].item(), rr[i].item(), beta, loss_type, eps)
        assert losses[i].item() == pytest.approx(want, rel=1e-9)
        assert chosen[i].item() == pytest.approx(beta * (pc[i] - rc[i]).item())
        assert rejected[i].item() == pytest.approx(beta * (pr[i] - rr[i]).item())


def test_the_loss_pushes_chosen_up_and_rejected_down():
    pc, pr = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    for loss_type in ("sigmoid", "ipo"):
        losses, _, _ = dpo_loss(pc, pr, torch.zeros(1), torch.zeros(1), 0.1, loss_type)
        gc, gr = torch.autograd.grad(losses.sum(), [pc, pr])
        assert gc.item() < 0 < gr.item(), loss_type  # descent raises log π(chosen), lowers log π(rejected)


def test_sequence_logprobs_sum_only_response_tokens():
    model = tiny_model()
    pairs = [EncodedPair([5, 6, 7], [8, EOS], [9, 10, 11, EOS]), EncodedPair([4], [3, 3, 3, EOS], [EOS])]
    chosen, rejected = sequence_logprobs(model, collate(pairs, EOS))
    for k, pair in enumerate(pairs):  # one unpadded row at a time, token by token
        for response, got in ((pair.chosen, chosen[k]), (pair.rejected, rejected[k])):
            ids = torch.tensor([pair.prompt + response])
            logits = model.causal_lm(input_ids=ids).logits[0].log_softmax(-1)
            want = sum(logits[len(pair.prompt) - 1 + t, tok].item() for t, tok in enumerate(response))
            assert got.item() == pytest.approx(want, abs=1e-4)


# -- the loop on a toy task -----------------------------------------------------------------------

def toy_pairs(n=48, seed=1):
    """Learnable: after any prompt, chosen is '3 4 EOS', rejected a random run of other tokens."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        prompt = torch.randint(5, 16, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g).tolist()
        rejected = torch.randint(5, 16, (int(torch.randint(2, 5, (1,), generator=g)),), generator=g).tolist()
        out.append(EncodedPair(prompt, [3, 4, EOS], rejected + [EOS]))
    return out


def toy_config(**kw):
    base = dict(preference_dataset="unused", output_dir="unused", reinforcement_learning_train_steps=12,
                batch_size=8, reinforcement_learning_rate_multiplier=100, warmup_ratio=0.0,
                lr_scheduler="constant", checkpoint_every=0, sample_count=0, log_every=100)
    base.update(kw)
    return DPOConfig(**base)


def test_implicit_rewards_rise_only_the_adapter_moves_and_the_cache_is_the_disabled_adapter(tmp_path):
    model = tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    pairs = toy_pairs()
    trainer = DPOTrainer(toy_config(), model, pairs, EOS, OutputLayout(str(tmp_path)), heldout=toy_pairs(8, seed=2))
    summary = trainer.train()
    hist = trainer.tracker.history
    assert hist[0]["reward/margin"] == pytest.approx(0, abs=1e-4)  # the policy starts as the reference
    margins = [row["reward/margin"] for row in hist]
    assert sum(margins[-3:]) / 3 > 0.6, margins  # seen: 0 -> 0.96..1.42 (last 3 steps, model seeds 0-2)
    assert hist[-1]["reward/accuracy"] == 1.0 and summary["heldout/accuracy"] == 1.0
    assert hist[-1]["reward/chosen"] > 0 > hist[-1]["reward/rejected"]
    assert hist[-1]["loss/total"] < math.log(2) - 0.3 and hist[-1]["policy/kl"] != 0
    for name, p in model.named_parameters():
        moved = not torch.equal(p, before[name])
        assert moved == (".lora_" in name), name  # the adapter (A and B) moves; base and value head stay
    # The cached reference log-probs are the adapter-disabled pass of the trained model.
    idx = sorted({i for (split, i) in trainer.reference_cache if split == "train"})[:8]
    with torch.no_grad(), model.reference():
        ref_c, ref_r = sequence_logprobs(model, collate([pairs[i] for i in idx], EOS))
    cached = torch.tensor([trainer.reference_cache[("train", i)] for i in idx])
    torch.testing.assert_close(cached[:, 0], ref_c, atol=1e-5, rtol=0)
    torch.testing.assert_close(cached[:, 1], ref_r, atol=1e-5, rtol=0)
    with torch.no_grad():
        pol_c, _ = sequence_logprobs(model, collate([pairs[i] for i in idx], EOS))
    assert (pol_c - ref_c).min() > 0.5  # and the policy itself moved away from it


def test_bf16_base_trains_with_fp32_adapters_from_the_reference(tmp_path):
    """The same code as on a GPU in bf16: a bf16 base with fp32 LoRA starts exactly at its reference
    (the adapter-disabled pass), learns the toy preference, and only the fp32 adapters move."""
    model = tiny_model(dtype=torch.bfloat16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = DPOTrainer(toy_config(), model, toy_pairs(), EOS, OutputLayout(str(tmp_path)), heldout=toy_pairs(8, seed=2))
    summary = trainer.train()
    hist = trainer.tracker.history
    assert hist[0]["reward/margin"] == 0.0 and hist[0]["loss/total"] == pytest.approx(math.log(2), abs=1e-6)
    assert all(math.isfinite(v) for row in hist for v in row.values() if isinstance(v, float))
    assert sum(row["reward/margin"] for row in hist[-3:]) / 3 > 0.4, [row["reward/margin"] for row in hist]
    assert summary["heldout/accuracy"] >= 0.75
    assert model.lm_head.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.trainable_parameters())
    moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert moved and all(".lora_" in n for n in moved)


def test_ipo_trains_toward_its_target_margin(tmp_path):
    cfg = toy_config(loss_type="ipo", beta=0.5, reinforcement_learning_train_steps=10)
    trainer = DPOTrainer(cfg, tiny_model(), toy_pairs(), EOS, OutputLayout(str(tmp_path)))
    trainer.train()
    hist = trainer.tracker.history
    # IPO's target Δ is 1/(2β) = 1 in length-averaged log-probs: margin β·Δ goes from 0 toward 0.5.
    assert hist[0]["reward/margin"] == pytest.approx(0, abs=1e-4)
    assert 0.2 < hist[-1]["reward/margin"] < 1.0, [r["reward/margin"] for r in hist]  # seen 0.57..0.71
    assert hist[-1]["loss/total"] < 0.5 * hist[0]["loss/total"]


def new_trainer(config, out_dir):
    return DPOTrainer(config, tiny_model(), toy_pairs(), EOS, OutputLayout(out_dir))


def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    check_a_killed_run_resumes_to_the_uninterrupted_result(
        tmp_path, new_trainer, toy_config, "reinforcement_learning_train_steps", refused={"beta": 0.3},
        refusal=(UserError, "beta: 0.1 -> 0.3"), lora_dropout=0.1)


def test_a_non_finite_loss_stops_the_run_before_saving(tmp_path):
    check_a_non_finite_loss_stops_the_run_before_saving(tmp_path, new_trainer, toy_config,
                                                        "reinforcement_learning_train_steps", ".lora_B.")


# -- the whole step and the CLI -------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


def test_the_step_writes_a_policy_adapter_evaluation_and_deployment_load(tiny_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rlhf.deploy import merge_adapter
    from rlhf.dpo.run import train_dpo
    from rlhf.evaluate.policies import adapter_base_reference, find_adapter_dir
    data = write_jsonl(tmp_path / "pref.jsonl", synthetic_rows(40, seed=1))
    out = tmp_path / "dpo"
    cfg = DPOConfig(preference_dataset=str(data), output_dir=str(out), large_model_reference=tiny_dir,
                    reinforcement_learning_train_steps=4, batch_size=4, checkpoint_every=2, sample_count=2,
                    target_sequence_length=16, prompt_sequence_length=32, log_every=1)
    summary = train_dpo(cfg)
    assert summary["heldout/pairs"] == 4 and "reward/margin" in summary and "policy/kl" in summary
    saved = json.loads((out / "summary.json").read_text())
    assert saved["base_model"] == tiny_dir and saved["steps"] == 4 and saved["tuning_method"] == "dpo"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4
    assert any((out / "tensorboard").iterdir())
    samples = [json.loads(line) for line in (out / "samples" / "step-00000004.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and {"prompt", "response", "step"} <= set(samples[0])
    adapter = find_adapter_dir(str(out))  # evaluation takes the run directory, as for PPO
    assert adapter == str(out / "policy_adapter") and adapter_base_reference(adapter) == tiny_dir
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), adapter)
    assert any(".lora_B." in n and p.abs().sum() > 0 for n, p in policy.named_parameters())
    assert merge_adapter(adapter, str(tmp_path / "merged")) == tiny_dir
    # Rerun on the finished directory: resumes at the end and trains nothing more.
    assert train_dpo(cfg)["heldout/pairs"] == 4


def _rlhf(*args):
    return subprocess.run([sys.executable, "-m", "rlhf", "dpo", *args], capture_output=True, text=True, timeout=120)


def test_cli_errors_are_one_line_naming_the_flag(tmp_path):
    done = _rlhf("--output-dir", str(tmp_path))
    assert done.returncode == 2 and "--preference-dataset" in done.stderr and "Traceback" not in done.stderr
    done = _rlhf("--preference-dataset", "x.jsonl", "--output-dir", str(tmp_path), "--loss-type", "hinge")
    assert done.returncode == 2 and "--loss-type" in done.stderr and "sigmoid" in done.stderr
    done = _rlhf("--preference-dataset", "x.jsonl", "--output-dir", str(tmp_path), "--loss-type", "ipo",
                 "--label-smoothing", "0.1")
    assert done.returncode == 2 and "label_smoothing" in done.stderr.replace("-", "_")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}], "chosen": "a"}\n')
    done = _rlhf("--preference-dataset", str(bad), "--output-dir", str(tmp_path / "o"))
    assert done.returncode == 2 and "bad.jsonl:1" in done.stderr and "Traceback" not in done.stderr
