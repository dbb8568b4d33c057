"""PPO math against plain Python reference loops (one token at a time, no vectorization)."""

import math

import pytest
import torch

from rlhf.ppo.gae import gae
from rlhf.ppo.kl import AdaptiveKLController, FixedKLController, kl_penalty, make_controller
from rlhf.ppo.logprobs import token_logprobs
from rlhf.ppo.losses import entropy_from_logits, entropy_loss, policy_loss, value_loss
from rlhf.ppo.whiten import masked_mean, masked_var, masked_whiten


def _batch(seed=0, b=4, t=7):
    g = torch.Generator().manual_seed(seed)
    lengths = [7, 3, 1, 5][:b]
    mask = torch.tensor([[1.0 if j < n else 0.0 for j in range(t)] for n in lengths])
    return g, mask, lengths


def _valid(x, mask):
    return [x[i, j].item() for i in range(x.shape[0]) for j in range(x.shape[1]) if mask[i, j] > 0]


def test_gae_matches_reference_loop():
    g, mask, lengths = _batch()
    rewards = torch.randn(4, 7, generator=g, dtype=torch.float64)
    values = torch.randn(4, 7, generator=g, dtype=torch.float64)
    gamma, lam = 0.97, 0.9
    adv, ret = gae(rewards, values, mask, gamma, lam)
    for i, n in enumerate(lengths):
        for t in range(n):
            # A_t = sum_l (γλ)^l δ_{t+l}, δ_k = r_k + γ V_{k+1} − V_k, V beyond the last token = 0
            expected = 0.0
            for k in range(t, n):
                v_next = values[i, k + 1].item() if k + 1 < n else 0.0
                delta = rewards[i, k].item() + gamma * v_next - values[i, k].item()
                expected += (gamma * lam) ** (k - t) * delta
            assert adv[i, t].item() == pytest.approx(expected, abs=1e-12)
            assert ret[i, t].item() == pytest.approx(expected + values[i, t].item(), abs=1e-12)
        assert torch.all(adv[i, n:] == 0) and torch.all(ret[i, n:] == 0)


def test_gae_lambda_one_gamma_one_is_reward_to_go_minus_value():
    _, mask, lengths = _batch()
    rewards = torch.arange(28, dtype=torch.float64).reshape(4, 7)
    values = torch.full((4, 7), 0.5, dtype=torch.float64)
    adv, _ = gae(rewards, values, mask, 1.0, 1.0)
    for i, n in enumerate(lengths):
        for t in range(n):
            to_go = sum(rewards[i, k].item() for k in range(t, n))
            assert adv[i, t].item() == pytest.approx(to_go - 0.5)


def test_masked_statistics_and_whitening_match_reference():
    g, mask, _ = _batch(1)
    x = torch.randn(4, 7, generator=g, dtype=torch.float64) * 3 + 2
    xs = _valid(x, mask)
    n = len(xs)
    mean = sum(xs) / n
    var = sum((v - mean) ** 2 for v in xs) / (n - 1)
    assert masked_mean(x, mask).item() == pytest.approx(mean)
    assert masked_var(x, mask).item() == pytest.approx(var)
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(var * (n - 1) / n)
    w = masked_whiten(x, mask)
    ws = _valid(w, mask)
    for got, v in zip(ws, xs):
        assert got == pytest.approx((v - mean) / math.sqrt(var + 1e-8))
    assert torch.all(w[mask == 0] == 0)
    kept = masked_whiten(x, mask, shift_mean=False)
    for got, v in zip(_valid(kept, mask), xs):
        assert got == pytest.approx((v - mean) / math.sqrt(var + 1e-8) + mean)
    # row means along a dim
    rows = masked_mean(x, mask, dim=1)
    for i in range(4):
        vals = [x[i, j].item() for j in range(7) if mask[i, j] > 0]
        assert rows[i].item() == pytest.approx(sum(vals) / len(vals))


def test_policy_loss_matches_reference_loop():
    g, mask, _ = _batch(2)
    old = -torch.rand(4, 7, generator=g, dtype=torch.float64) * 3
    new = old + torch.randn(4, 7, generator=g, dtype=torch.float64) * 0.4
    adv = torch.randn(4, 7, generator=g, dtype=torch.float64)
    eps = 0.2
    loss, stats = policy_loss(new, old, adv, mask, eps)
    terms, clipped, kls = [], [], []
    for i in range(4):
        for t in range(7):
            if mask[i, t] == 0:
                continue
            r = math.exp(new[i, t].item() - old[i, t].item())
            a = adv[i, t].item()
            unclipped_term, clipped_term = -a * r, -a * min(max(r, 1 - eps), 1 + eps)
            terms.append(max(unclipped_term, clipped_term))
            clipped.append(1.0 if clipped_term > unclipped_term else 0.0)
            kls.append((r - 1) - math.log(r))
    assert loss.item() == pytest.approx(sum(terms) / len(terms))
    assert stats["clipfrac"].item() == pytest.approx(sum(clipped) / len(clipped))
    assert 0 < stats["clipfrac"].item() < 1  # the example exercises both branches
    assert stats["approx_kl"].item() == pytest.approx(sum(kls) / len(kls))


def test_policy_loss_gradient_is_zero_where_clipped():
    # advantage > 0 and ratio above 1+ε: the clipped branch is active and carries no gradient
    new = torch.tensor([[0.5, 0.0]], requires_grad=True)
    old = torch.zeros(1, 2)
    loss, _ = policy_loss(new, old, torch.ones(1, 2), torch.ones(1, 2), 0.2)
    loss.backward()
    assert new.grad[0, 0].item() == 0.0 and new.grad[0, 1].item() != 0.0


