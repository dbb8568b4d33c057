"""Bulk inference and KL on a tiny random llama (built from a config) with the SmolLM2 tokenizer:
batched left-padded generation equals one-by-one generation, the Google bulk-inferrer row shape, the
tuned model as base + LoRA adapter sharing one base copy, and KL measured from generation logits."""

import json
from pathlib import Path

import pytest
import torch

from rlhf import encoding, models
from rlhf.data.canonical import EvalExample, prompt_messages, prompt_text
from rlhf.evaluate import inference, kl
from rlhf.evaluate.policies import load_policy_pair

POSTS = [
    "My roommate keeps eating my food. I asked politely twice and it keeps happening.",
    "I got a job offer in another city but my partner wants to stay here.",
    "Short post.",
    "We adopted a puppy last week and she barks all night; the neighbours complained already and we "
    "do not know what to try next, crate training or a trainer?",
    "My bike was stolen from the office garage.",
]


def build_tiny_models(root: Path, seed: int = 0) -> tuple[str, str]:
    """A tiny random llama with the SmolLM2 tokenizer (`root/base`) and a random LoRA adapter on it
    (`root/adapter`) whose outputs differ from the base. Returns (base_dir, adapter_dir)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    tokenizer = models.load_tokenizer(models.DEFAULT_MODEL)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, initializer_range=0.2, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    base_dir, adapter_dir = root / "base", root / "adapter"
    model.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    tuned = get_peft_model(model, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                             init_lora_weights=False))
    tuned.save_pretrained(adapter_dir)
    # PEFT records the base path: point it at the directory the base was saved to.
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(base_dir)
    (adapter_dir / "adapter_config.json").write_text(json.dumps(cfg))
    return str(base_dir), str(adapter_dir)


def built_once(tmp_path_factory, name: str, build) -> Path:
    """`build(dir)` once per test session, shared by the eval test modules that import the fixture
    (a module-scoped fixture imported elsewhere would build again)."""
    root = tmp_path_factory.getbasetemp() / name
    if not (root / ".done").exists():
        root.mkdir(exist_ok=True)
        build(root)
        (root / ".done").touch()
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = built_once(tmp_path_factory, "eval-tiny", build_tiny_models)
    return str(root / "base"), str(root / "adapter")


@pytest.fixture(scope="module")
def pair(tiny):
    _, adapter_dir = tiny
    return load_policy_pair(adapter_dir, device="cpu")


@pytest.fixture(scope="module")
def prompts(pair):
    rows = [EvalExample(messages=[{"role": "user", "content": p}], instruction="Summarize:") for p in POSTS]
    return rows, [encoding.encode_prompt(pair.tokenizer, prompt_messages(r)) for r in rows]


def test_response_mask_stops_after_first_eos():
    tokens = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 2, 2, 2]])
    assert inference.response_mask(tokens, [2]).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_adapter_is_loaded_on_one_shared_base(pair, tiny):
    base_dir, _ = tiny
    assert pair.shares_base and pair.base_reference == base_dir
    ids = torch.tensor([[1, 20, 30, 40]])
    with torch.inference_mode():
        tuned = pair.tuned(input_ids=ids).logits
        with pair.base() as base:
            base_out = base(input_ids=ids).logits
        plain = models.load_causal_lm(base_dir, device="cpu")(input_ids=ids).logits
    assert torch.allclose(base_out, plain, atol=1e-5)  # adapter disabled == the saved base
    assert not torch.allclose(tuned, plain, atol=1e-3)  # the adapter changes the outputs


def test_batched_greedy_generation_equals_one_by_one(pair, prompts):
    _, ids = prompts
    settings = inference.GenerationSettings(max_new_tokens=8, batch_size=3)
    batched = inference.generate(pair.tuned, pair.tokenizer, ids, settings)
    single = inference.generate(pair.tuned, pair.tokenizer, ids,
                                inference.GenerationSettings(max_new_tokens=8, batch_size=1))
    assert [g.response_ids for g in batched] == [g.response_ids for g in single]
    eos = inference.eos_token_ids(pair.tuned, pair.tokenizer)
    for g, p in zip(batched, ids):
        assert g.prompt_ids == p  # results come back in the input order
        assert 0 < len(g.response_ids) <= 8
        assert g.finished == (g.response_ids[-1] in eos)
        assert g.text == pair.tokenizer.decode(g.response_ids, skip_special_tokens=True).strip()
    with pair.base() as base:
        base_out = inference.generate(base, pair.tokenizer, ids, settings)
    assert [g.response_ids for g in base_out] != [g.response_ids for g in batched]


def test_sampling_is_seeded(pair, prompts):
    _, ids = prompts
    s = inference.GenerationSettings(max_new_tokens=8, batch_size=5, do_sample=True, temperature=1.0, seed=3)
    a = inference.generate(pair.tuned, pair.tokenizer, ids, s)
    b = inference.generate(pair.tuned, pair.tokenizer, ids, s)
    greedy = inference.generate(pair.tuned, pair.tokenizer, ids, inference.GenerationSettings(max_new_tokens=8))
    assert [g.response_ids for g in a] == [g.response_ids for g in b]
    assert [g.response_ids for g in a] != [g.response_ids for g in greedy]


def test_generation_logits_match_a_full_forward_and_kl(pair, prompts):
    """The logits kept from KV-cached generation equal a plain forward pass over prompt + response
    (so left padding and positions are right); KL(tuned || tuned) is 0 and KL(tuned || base) > 0."""
    _, ids = prompts
    seen = []
    acc = kl.KLAccumulator()
    hook = kl.measure_on_batches(pair.base, acc)

    def on_batch(batch):
        seen.append(batch)
        hook(batch)

    inference.generate(pair.tuned, pair.tokenizer, ids, inference.GenerationSettings(max_new_tokens=10, batch_size=2),
                       on_batch=on_batch, keep_logits=True)
    assert sorted(i for b in seen for i in b.indices) == list(range(len(ids)))
    for b in seen:
        with torch.inference_mode():
            full = kl.response_logits(pair.tuned, b.sequences, b.attention_mask, b.response_tokens.shape[1])
        m = b.response_mask.bool()
        assert torch.allclose(full[m], b.logits[m], atol=1e-4)
        k1_self, full_self = kl.kl_terms(b.logits, full, b.response_tokens)
        assert k1_self[m].abs().max() < 1e-4 and full_self[m].abs().max() < 1e-4
    r = acc.result()
    assert r.tokens == sum(int(b.response_mask.sum()) for b in seen)
    assert r.full_token_mean > 1e-3 and all(v > 0 for v in r.full_per_sequence)
    assert len(r.k1_per_sequence) == len(ids)


def test_prediction_rows_have_the_google_bulk_inferrer_shape(tmp_path, pair, prompts):
    rows, ids = prompts
    gens = inference.generate(pair.tuned, pair.tokenizer, ids, inference.GenerationSettings(max_new_tokens=6))
    out = tmp_path / "predictions.jsonl"
    n = inference.write_predictions(str(out), (
        inference.prediction_row(prompt_text(r), g.text, "ref" if i == 0 else "")
        for i, (r, g) in enumerate(zip(rows, gens))))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert n == len(lines) == len(POSTS)
    assert set(lines[0]) == {"inputs", "prediction"}
    assert set(lines[0]["inputs"]) == {"inputs_pretokenized", "targets_pretokenized"}
    assert lines[0]["inputs"]["inputs_pretokenized"] == "Summarize:\n\n" + POSTS[0]
    assert lines[0]["inputs"]["targets_pretokenized"] == "ref" and lines[1]["inputs"]["targets_pretokenized"] == ""
    assert [line["prediction"] for line in lines] == [g.text for g in gens]


def test_full_model_is_loaded_beside_a_separate_base(tmp_path, pair, tiny):
    """A tuned *model folder* (here the adapter merged into the base) is compared with a separately
    loaded base; its outputs equal the adapter's."""
    from peft import PeftModel

    base_dir, adapter_dir = tiny
    merged = PeftModel.from_pretrained(models.load_causal_lm(base_dir, device="cpu"), adapter_dir).merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    full = load_policy_pair(str(tmp_path / "merged"), base_dir, device="cpu")
    assert not full.shares_base and full.base_reference == base_dir
    ids = torch.tensor([[1, 20, 30, 40]])
    with torch.inference_mode():
        assert torch.allclose(full.tuned(input_ids=ids).logits, pair.tuned(input_ids=ids).logits, atol=1e-4)
        with full.base() as b1, pair.base() as b2:
            assert torch.allclose(b1(input_ids=ids).logits, b2(input_ids=ids).logits, atol=1e-5)
