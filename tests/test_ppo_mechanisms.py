"""How the PPO step wires its parts, observed through the trainer's own code on tiny models.

The math helpers (GAE, KL estimators, losses, whitening) are checked against plain loops in
test_ppo_math.py; here each mechanism of the step must show in what the step does: the per-token
rewards it builds (recovered from the returns it hands to `update`), the advantages it whitens, the
coefficient the adaptive controller leaves, which parameters `update` moves, the scores it uses.
Expected values come from independent computations (a plain copy of the base model, the reward
model run on its own), never from the trainer. `scripts/mutation_check.py` breaks each mechanism in
a copy of the tree and checks that these tests fail.
"""

import copy
import dataclasses

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, LlamaConfig

from rlhf.ppo.config import PPOConfig
from rlhf.ppo.outputs import OutputLayout
from rlhf.ppo.policy import SharedBaseModel
from rlhf.ppo.trainer import PPOTrainer
from test_ppo_train import EOS, IdTokenizer

V = 16  # a small vocabulary makes EOS frequent: some responses end, some run out
NORM_MEAN, NORM_STD = 0.3, 2.5  # the reward statistics saved with the test's reward model

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


def tiny_lm(seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True, initializer_range=0.1)  # no pad_token_id: it would zero EOS's embedding
    return AutoModelForCausalLM.from_config(cfg)


