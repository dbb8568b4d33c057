"""Evaluation metric functions on hand-made inputs: win rate with ties, ROUGE-L, KL estimators,
the reward-hacking alarm, histograms."""

import math

import pytest
import torch

from rlhf.evaluate import kl as K
from rlhf.evaluate import metrics as M


def test_win_rate_counts_ties_half():
    tuned = [2.0, 1.0, 0.5, 3.0]
    base = [1.0, 1.0, 0.7, 3.0]
    # win, tie, loss, tie -> (1 + 0.5 + 0 + 0.5) / 4
    assert M.outcomes(tuned, base) == [1.0, 0.5, 0.0, 0.5]
    assert M.win_rate(tuned, base) == pytest.approx(0.5)
    assert M.win_rate(base, tuned) == pytest.approx(1 - M.win_rate(tuned, base))
    assert M.win_rate([1.0, 2.0, 3.0], [0.0, 0.0, 0.0]) == 1.0


def test_win_rate_tie_tolerance_and_length_check():
    assert M.win_rate([1.05, 2.0], [1.0, 1.0], tie_tolerance=0.1) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        M.win_rate([1.0], [1.0, 2.0])


def test_summary_and_histogram():
    s = M.summary([1.0, 2.0, 3.0, 4.0])
    assert s["mean"] == 2.5 and s["median"] == 2.5 and s["min"] == 1.0 and s["max"] == 4.0
    assert s["std"] == pytest.approx(math.sqrt(1.25))
    h = M.histogram([0.0, 0.1, 0.5, 1.0, 1.0], bins=2, lo=0.0, hi=1.0)
    assert h.edges == [0.0, 0.5, 1.0]
    assert h.counts == [2, 3]  # 0.5 opens the second bin; the right edge belongs to the last bin
    assert math.isnan(M.summary([])["mean"])


def test_rouge_l_known_values():
    # LCS of "the cat sat on the mat" / "the cat is on the mat" = "the cat on the mat": P = R = 5/6.
    scores = M.rouge_l(["the cat sat on the mat", "completely different words"],
                       ["the cat is on the mat", "the cat is on the mat"])
    assert scores[0] == pytest.approx(5 / 6)
    assert scores[1] == 0.0
    assert M.rouge_l(["Identical text."], ["identical text"])[0] == pytest.approx(1.0)


def test_reward_hacking_alarm_triggers_only_when_reward_up_and_judge_down():
    msg = M.reward_hacking_alarm(reward_base=0.1, reward_tuned=1.5, judge_base=0.6, judge_tuned=0.4)
    assert msg and "REWARD HACKING" in msg and "2210.10760" in msg
    assert M.reward_hacking_alarm(0.1, 1.5, 0.4, 0.6) is None  # both up: a real gain
    assert M.reward_hacking_alarm(1.5, 0.1, 0.6, 0.4) is None  # both down
    assert M.reward_hacking_alarm(0.1, 1.5, 0.5, 0.5) is None  # judge flat
    assert M.reward_hacking_alarm(0.1, 1.5, float("nan"), 0.4) is None  # no judge score


def test_full_kl_matches_closed_form():
    p = torch.tensor([0.5, 0.5])
    q = torch.tensor([0.9, 0.1])
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    got = K.full_kl(p.log(), q.log())  # logits = log-probs up to a constant
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert K.full_kl(p.log() + 3.0, p.log()).item() == pytest.approx(0.0, abs=1e-7)


def test_k1_estimator_is_unbiased_on_samples_from_the_tuned_distribution():
    """Mean log-ratio over tokens sampled from p converges to KL(p || q); over samples from q it does not."""
    p = torch.tensor([0.7, 0.2, 0.1])
    q = torch.tensor([0.2, 0.3, 0.5])
    true_kl = float((p * (p / q).log()).sum())
    g = torch.Generator().manual_seed(0)
    tokens = torch.multinomial(p, 200_000, replacement=True, generator=g)
    logits_p = p.log().expand(len(tokens), 3)
    logits_q = q.log().expand(len(tokens), 3)
    k1, full = K.kl_terms(logits_p[None], logits_q[None], tokens[None])
    assert k1.mean().item() == pytest.approx(true_kl, rel=0.02)
    assert full.mean().item() == pytest.approx(true_kl, rel=1e-5)  # exact at every position
    wrong = torch.multinomial(q, 200_000, replacement=True, generator=g)
    k1_wrong, _ = K.kl_terms(logits_p[None], logits_q[None], wrong[None])
    assert abs(k1_wrong.mean().item() - true_kl) > 0.5


def test_kl_accumulator_masks_padding_and_averages_per_token_and_per_sequence():
    acc = K.KLAccumulator()
    k1 = torch.tensor([[1.0, 2.0, 9.0], [0.5, 9.0, 9.0]])
    full = torch.tensor([[0.1, 0.2, 9.0], [0.3, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    acc.add([4, 1], k1, full, mask)
    r = acc.result()
    assert r.tokens == 3
    assert r.k1_token_mean == pytest.approx((1 + 2 + 0.5) / 3)
    assert r.k1_sequence_mean == pytest.approx((3 + 0.5) / 2)
    assert r.k1_per_sequence == [0.5, 3.0]  # ordered by example index (1, then 4)
    assert r.full_token_mean == pytest.approx(0.6 / 3)
    assert r.full_sequence_mean == pytest.approx(0.3)


def test_logprobs_of_matches_log_softmax():
    logits = torch.randn(4, 7, generator=torch.Generator().manual_seed(1))
    tokens = torch.tensor([0, 3, 6, 2])
    expected = torch.log_softmax(logits, -1).gather(-1, tokens[:, None]).squeeze(-1)
    assert torch.allclose(K.logprobs_of(logits, tokens), expected, atol=1e-6)
