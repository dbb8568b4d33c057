"""The policy's log-probs are those of the model's own distribution: the fused head applies what the
model's output layer applies (bias, logit scaling, soft-capping), checked against the model's own
`forward(...).logits` on tiny random Llama, Gemma 2, Phi and Granite models, in sampling (the
rollout's decoding loop) and scoring (the training pass); a head it cannot reproduce falls back to
the model's own logits."""

import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma2Config, GraniteConfig, LlamaConfig, LlamaForCausalLM, PhiConfig

from rlhf.ppo.logprobs import LogitHead, token_logprobs
from rlhf.ppo.policy import SharedBaseModel
from rlhf.ppo.rollout import generate

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest

V, EOS = 64, 2
SMALL = dict(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128, pad_token_id=EOS, eos_token_id=EOS,
             bos_token_id=1)
CONFIGS = {
    "llama": lambda: LlamaConfig(**SMALL, tie_word_embeddings=True),
    # a small cap, so that capping changes the distribution of a tiny random model
    "gemma2": lambda: Gemma2Config(**SMALL, head_dim=16, final_logit_softcapping=0.5),
    "phi": lambda: PhiConfig(**SMALL),  # lm_head has a bias
    "granite": lambda: GraniteConfig(**SMALL, logits_scaling=0.25),
}
PROMPTS = torch.tensor([[2, 2, 5, 6, 7], [8, 9, 10, 11, 12], [2, 2, 2, 40, 41]])
MASK = (torch.arange(5) >= torch.tensor([[2], [0], [3]])).long()


def build(kind, seed=0):
    torch.manual_seed(seed)
    lm = AutoModelForCausalLM.from_config(CONFIGS[kind]())
    with torch.no_grad():
        head = lm.get_output_embeddings()
        head.weight.normal_(0, 0.5)  # logits large enough for the cap / the scale to matter
        if head.bias is not None:
            head.bias.normal_(0, 2.0)
    model = SharedBaseModel(lm, lora_target_modules=["q_proj", "v_proj"])
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def own_logprobs(model, input_ids, attention_mask, width, temperature):
    """Log-probs of the response tokens from the model's own forward logits (policy adapter on)."""
    pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model.causal_lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos).logits
    z = logits[:, width - 1:-1].float() / temperature
    return torch.log_softmax(z, -1).gather(-1, input_ids[:, width:, None]).squeeze(-1)


def check_sampling_and_scoring(model, temperature=0.7):
    torch.manual_seed(2)
    r = generate(model, PROMPTS, MASK, 8, eos_token_id=EOS, pad_token_id=EOS, temperature=temperature)
    m = r.response_mask
    want = own_logprobs(model, r.input_ids, r.attention_mask, r.prompt_width, temperature) * m
    torch.testing.assert_close(r.logprobs, want, atol=1e-4, rtol=1e-4)  # sampling: KV-cached loop
    with torch.no_grad():
        lp, _, _ = model.response_pass(r.input_ids, r.attention_mask, r.prompt_width, temperature)
    torch.testing.assert_close(lp * m, want, atol=1e-5, rtol=1e-5)  # scoring: the training pass
    return r


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_fused_head_gives_the_models_own_logprobs(kind):
    model = build(kind)
    assert model.head is not None  # the fused path, not the fallback
    check_sampling_and_scoring(model)
    plain = LogitHead(model.head.weight)  # what the head alone (no bias, scale, cap) would give
    if kind != "llama":
        h = torch.randn(4, 64)
        assert (model.head.logits(h) - plain.logits(h)).abs().max() > 0.1


class PostScaledLlama(LlamaForCausalLM):
    """A model whose forward post-processes its logits in a way no config attribute says."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 3.0 + 1.0 * out.logits.roll(1, -1)
        return out


def test_a_head_it_cannot_reproduce_falls_back_to_the_models_own_logits():
    torch.manual_seed(0)
    model = SharedBaseModel(PostScaledLlama(CONFIGS["llama"]()), lora_target_modules=["q_proj", "v_proj"])
    assert model.head is None
    r = check_sampling_and_scoring(model)
    # the fallback trains too: gradients reach the policy adapter through the model's own logits
    lp, _, values = model.response_pass(r.input_ids, r.attention_mask, r.prompt_width, 0.7)
    ((lp * r.response_mask).sum() + values.sum()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)


@pytest.mark.parametrize("bias,scale,softcap", [(True, 1.0, None), (False, 0.25, None), (True, 1.5, 2.0)])
def test_fused_head_gradients_equal_autograd_through_the_full_logits(bias, scale, softcap):
    g = torch.Generator().manual_seed(3)
    h = torch.randn(2, 7, 16, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 16, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(50, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    y = torch.randint(0, 50, (2, 7), generator=g)
    head = LogitHead(w, b, scale, softcap)
    lp, ent = token_logprobs(h, head, y, temperature=0.7, with_entropy=True, chunk_rows=3)
    z = (h @ w.t() + (b if bias else 0)) * scale
    z = (softcap * torch.tanh(z / softcap) if softcap else z) / 0.7
    log_p = torch.log_softmax(z, -1)
    ref_lp, ref_ent = log_p.gather(-1, y[..., None]).squeeze(-1), -(log_p.exp() * log_p).sum(-1)
    torch.testing.assert_close(lp, ref_lp)
    torch.testing.assert_close(ent, ref_ent)
    a, c = torch.randn(2, 7, generator=g, dtype=torch.float64), torch.randn(2, 7, generator=g, dtype=torch.float64)
    inputs = [h, w] + ([b] if bias else [])
    got = torch.autograd.grad((lp * a).sum() + (ent * c).sum(), inputs)
    want = torch.autograd.grad((ref_lp * a).sum() + (ref_ent * c).sum(), inputs)
    for x, x_ref in zip(got, want):
        torch.testing.assert_close(x, x_ref)
