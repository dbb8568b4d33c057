"""Tokenized pairs, length-bucketed batch order, and the shared-prompt layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlhf import encoding, models
from rlhf.data.canonical import PreferencePair
from rlhf.reward import batching
from rlhf.reward.modeling import build_reward_model, pair_rewards, score_sequences
from test_reward_helpers import build_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


def _pairs():
    return [PreferencePair([{"role": "user", "content": "Say hi " * i}], "Hello there, friend! " * i, "No.")
            for i in range(1, 6)]


def test_encoding_truncates_and_applies_the_instruction(tiny):
    tok = models.load_tokenizer(tiny)
    pairs = _pairs()
    encoded, stats = batching.encode_pairs(tok, pairs, prompt_sequence_length=20,
                                           target_sequence_length=8, instruction="Be brief.")
    assert stats.pairs == 5 and stats.truncated_prompts > 0 and stats.truncated_responses > 0
    for e in encoded:
        assert len(e.prompt) <= 20 and len(e.chosen) <= 8 and len(e.rejected) <= 8
        assert e.chosen[-1] == tok.eos_token_id and e.rejected[-1] == tok.eos_token_id
    full = encoding.encode_prompt(tok, [{"role": "user", "content": "Be brief.\n\nSay hi "}])
    assert encoded[0].prompt == full[-20:]


def test_batch_plan_is_deterministic_covers_every_item_and_buckets():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 500, size=1000)
    plan = batching.BatchPlan(lengths, batch_size=10, seed=3)
    epoch = [plan.batch(k) for k in range(plan.batches_per_epoch)]
    assert sorted(np.concatenate(epoch).tolist()) == list(range(1000))
    again = batching.BatchPlan(lengths, batch_size=10, seed=3)
    k = plan.batches_per_epoch + 7  # second epoch: a different, reproducible order
    assert again.batch(k).tolist() == plan.batch(k).tolist()
    assert plan.batch(k).tolist() != plan.batch(7).tolist()

    def padded(p):
        return sum(len(b) * lengths[b].max() for b in (p.batch(i) for i in range(p.batches_per_epoch)))
    unbucketed = batching.BatchPlan(lengths, batch_size=10, seed=3, bucket=False)
    assert padded(plan) < 0.7 * padded(unbucketed)  # much less padding


def test_shared_prompt_layout_scores_like_separate_sequences(tiny):
    tok = models.load_tokenizer(tiny)
    model = build_reward_model(tiny, tok, lora_rank=4, lora_alpha=8, lora_dropout=0.0,
                               target_modules=[], seed=0).eval()
    torch.nn.init.normal_(model.get_base_model().score.modules_to_save["default"].weight)
    encoded, _ = batching.encode_pairs(tok, _pairs(), 64, 32)
    with torch.no_grad():
        shared = pair_rewards(model, batching.collate_shared(encoded, tok.pad_token_id))
        rows = pair_rewards(model, batching.collate_rows(encoded, tok.pad_token_id))
        alone_c = torch.cat([score_sequences(model, torch.tensor([e.prompt + e.chosen]),
                                             torch.ones(1, len(e.prompt + e.chosen))) for e in encoded])
        # Left padding (as PPO batches prompts) gives the same rewards too.
        seqs = [e.prompt + e.rejected for e in encoded]
        width = max(map(len, seqs))
        ids = torch.tensor([[tok.pad_token_id] * (width - len(s)) + s for s in seqs])
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
        left_r = score_sequences(model, ids, mask)
    torch.testing.assert_close(shared[0], alone_c, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(rows[0], alone_c, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(shared[1], rows[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(left_r, rows[1], rtol=1e-4, atol=1e-5)
    assert shared[0].std() > 0  # the rewards differ, so the comparison means something


def test_shared_layout_mask_and_gradients_are_finite(tiny):
    tok = models.load_tokenizer(tiny)
    encoded, _ = batching.encode_pairs(tok, _pairs(), 64, 32)
    batch = batching.collate_shared(encoded, tok.pad_token_id)
    mask = batch["attention_mask"][:, 0]
    assert mask.any(-1).all()  # no fully masked query row (NaN in SDPA)
    e, row = encoded[0], mask[0]
    p, c = len(e.prompt), len(e.chosen)
    assert not row[p + c:p + c + len(e.rejected), p:p + c].any()  # rejected never sees chosen
    assert row[p + c, :p].all()  # ... but sees the whole prompt
    model = build_reward_model(tiny, tok, lora_rank=4, lora_alpha=8, lora_dropout=0.0,
                               target_modules=[], seed=0)
    rc, rr = pair_rewards(model, batch)
    (rc - rr).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
