"""The shared-base model, rollout and sampling: reference = base, rollout log-probs = training
log-probs, the reward adapter scores like the reward model alone, sampling filters."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, LlamaConfig

from rlhf.ppo.policy import SharedBaseModel
from rlhf.ppo.rollout import filter_logits, generate, sample

V = 512


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


def tiny_lm(seed=0, vocab=V):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True, pad_token_id=2, bos_token_id=1, eos_token_id=2)
    return AutoModelForCausalLM.from_config(cfg)


def randomize_lora(model, std=0.3):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, std)


PROMPTS = torch.tensor([[2, 2, 5, 6, 7], [8, 9, 10, 11, 12], [2, 2, 2, 40, 41]])
MASK = (torch.arange(5) >= torch.tensor([[2], [0], [3]])).long()


def _plain_logprobs(lm, input_ids, attention_mask, width, temperature):
    pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos).logits
    logits = logits[:, width - 1:-1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, input_ids[:, width:, None]).squeeze(-1)


def test_reference_is_the_base_model_and_rollout_logprobs_match_training_pass():
    lm = tiny_lm()
    plain = copy.deepcopy(lm)
    model = SharedBaseModel(lm, lora_target_modules=["q_proj", "v_proj"])
    randomize_lora(model)
    torch.manual_seed(1)
    r = generate(model, PROMPTS, MASK, 10, eos_token_id=2, pad_token_id=2, temperature=0.7)
    m = r.response_mask
    base_lp = _plain_logprobs(plain, r.input_ids, r.attention_mask, r.prompt_width, 0.7)
    ref_lp = model.reference_logprobs(r.input_ids, r.attention_mask, r.prompt_width, 0.7)
    torch.testing.assert_close(ref_lp * m, base_lp * m, atol=1e-5, rtol=1e-5)
    lp, ent, values = model.response_pass(r.input_ids, r.attention_mask, r.prompt_width, 0.7, with_entropy=True)
    torch.testing.assert_close(lp * m, r.logprobs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent * m, r.entropy, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(values * m, r.values, atol=1e-5, rtol=1e-5)
    # the policy is not the reference once its adapter is non-zero
    assert ((lp - ref_lp).abs() * m).max() > 1e-3


def test_rollout_masks_after_eos_and_reports_ended():
    # a 16-token vocabulary makes EOS (id 2) frequent: some rows stop early, some run to the limit
    model = SharedBaseModel(tiny_lm(vocab=16), lora_target_modules=["q_proj"])
    torch.manual_seed(0)
    prompts = PROMPTS.repeat(4, 1) % 13 + 3
    r = generate(model, prompts, MASK.repeat(4, 1), 12, eos_token_id=2, pad_token_id=2, temperature=1.0)
    for i in range(r.response_ids.shape[0]):
        row = r.response_ids[i].tolist()
        n = int(r.lengths[i])
        if 2 in row:
            first = row.index(2)
            assert n == first + 1 and bool(r.ended[i])
            assert all(t == 2 for t in row[first:])
        else:
            assert n == r.response_ids.shape[1] and not bool(r.ended[i])
    assert bool(r.ended.any()) and not bool(r.ended.all())
    torch.testing.assert_close(r.response_mask.sum(1), r.lengths.float())


def test_shared_base_reward_adapter_scores_like_the_reward_model(tmp_path):
    from peft import LoraConfig, get_peft_model
    from rlhf.models import load_tokenizer
    from rlhf.reward import outputs
    from rlhf.reward.modeling import score_sequences
    from rlhf.ppo.reward import SharedBaseReward
    from rlhf.ppo.rollout import Rollout
    tiny_lm().save_pretrained(tmp_path / "base")
    rm = AutoModelForSequenceClassification.from_pretrained(tmp_path / "base", num_labels=1)
    rm = get_peft_model(rm, LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                       modules_to_save=["score"]))
    randomize_lora(rm)
    with torch.no_grad():
        rm.base_model.model.score.modules_to_save["default"].weight.normal_(0, 0.5)
    outputs.save(rm, load_tokenizer(), str(tmp_path / "rm"),
                 {"base_model": str(tmp_path / "base"), "normalization": {"mean": 0.25, "std": 2.0}})
    info = outputs.read_info(str(tmp_path / "rm"))
    model = SharedBaseModel(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), lora_target_modules=["q_proj"])
    randomize_lora(model)
    before = {n: p.clone() for n, p in model.named_parameters() if p.requires_grad}
    reward = SharedBaseReward(model, str(tmp_path / "rm"), info)
    response = torch.tensor([[30, 31, 2, 2], [32, 2, 2, 2], [33, 34, 35, 36]])
    rmask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.float32)
    r = Rollout(PROMPTS, MASK, response, rmask, torch.zeros(3, 4), torch.zeros(3, 4), None,
                torch.tensor([True, True, False]))
    want = score_sequences(rm, r.input_ids, r.attention_mask).detach()
    torch.testing.assert_close(reward(r), (want - 0.25) / 2.0, atol=1e-5, rtol=1e-5)
    # attaching the reward adapter leaves the trainable set (policy LoRA + value head) as it was
    after = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert set(after) == set(before)
    assert not any(".reward." in n for n in after)


def test_filter_logits_matches_reference_loop():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 20, generator=g, dtype=torch.float64)
    for top_k, top_p in [(5, 1.0), (0, 0.6), (7, 0.5), (0, 1.0)]:
        out = filter_logits(logits, top_k, top_p)
        for i in range(4):
            row = logits[i].tolist()
            order = sorted(range(20), key=lambda j: -row[j])
            keep = set(order[:top_k]) if top_k else set(range(20))
            if top_p < 1.0:  # nucleus of the distribution left after top-k, renormalized
                z = sum(float(torch.tensor(row[j]).exp()) for j in keep)
                mass, nucleus = 0.0, set()
                for j in [j for j in order if j in keep]:
                    if mass >= top_p:
                        break
                    nucleus.add(j)
                    mass += float(torch.tensor(row[j]).exp()) / z
                keep &= nucleus
            for j in range(20):
                assert (out[i, j].item() == float("-inf")) == (j not in keep)


def test_sample_follows_the_distribution():
    torch.manual_seed(0)
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0])
    logits = probs.log().expand(40000, 5)
    counts = torch.bincount(sample(logits.clone()), minlength=5).float() / 40000
    torch.testing.assert_close(counts, probs, atol=0.01, rtol=0)
