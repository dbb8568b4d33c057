"""Precision and determinism of the PPO step: the old log-probs and values are the training pass's
own (the first minibatch's probability ratio is exactly 1, in fp32 and bf16), LoRA dropout acts in
the update's passes only, and fp16 is refused with a message naming bf16/fp32."""

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from rlhf.errors import UserError
from rlhf.ppo import trainer as trainer_module
from rlhf.ppo.config import PPOConfig
from rlhf.ppo.outputs import OutputLayout
from rlhf.ppo.policy import SharedBaseModel
from rlhf.ppo.trainer import PPOTrainer
from rlhf.reward.config import RewardConfig
from test_ppo_train import IdTokenizer, shorter_is_better, toy_prompts

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


def tiny_policy(dtype=torch.float32, lora_dropout=0.0, seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=16, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True, initializer_range=0.1)
    lm = AutoModelForCausalLM.from_config(cfg).to(dtype)
    model = SharedBaseModel(lm, lora_dropout=lora_dropout, lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # a policy away from the reference, with a non-zero value head
        for name, p in model.named_parameters():
            if "lora_B" in name or name.startswith("value_head."):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def config(**kw):
    base = dict(reinforcement_learning_train_steps=2, batch_size=8, mini_batch_size=4, gradient_accumulation_steps=2,
                target_sequence_length=8, kl_coeff=0.1, reinforcement_learning_rate_multiplier=30,
                missing_eos_penalty=0, checkpoint_every=0, temperature=0.7, ppo_epochs=2, sample_count=0,
                log_every=100)
    base.update(kw)
    return PPOConfig(**base)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_first_minibatch_ratio_is_one_and_old_values_are_the_training_pass_values(tmp_path, monkeypatch, dtype):
    """Observed through the step's real update: the inputs of its policy and value losses (the
    loss functions themselves run unchanged)."""
    seen = []

    def recording(loss_fn):
        def wrapper(new, old, *rest):
            seen.append((loss_fn.__name__, new.detach().clone(), old.clone(), rest[-2].clone()))
            return loss_fn(new, old, *rest)
        return wrapper

    monkeypatch.setattr(trainer_module, "policy_loss", recording(trainer_module.policy_loss))
    monkeypatch.setattr(trainer_module, "value_loss", recording(trainer_module.value_loss))
    model = tiny_policy(dtype)
    trainer = PPOTrainer(config(), model, IdTokenizer(), toy_prompts(), shorter_is_better, OutputLayout(str(tmp_path)))
    torch.manual_seed(3)
    trainer.ppo_step()
    # the first minibatch (two micro-batches, before any optimizer step)
    for name, new, old, mask in seen[:4]:
        on = mask > 0
        assert on.any()
        if name == "policy_loss":
            ratio = torch.exp(new - old)[on]
            assert (ratio - 1).abs().max().item() <= 1e-6, (ratio - 1).abs().max()
        else:
            assert (new - old)[on].abs().max().item() <= 1e-6
    assert [s[0] for s in seen[:4]] == ["policy_loss", "value_loss"] * 2


def test_lora_dropout_acts_in_the_update_passes_only(tmp_path):
    model = tiny_policy(lora_dropout=0.5)
    trainer = PPOTrainer(config(lora_dropout=0.5), model, IdTokenizer(), toy_prompts(), shorter_is_better,
                         OutputLayout(str(tmp_path)))
    torch.manual_seed(4)
    r = trainer.rollout(list(range(8)))
    sampled = r.logprobs.clone()
    # rollouts, old log-probs and the reference: no dropout (repeatable, equal to the cached loop)
    trainer.old_policy(r)
    first = (r.logprobs.clone(), r.values.clone())
    trainer.old_policy(r)
    assert torch.equal(first[0], r.logprobs) and torch.equal(first[1], r.values)
    torch.testing.assert_close(sampled, r.logprobs, atol=1e-5, rtol=1e-5)
    ref = [model.reference_logprobs(r.input_ids, r.attention_mask, r.prompt_width, 0.7) for _ in range(2)]
    assert torch.equal(*ref)
    # the update's passes: two forwards on the same minibatch differ (dropout masks)
    idx = torch.arange(4)
    mask = r.response_mask[idx]
    losses = [trainer._loss(r.input_ids[idx], r.attention_mask[idx], r, idx, mask, mask, r.prompt_width)[0]
              for _ in range(2)]
    assert not torch.equal(*losses)
    assert not any(m.training for m in model.modules())  # dropout off again after the pass


def test_without_lora_dropout_the_update_passes_are_repeatable(tmp_path):
    model = tiny_policy(lora_dropout=0.0)
    trainer = PPOTrainer(config(), model, IdTokenizer(), toy_prompts(), shorter_is_better, OutputLayout(str(tmp_path)))
    torch.manual_seed(4)
    r = trainer.rollout(list(range(8)))
    trainer.old_policy(r)
    idx = torch.arange(4)
    mask = r.response_mask[idx]
    losses = [trainer._loss(r.input_ids[idx], r.attention_mask[idx], r, idx, mask, mask, r.prompt_width)[0]
              for _ in range(2)]
    assert torch.equal(*losses)


def test_fp16_is_refused_for_training_with_a_message_naming_bf16_and_fp32():
    for cfg in (PPOConfig(dtype="fp16"), RewardConfig(dtype="fp16")):
        with pytest.raises(UserError, match=r"--dtype 'fp16'.*loss scaling.*bf16.*fp32"):
            cfg.validate(inputs=False)
    with pytest.raises(UserError, match=r"fp16.*bf16.*fp32"):
        tiny_policy(torch.float16)
