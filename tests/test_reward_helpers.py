"""Helpers shared by the model and reward tests (this module holds no tests): a tiny random Llama
with the real SmolLM2 tokenizer, and an easy synthetic preference dataset."""

from __future__ import annotations

import json
import random
from pathlib import Path

TOPICS = ["cats", "the moon", "bread", "rivers", "chess", "rain", "music", "trains", "apples",
          "stars", "tea", "bicycles", "winter", "maps", "owls", "glass"]
REFUSALS = ["No.", "I won't.", "Go away.", "Whatever.", "Not now.", "Ask someone else."]


def build_tiny_model(directory: Path, seed: int = 0, layers: int = 2, hidden: int = 64) -> Path:
    """A randomly initialized Llama causal LM (a few layers) saved with the SmolLM2 tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from rlhf import models
    tokenizer = models.load_tokenizer()  # the real SmolLM2 tokenizer (built once into the cache)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def synthetic_rows(n: int, seed: int = 0) -> list[dict]:
    """Easy preferences: a friendly on-topic answer beats a curt refusal. Canonical rows."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = rng.choice(TOPICS)
        rows.append({
            "messages": [{"role": "user", "content": f"Tell me something about {topic}."}],
            "chosen": f"Sure! Here is a fact about {topic}: {rng.choice(['it is old', 'people like it', 'it is everywhere'])}.",
            "rejected": rng.choice(REFUSALS),
            "source": f"synthetic:{i + 1}", "instruction": None})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build_tiny_classifier(directory: Path, seed: int = 5) -> Path:
    """A tiny random Hugging Face sequence classifier with named classes (negative, positive) and its
    own tokenizer: an "existing classifier" to use as a reward."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification
    from rlhf import models
    tok = models.load_tokenizer()
    torch.manual_seed(seed)
    LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1},
        pad_token_id=tok.pad_token_id)).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory
