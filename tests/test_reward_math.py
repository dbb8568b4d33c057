"""Bradley–Terry loss and preference metrics against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.reward.losses import bradley_terry_loss
from rlhf.reward.metrics import preference_metrics, roc_curve


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_bradley_terry_loss_by_hand():
    rc, rr = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([1.0, 1.5, -3.0])
    loss, parts = bradley_terry_loss(rc, rr)
    by_hand = -(math.log(_sigmoid(1.0)) + math.log(_sigmoid(-1.0)) + math.log(_sigmoid(2.0))) / 3
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)
    assert parts["loss/bt"].item() == pytest.approx(by_hand, rel=1e-6) and "loss/center" not in parts


def test_margin_and_centering_by_hand():
    rc, rr = torch.tensor([2.0, 0.5]), torch.tensor([1.0, 1.5])
    loss, parts = bradley_terry_loss(rc, rr, margin=0.5, center_coefficient=0.1)
    bt = -(math.log(_sigmoid(1.0 - 0.5)) + math.log(_sigmoid(-1.0 - 0.5))) / 2
    center = 0.1 * ((2.0 + 1.0) ** 2 + (0.5 + 1.5) ** 2) / 2
    assert parts["loss/bt"].item() == pytest.approx(bt, rel=1e-6)
    assert parts["loss/center"].item() == pytest.approx(center, rel=1e-6)
    assert loss.item() == pytest.approx(bt + center, rel=1e-6)


def test_loss_gradient_pushes_chosen_up_and_rejected_down():
    rc = torch.tensor([0.0], requires_grad=True)
    rr = torch.tensor([0.0], requires_grad=True)
    bradley_terry_loss(rc, rr)[0].backward()
    assert rc.grad.item() == pytest.approx(-0.5) and rr.grad.item() == pytest.approx(0.5)


def test_preference_metrics_by_hand():
    chosen = [3.0, 1.0, 0.0, 2.0]
    rejected = [1.0, 2.0, -1.0, 2.0]
    m = preference_metrics(chosen, rejected, prefix="heldout")
    # pairwise: 3>1 yes, 1>2 no, 0>-1 yes, 2>2 no (tie) -> 2/4
    assert m["heldout/accuracy"] == 0.5
    assert m["heldout/margin"] == pytest.approx((2 - 1 + 1 + 0) / 4)
    bt = [-math.log(_sigmoid(d)) for d in (2, -1, 1, 0)]
    assert m["heldout/loss"] == pytest.approx(sum(bt) / 4)
    # pointwise at the mean of all 8 rewards (10/8 = 1.25): chosen above: 3, 2 -> tp 2, fn 2;
    # rejected above: 2, 2 -> fp 2, tn 2
    assert m["heldout/confusion_matrix"] == [[2, 2], [2, 2]]
    assert m["heldout/precision"] == 0.5 and m["heldout/recall"] == 0.5 and m["heldout/f1"] == 0.5
    # AUC: over the 16 (chosen, rejected) combinations, wins + ties/2
    wins = sum((c > r) + 0.5 * (c == r) for c in chosen for r in rejected)
    assert m["heldout/roc_auc"] == pytest.approx(wins / 16)
    assert m["heldout/pairs"] == 4


def test_perfect_and_inverted_reward_models():
    perfect = preference_metrics([5, 6, 7], [0, 1, 2])
    assert perfect["eval/accuracy"] == 1 and perfect["eval/roc_auc"] == 1 and perfect["eval/f1"] == 1
    assert perfect["eval/confusion_matrix"] == [[3, 0], [0, 3]]
    inverted = preference_metrics([0, 1, 2], [5, 6, 7])
    assert inverted["eval/accuracy"] == 0 and inverted["eval/roc_auc"] == 0
    assert inverted["eval/precision"] == 0 and inverted["eval/recall"] == 0 and inverted["eval/f1"] == 0


def test_roc_curve_is_monotone_and_spans_the_corners():
    fpr, tpr, thresholds = roc_curve([0.9, 0.8, 0.3, 0.6], [0.1, 0.7, 0.2, 0.4])
    assert thresholds == sorted(thresholds, reverse=True)
    assert fpr == sorted(fpr) and tpr == sorted(tpr)
    assert (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert fpr[0] == 0.0 and tpr[0] == 0.25  # at the highest reward only the best chosen passes


def test_metrics_reject_mismatched_inputs():
    with pytest.raises(ValueError):
        preference_metrics([1.0], [1.0, 2.0])
