"""How the reward step uses its loss, observed through `train_step` and `train_reward_model` on a
tiny model: the Bradley–Terry direction (a step raises chosen − rejected), its margin, and the
normalization statistics saved with the model (which PPO applies: test_ppo_mechanisms.py).

`test_reward_math.py` checks `bradley_terry_loss` by hand; here the loss must act through the
step. Rewards are measured independently of the training layout: each (prompt, response) scored
as its own sequence. `scripts/mutation_check.py` checks that these tests fail when a mechanism is
broken.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rlhf import models
from rlhf.data.canonical import PreferencePair
from rlhf.reward import batching
from rlhf.reward.config import RewardConfig
from rlhf.reward.modeling import build_reward_model, score_sequences
from rlhf.reward.setup import Collator, lr_lambda
from rlhf.reward.trainer import train_step
from test_reward_helpers import build_tiny_model, synthetic_rows, write_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture(scope="module")
def encoded(tiny):
    tok = models.load_tokenizer(tiny)
    pairs = [PreferencePair(r["messages"], r["chosen"], r["rejected"]) for r in synthetic_rows(16, seed=3)]
    return tok, batching.encode_pairs(tok, pairs, 64, 32)[0]


def _model(tiny, tok):
    return build_reward_model(tiny, tok, lora_rank=4, lora_alpha=8, lora_dropout=0.0,
                              target_modules=["q_proj", "v_proj"], seed=0)


def _rewards(model, tok, pairs) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen and rejected rewards, each response scored alone (prompt + response + EOS)."""
    seqs = [p.prompt + p.chosen for p in pairs] + [p.prompt + p.rejected for p in pairs]
    batch = batching.collate_sequences(seqs, tok.pad_token_id)
    with torch.no_grad():
        rewards = score_sequences(model, batch["input_ids"], batch["attention_mask"])
    return rewards[:len(pairs)], rewards[len(pairs):]


def _step(model, tok, pairs, config, optimizer=None):
    optimizer = optimizer or torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                               lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(10, 0, "constant"))
    collate = Collator(model, tok.pad_token_id, True, torch.device("cpu"))
    return train_step(model, collate, [pairs[:8], pairs[8:]], optimizer, scheduler, config)


def _config(**kw) -> RewardConfig:
    return RewardConfig(preference_dataset="x", output_dir="x", lora_dropout=0.0, **kw)


def test_a_step_raises_the_chosen_minus_rejected_margin(tiny, encoded):
    tok, pairs = encoded
    model = _model(tiny, tok)
    rc, rr = _rewards(model, tok, pairs)
    before = (rc - rr).mean().item()
    config = _config(reward_model_learning_rate_multiplier=30)
    for _ in range(2):
        _step(model, tok, pairs, config)
    rc, rr = _rewards(model, tok, pairs)
    after = (rc - rr).mean().item()
    assert after > before + 0.05, (before, after)  # seen: +0.15


@pytest.mark.parametrize("margin", [0.0, 1.5])
def test_the_step_minimizes_bradley_terry_with_its_margin(tiny, encoded, margin):
    """The loss the step reports (and backpropagates) is −log σ(r_chosen − r_rejected − m) over its
    pairs, with the rewards measured independently before the step."""
    tok, pairs = encoded
    model = _model(tiny, tok)
    rc, rr = _rewards(model, tok, pairs)
    metrics = _step(model, tok, pairs, _config(margin=margin))
    want = -F.logsigmoid(rc - rr - margin).mean().item()
    assert metrics["loss/bt"] == pytest.approx(want, abs=1e-4)
    assert metrics["loss/total"] == pytest.approx(want, abs=1e-4)
    assert metrics["train/margin"] == pytest.approx((rc - rr).mean().item(), abs=1e-4)


def test_a_margin_makes_the_step_push_harder_on_pairs_inside_it(tiny, encoded):
    """Plain SGD, no clipping: the parameter change is the gradient, whose per-pair weight is
    σ(m − d). At initialization d ≈ 0, so m = 3 must give a step about σ(3)/σ(0) ≈ 1.9 times longer."""
    tok, pairs = encoded
    lengths = {}
    for margin in (0.0, 3.0):
        model = _model(tiny, tok)
        params = [p for p in model.parameters() if p.requires_grad]
        before = [p.detach().clone() for p in params]
        _step(model, tok, pairs, _config(margin=margin, max_grad_norm=0.0), torch.optim.SGD(params, lr=1e-3))
        lengths[margin] = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(params, before))).item()
    assert lengths[0.0] > 0
    assert lengths[3.0] > 1.5 * lengths[0.0], lengths


def test_saved_normalization_is_the_mean_and_std_of_training_rewards(tiny, tmp_path):
    """The mean/std written with the model are those of the trained model's rewards for both
    responses of the training pairs (scored apart, by the scorer); PPO divides by them."""
    from rlhf.reward import outputs
    from rlhf.reward.scorer import RewardScorer
    from rlhf.reward.train import train_reward_model
    rows = synthetic_rows(12, seed=4)
    config = RewardConfig(preference_dataset=str(write_jsonl(tmp_path / "pref.jsonl", rows)),
                          output_dir=str(tmp_path / "rm"), large_model_reference=tiny, reward_model_train_steps=2,
                          batch_size=6, gradient_accumulation_steps=1, reward_model_learning_rate_multiplier=30,
                          eval_every=100, log_every=100, checkpoint_every=0, lora_target_modules=["q_proj", "v_proj"],
                          heldout_fraction=0.0, lora_dropout=0.0)
    train_reward_model(config)
    saved = outputs.read_info(str(tmp_path / "rm"))["normalization"]
    scorer = RewardScorer(str(tmp_path / "rm"))
    conversations = [r["messages"] for r in rows]
    raw = np.concatenate([scorer.score(conversations, [r["chosen"] for r in rows]).raw,
                          scorer.score(conversations, [r["rejected"] for r in rows]).raw])
    assert saved["pairs"] == len(rows)
    assert raw.std() > 1e-3  # the rewards differ, so a wrong std shows
    assert saved["mean"] == pytest.approx(raw.mean(), abs=1e-4)
    assert saved["std"] == pytest.approx(raw.std(), rel=1e-3)