def test_value_loss_matches_reference_loop():
    g, mask, _ = _batch(3)
    old = torch.randn(4, 7, generator=g, dtype=torch.float64)
    new = old + torch.randn(4, 7, generator=g, dtype=torch.float64) * 0.5
    ret = torch.randn(4, 7, generator=g, dtype=torch.float64)
    eps = 0.2
    loss, stats = value_loss(new, old, ret, mask, eps)
    terms, clipped = [], []
    for i in range(4):
        for t in range(7):
            if mask[i, t] == 0:
                continue
            v, v0, r = new[i, t].item(), old[i, t].item(), ret[i, t].item()
            vc = v0 + min(max(v - v0, -eps), eps)
            terms.append(max((v - r) ** 2, (vc - r) ** 2))
            clipped.append(1.0 if (vc - r) ** 2 > (v - r) ** 2 else 0.0)
    assert loss.item() == pytest.approx(0.5 * sum(terms) / len(terms))
    assert stats["clipfrac"].item() == pytest.approx(sum(clipped) / len(clipped))


def test_entropy_matches_reference_loop():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 5, 11, generator=g, dtype=torch.float64) * 2
    ent = entropy_from_logits(logits)
    for i in range(3):
        for t in range(5):
            z = [logits[i, t, k].item() for k in range(11)]
            m = max(z)
            s = sum(math.exp(v - m) for v in z)
            p = [math.exp(v - m) / s for v in z]
            assert ent[i, t].item() == pytest.approx(-sum(q * math.log(q) for q in p))
    mask = torch.ones(3, 5)
    assert entropy_loss(ent, mask).item() == pytest.approx(-ent.mean().item())


def test_kl_estimators_match_definitions_and_k3_is_unbiased():
    lp = torch.tensor([-1.0, -2.0, -0.1], dtype=torch.float64)
    ref = torch.tensor([-1.5, -1.0, -0.1], dtype=torch.float64)
    k1 = kl_penalty(lp, ref, "k1")
    k3 = kl_penalty(lp, ref, "k3")
    for i in range(3):
        log_r = ref[i].item() - lp[i].item()  # r = π_ref / π
        assert k1[i].item() == pytest.approx(-log_r)
        assert k3[i].item() == pytest.approx(math.exp(log_r) - 1 - log_r)
        assert k3[i].item() >= 0
    with pytest.raises(ValueError):
        kl_penalty(lp, ref, "k2")
    # Monte-Carlo: both estimators average to the exact KL(p || q) under samples from p
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(6, generator=g, dtype=torch.float64), 0)
    q = torch.softmax(torch.randn(6, generator=g, dtype=torch.float64), 0)
    exact = (p * (p.log() - q.log())).sum().item()
    x = torch.multinomial(p, 200_000, replacement=True, generator=g)
    for est in ("k1", "k3"):
        assert kl_penalty(p.log()[x], q.log()[x], est).mean().item() == pytest.approx(exact, rel=0.03)


def test_adaptive_kl_controller_follows_ziegler_update():
    ctl = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    beta = 0.2
    for kl in [1.0, 6.0, 7.0, 12.0, 30.0, 0.0]:
        ctl.update(kl, n_steps=64)
        e = min(max(kl / 6.0 - 1, -0.2), 0.2)
        beta *= 1 + e * 64 / 10000
        assert ctl.value == pytest.approx(beta, rel=1e-12)
    # above target β grows, below it shrinks
    up, down = AdaptiveKLController(0.1, 6.0, 100), AdaptiveKLController(0.1, 6.0, 100)
    up.update(10.0, 10)
    down.update(1.0, 10)
    assert up.value > 0.1 > down.value
    fixed = FixedKLController(0.3)
    fixed.update(100.0, 64)
    assert fixed.value == 0.3
    restored = make_controller(1.0, True, 6.0, 100)
    restored.load_state_dict(up.state_dict())
    assert restored.value == up.value


@pytest.mark.parametrize("temperature,chunk", [(1.0, None), (0.7, 3)])
def test_chunked_token_logprobs_equal_full_log_softmax(temperature, chunk):
    g = torch.Generator().manual_seed(5)
    h = torch.randn(2, 7, 16, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 16, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 50, (2, 7), generator=g)
    lp, ent = token_logprobs(h, w, y, temperature=temperature, with_entropy=True, chunk_rows=chunk)
    z = (h @ w.t()) / temperature
    ref_lp = torch.log_softmax(z, -1).gather(-1, y[..., None]).squeeze(-1)
    ref_ent = entropy_from_logits(z)
    torch.testing.assert_close(lp, ref_lp)
    torch.testing.assert_close(ent, ref_ent)
    a = torch.randn(2, 7, generator=g, dtype=torch.float64)
    b = torch.randn(2, 7, generator=g, dtype=torch.float64)
    got = torch.autograd.grad((lp * a).sum() + (ent * b).sum(), [h, w])
    want = torch.autograd.grad((ref_lp * a).sum() + (ref_ent * b).sum(), [h, w], retain_graph=True)
    for x, y_ in zip(got, want):
        torch.testing.assert_close(x, y_)
    lp_only, none = token_logprobs(h, w, y, temperature=temperature, chunk_rows=chunk)
    assert none is None
    torch.testing.assert_close(torch.autograd.grad((lp_only * a).sum(), h)[0],
                               torch.autograd.grad((ref_lp * a).sum(), h)[0])