def randomize_lora(module, adapters=("policy", "value"), std=0.3, seed=1):
    """Non-zero LoRA B matrices (peft starts them at 0), so adapters change the function."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_B" in name and any(f".{a}." in name for a in adapters):
                p.copy_(torch.randn(p.shape, generator=g) * std)


def shared_model(lm, value_model="head", lora_std=0.3):
    model = SharedBaseModel(lm, lora_rank=8, lora_alpha=16, value_model=value_model,
                            lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    if lora_std:
        randomize_lora(model, std=lora_std)
    return model


def toy_prompts(n=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, V, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def toy_config(**kw):
    base = dict(reinforcement_learning_train_steps=4, batch_size=8, mini_batch_size=4, target_sequence_length=8,
                kl_coeff=0.2, reinforcement_learning_rate_multiplier=30, missing_eos_penalty=0.0,
                checkpoint_every=0, temperature=1.0, ppo_epochs=1, sample_count=0, log_every=100,
                gamma=1.0, lam=1.0)
    base.update(kw)
    return PPOConfig(**base)


def no_signal(rollout):
    """A reward that says nothing about the response."""
    return torch.zeros(rollout.response_ids.shape[0])


def make_trainer(tmp_path, model, reward=no_signal, **kw):
    return PPOTrainer(toy_config(**kw), model, IdTokenizer(), toy_prompts(), reward, OutputLayout(str(tmp_path)))


def record(trainer, method):
    """Wrap a bound method of this trainer instance: calls go through unchanged, their arguments and
    results are kept (cloned tensors), so the test reads what the step really computed."""
    real, calls = getattr(trainer, method), []

    def wrapper(*args, **kwargs):
        keep = [a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args]
        out = real(*args, **kwargs)
        calls.append((keep, out))
        return out

    setattr(trainer, method, wrapper)
    return calls


def plain_logprobs(lm, input_ids, attention_mask, width, temperature):
    """Log-probs of the response tokens under a plain Hugging Face model (no peft anywhere)."""
    pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos).logits
    logits = logits[:, width - 1:-1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, input_ids[:, width:, None]).squeeze(-1)


def whiten_by_hand(x, mask, shift_mean=True):
    n = mask.sum()
    mean = (x * mask).sum() / n
    var = (((x - mean) * mask) ** 2).sum() / (n - 1)
    out = (x - mean) / torch.sqrt(var + 1e-8)
    return (out + (0 if shift_mean else mean)) * mask


def rewards_from_returns(returns, mask):
    """With γ = λ = 1 the returns are the rewards-to-go, so each token's reward is the difference of
    consecutive returns (the value estimates cancel)."""
    nxt = torch.cat([returns[:, 1:] * mask[:, 1:], torch.zeros_like(returns[:, :1])], 1)
    return (returns - nxt) * mask


# -- the rewards, advantages, reference and scores of one step ------------------------------------


@pytest.fixture(scope="module")
def reward_setup(tmp_path_factory):
    """A base checkpoint (vocabulary V) and a reward model trained-format on it: its own LoRA (on
    q/v, random) and score head, with normalization statistics saved as the reward step saves them."""
    from peft import LoraConfig, get_peft_model
    from rlhf.models import load_tokenizer
    from rlhf.reward import outputs
    root = tmp_path_factory.mktemp("ppo-mech")
    tiny_lm().save_pretrained(root / "base")
    rm = AutoModelForSequenceClassification.from_pretrained(root / "base", num_labels=1)
    rm = get_peft_model(rm, LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                       modules_to_save=["score"]))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for n, p in rm.named_parameters():
            if "lora_B" in n or ("score" in n and "modules_to_save" in n):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    outputs.save(rm, load_tokenizer(), str(root / "rm"), {
        "base_model": str(root / "base"), "normalization": {"mean": NORM_MEAN, "std": NORM_STD, "pairs": 8}})
    return root, rm.eval()


def _policy_with_reward(root, value_model="head"):
    from rlhf.ppo.reward import SharedBaseReward
    from rlhf.reward import outputs
    lm = AutoModelForCausalLM.from_pretrained(root / "base")
    plain = copy.deepcopy(lm)
    model = shared_model(lm, value_model=value_model)
    reward = SharedBaseReward(model, str(root / "rm"), outputs.read_info(str(root / "rm")))
    return model, plain, reward


def expected_scores(rm, r, penalty):
    """What the step should use as the score: the reward model on its own, normalized with the
    statistics saved with it, minus the penalty for responses without EOS."""
    from rlhf.reward.modeling import score_sequences
    with torch.no_grad():
        raw = score_sequences(rm, r.input_ids, r.attention_mask)
    return (raw - NORM_MEAN) / NORM_STD - penalty * (~r.ended).float()


@pytest.mark.parametrize("value_model,whiten_rewards", [("head", False), ("head", True), ("adapter", False)])
def test_step_rewards_are_minus_beta_kl_plus_normalized_score_on_the_last_token(
        reward_setup, tmp_path, value_model, whiten_rewards):
    root, rm = reward_setup
    model, plain, reward = _policy_with_reward(root, value_model)
    beta, penalty = 0.2, 0.7
    trainer = PPOTrainer(toy_config(kl_coeff=beta, missing_eos_penalty=penalty, whiten_rewards=whiten_rewards),
                         model, IdTokenizer(), toy_prompts(), reward, OutputLayout(str(tmp_path)))
    rollouts, updates = record(trainer, "rollout"), record(trainer, "update")
    torch.manual_seed(3)
    metrics = trainer.ppo_step()
    r = rollouts[0][1]
    (_, advantages, returns), _ = updates[0]
    mask = r.response_mask
    assert bool(r.ended.any()) and not bool(r.ended.all())  # both kinds of row, for the EOS penalty

    # the reference: the plain base model, with no adapter at all (policy, value or reward)
    kl = (r.logprobs - plain_logprobs(plain, r.input_ids, r.attention_mask, r.prompt_width, 1.0)) * mask
    assert kl.abs().max() > 0.05  # the policy adapter is not the reference
    scores = expected_scores(rm, r, penalty)
    rewards = -beta * kl
    rewards[torch.arange(len(scores)), r.lengths - 1] += scores
    if whiten_rewards:  # scale only: the mean stays, so whitening never flips a reward's sign
        rewards = whiten_by_hand(rewards, mask, shift_mean=False)
    torch.testing.assert_close(rewards_from_returns(returns, mask), rewards, atol=2e-4, rtol=1e-4)
    assert metrics["reward/mean"] == pytest.approx(scores.mean().item(), abs=1e-4)
    assert metrics["policy/kl"] == pytest.approx(kl.sum(1).mean().item(), abs=1e-4)

    # advantages: GAE's (returns − values), always whitened over the real tokens
    raw_advantages = (returns - r.values) * mask
    torch.testing.assert_close(advantages, whiten_by_hand(raw_advantages, mask), atol=1e-4, rtol=1e-4)


def test_reward_scores_come_from_the_reward_adapter_not_the_policy(reward_setup, tmp_path):
    root, rm = reward_setup
    model, _, reward = _policy_with_reward(root)
    trainer = make_trainer(tmp_path, model, reward, missing_eos_penalty=0.0)
    torch.manual_seed(4)
    r = trainer.rollout(list(range(8)))
    before = trainer.score(r)
    torch.testing.assert_close(before, expected_scores(rm, r, 0.0), atol=1e-4, rtol=1e-4)
    randomize_lora(model, adapters=("policy",), std=0.5, seed=9)  # a very different policy
    torch.testing.assert_close(trainer.score(r), before, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("penalty", [0.0, 1.5])
def test_missing_eos_penalty_lowers_only_responses_without_eos(tmp_path, penalty):
    def raw(rollout):
        return torch.linspace(-1, 1, rollout.response_ids.shape[0])

    trainer = make_trainer(tmp_path, shared_model(tiny_lm()), raw, missing_eos_penalty=penalty)
    torch.manual_seed(5)
    r = trainer.rollout(list(range(16)))
    assert bool(r.ended.any()) and not bool(r.ended.all())
    want = raw(r) - penalty * (~r.ended).float()
    torch.testing.assert_close(trainer.score(r), want)


# -- the KL penalty and its controller ------------------------------------------------------------


def exact_kl(model, plain, ids, mask, width):
    """Mean over response positions of the exact KL(policy || base) of the next-token distributions."""
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        p, q = (torch.log_softmax(lm(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, width - 1:-1], -1)
                for lm in (model.peft, plain))
    return (p.exp() * (p - q)).sum(-1).mean().item()


def test_kl_penalty_keeps_the_policy_near_the_reference(tmp_path):
    """A reward of pure noise, the policy starting at the reference: the noise alone drives it away;
    with β > 0 the per-token penalty holds it clearly closer (same seed, same noise)."""
    kls = {}
    for beta in (0.0, 6.0):
        lm = tiny_lm()
        plain = copy.deepcopy(lm)
        model = shared_model(lm, lora_std=0)  # peft's init: the policy is the reference
        g = torch.Generator().manual_seed(100)
        noise = lambda rollout: torch.randn(rollout.response_ids.shape[0], generator=g)  # noqa: E731
        trainer = make_trainer(tmp_path / str(beta), model, noise, kl_coeff=beta, ppo_epochs=2, batch_size=16,
                               mini_batch_size=8)
        torch.manual_seed(0)
        probe = trainer.rollout(list(range(16)))  # fixed sequences to measure the KL on
        for _ in range(6):
            trainer.ppo_step()
        kls[beta] = exact_kl(model, plain, probe.input_ids, probe.attention_mask, probe.prompt_width)
    assert kls[0.0] > 1e-3, kls  # the noise did move the unpenalized policy
    assert kls[6.0] < 0.7 * kls[0.0], kls  # seen: 0.16-0.45 of it over model/sampling seeds 0-3


@pytest.mark.parametrize("side", ["kl_above_target", "kl_below_target"])
def test_adaptive_kl_moves_the_coefficient_toward_the_target(tmp_path, side):
    beta, horizon, batch = 0.1, 80, 8
    target = 1e-3 if side == "kl_above_target" else 1e3
    trainer = make_trainer(tmp_path, shared_model(tiny_lm()), adaptive_kl=True, kl_coeff=beta, kl_target=target,
                           kl_horizon=horizon, kl_estimator="k3", batch_size=batch)
    torch.manual_seed(7)
    m = trainer.ppo_step()
    assert m["policy/kl"] > 0.01  # the policy adapter is away from the reference
    if side == "kl_above_target":
        assert m["objective/kl_coeff"] > beta  # too far from the reference: penalize more
    else:
        assert m["objective/kl_coeff"] < beta  # closer than needed: penalize less
    e = min(max(m["policy/kl"] / target - 1, -0.2), 0.2)  # Ziegler et al. 2019, §2.2
    assert m["objective/kl_coeff"] == pytest.approx(beta * (1 + e * batch / horizon), rel=1e-9)
    assert trainer.kl_ctl.value == m["objective/kl_coeff"]


# -- what `update` does with given advantages and returns -----------------------------------------


def _rollout_and_current(trainer):
    torch.manual_seed(8)
    r = trainer.rollout(list(range(8)))
    with torch.no_grad():
        lp, ent, values = trainer.model.response_pass(r.input_ids, r.attention_mask, r.prompt_width, 1.0,
                                                      with_entropy=True)
    return r, lp * r.response_mask, ent, values


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _moved(model, before):
    return sorted(n for n, p in model.named_parameters() if n in before and not torch.equal(before[n], p.detach()))


@pytest.mark.parametrize("ratio_outside", [True, False])
def test_policy_ratio_clip_stops_the_update_outside_the_trust_region(tmp_path, ratio_outside):
    """Every token's ratio beyond 1 ± ε on the side its advantage pushes: the clipped objective is
    flat there, so the step leaves the policy as it is; inside the range it moves it."""
    trainer = make_trainer(tmp_path, shared_model(tiny_lm()), vf_coef=0.0, ent_coef=0.0, ppo_epochs=2, cliprange=0.2)
    r, lp, _, _ = _rollout_and_current(trainer)
    mask = r.response_mask
    sign = torch.where(torch.arange(8)[:, None] % 2 == 0, 1.0, -1.0).expand_as(mask)  # A > 0 and A < 0 rows
    advantages = sign * mask
    shift = sign * mask if ratio_outside else 0.0  # old = new − 1 (ratio e) where A > 0, new + 1 (1/e) where A < 0
    old = dataclasses.replace(r, logprobs=(lp - shift) * mask)
    before = _params(trainer.model)
    trainer.update(old, advantages, torch.zeros_like(mask))
    moved = _moved(trainer.model, before)
    if ratio_outside:
        assert moved == []
    else:
        assert any(".policy." in n for n in moved)


@pytest.mark.parametrize("value_outside", [True, False])
def test_value_clip_stops_the_value_update_beyond_the_clip_range(tmp_path, value_outside):
    """The rollout's values 1.0 above the current ones, returns 0.1 above: the clipped prediction
    (old − 0.2) is further from the returns, so the clipped loss is flat and nothing moves; with the
    old values equal to the current ones the value loss moves the head."""
    trainer = make_trainer(tmp_path, shared_model(tiny_lm()), vf_coef=1.0, ent_coef=0.0, ppo_epochs=2,
                           cliprange_value=0.2)
    r, _, _, values = _rollout_and_current(trainer)
    mask = r.response_mask
    old_values = (values + (1.0 if value_outside else 0.0)) * mask
    returns = (values + 0.1) * mask
    before = _params(trainer.model)
    trainer.update(dataclasses.replace(r, values=old_values), torch.zeros_like(mask), returns)
    moved = _moved(trainer.model, before)
    if value_outside:
        assert moved == []
    else:
        assert "value_head.weight" in moved


def test_entropy_bonus_raises_the_policy_entropy(tmp_path):
    """No advantage and no value loss: only the entropy term moves the policy, and it must make the
    policy more uncertain (c2 > 0 is a bonus, not a penalty)."""
    trainer = make_trainer(tmp_path, shared_model(tiny_lm()), vf_coef=0.0, ent_coef=0.5, ppo_epochs=2)
    r, _, ent_before, _ = _rollout_and_current(trainer)
    mask = r.response_mask
    trainer.update(r, torch.zeros_like(mask), torch.zeros_like(mask))
    with torch.no_grad():
        _, ent_after, _ = trainer.model.response_pass(r.input_ids, r.attention_mask, r.prompt_width, 1.0,
                                                      with_entropy=True)
    before, after = (ent_before * mask).sum() / mask.sum(), (ent_after * mask).sum() / mask.sum()
    assert after > before + 0.01, (before, after)
