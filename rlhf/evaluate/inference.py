"""Bulk inference: batched, KV-cached generation over many prompts, greedy by default (as Google's bulk
inferrer decodes), sampling as an option; predictions written as Google's bulk inferrer writes them.

Prompts are sorted by length before batching so a batch holds prompts of similar length (little
left padding), and results come back in the original order.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

import torch

from rlhf import storage

log = logging.getLogger(__name__)


@dataclass
class GenerationSettings:
    max_new_tokens: int = 64
    batch_size: int = 8
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0


@dataclass
class Generation:
    """One response: its tokens (up to and including EOS when it stopped) and its text."""

    prompt_ids: list[int]
    response_ids: list[int]
    text: str
    finished: bool  # stopped at EOS before the token limit


@dataclass
class GeneratedBatch:
    """What `on_batch` sees after each batch (e.g. to measure KL while the logits are at hand).

    sequences: [B, P + R] left-padded prompts followed by the responses (padding after EOS);
    attention_mask: [B, P + R] real prompt tokens and response tokens up to and including EOS;
    response_tokens, response_mask: [B, R]; logits: [B, R, V] the model's raw (temperature 1)
    next-token logits at each generated position, or None when not asked for."""

    indices: list[int]
    sequences: torch.Tensor
    attention_mask: torch.Tensor
    response_tokens: torch.Tensor
    response_mask: torch.Tensor
    logits: Optional[torch.Tensor]


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every token that ends a response: the tokenizer's EOS and the model's generation config EOS
    (chat models often stop on an end-of-turn token that differs from EOS)."""
    ids = set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (gen_eos, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(int(v) for v in value)
    return sorted(ids)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if p:
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
    return ids.to(device), mask.to(device)


def response_mask(tokens: torch.Tensor, eos_ids: list[int]) -> torch.Tensor:
    """1 for each generated token up to and including the first EOS, 0 after it."""
    is_eos = torch.isin(tokens, torch.tensor(eos_ids, device=tokens.device))
    # A token is kept when no EOS came strictly before it.
    eos_before = torch.cumsum(is_eos.long(), dim=-1) - is_eos.long()
    return (eos_before == 0).long()


def generate(model, tokenizer, prompts: Sequence[Sequence[int]], settings: GenerationSettings,
             on_batch: Optional[Callable[[GeneratedBatch], None]] = None, keep_logits: bool = False,
             label: str = "model", rounds: int = 0, standin: Sequence[int] = ()) -> list[Generation]:
    """Generate one response per prompt (token ids, e.g. from `rlhf.encoding.encode_prompt`).

    ``rounds`` > 0 (a model sharded over the processes, whose forward passes gather weights from all of
    them): every process runs ``rounds`` batches, its own then stand-ins of the prompt ``standin``
    (results dropped; ``on_batch`` sees them with no indices), each decoded in step with the others
    (``synced_gpus``: a process whose rows ended keeps running forward passes until all have)."""
    from transformers import GenerationConfig

    if not prompts and not rounds:
        return []
    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    config = dict(max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample, use_cache=True,
                  pad_token_id=pad_id, eos_token_id=eos_ids, return_dict_in_generate=True,
                  output_logits=keep_logits)
    if settings.do_sample:
        config.update(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
    else:  # greedy: clear the sampling knobs a model's own generation config may carry
        config.update(temperature=None, top_p=None, top_k=None)
    generation_config = GenerationConfig(**config)
    device = _device(model)
    if settings.do_sample:
        torch.manual_seed(settings.seed)

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    batches = [order[b:b + settings.batch_size] for b in range(0, len(order), settings.batch_size)]
    if rounds and len(batches) > rounds:
        raise RuntimeError(f"{len(batches)} batches for {rounds} rounds")
    batches += [[]] * (rounds - len(batches))  # stand-ins: as many forward passes as the others
    synced = {"synced_gpus": True} if rounds else {}
    results: list[Optional[Generation]] = [None] * len(prompts)
    start, new_tokens = time.perf_counter(), 0
    was_training = model.training
    model.eval()
    try:
        for b, indices in enumerate(batches):
            input_ids, attention = _left_pad([prompts[i] for i in indices] or [standin], pad_id, device)
            with torch.inference_mode():
                out = model.generate(input_ids=input_ids, attention_mask=attention,
                                     generation_config=generation_config, **synced)
            response = out.sequences[:, input_ids.shape[1]:]
            mask = response_mask(response, eos_ids)
            rows = response.tolist()
            for j, idx in enumerate(indices):
                n = int(mask[j].sum())
                ids = rows[j][:n]
                finished = bool(ids) and ids[-1] in eos_ids
                text = tokenizer.decode(ids, skip_special_tokens=True).strip()
                results[idx] = Generation(prompt_ids=list(prompts[idx]), response_ids=ids, text=text,
                                          finished=finished)
                new_tokens += n
            if on_batch is not None:
                logits = torch.stack(out.logits, dim=1) if keep_logits else None
                on_batch(GeneratedBatch(indices=indices, sequences=out.sequences,
                                        attention_mask=torch.cat([attention, mask], dim=1),
                                        response_tokens=response, response_mask=mask, logits=logits))
            if not indices:
                continue
            done = min((b + 1) * settings.batch_size, len(order))
            elapsed = time.perf_counter() - start
            log.info("%s: generated %d/%d responses, %.1f tokens/s", label, done, len(order),
                     new_tokens / max(elapsed, 1e-9))
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]


def prediction_row(inputs_pretokenized: str, prediction: str, targets_pretokenized: str = "") -> dict:
    """One row as Google's bulk inferrer writes it (and the RLHF course notebook reads it)."""
    return {"inputs": {"inputs_pretokenized": inputs_pretokenized,
                       "targets_pretokenized": targets_pretokenized},
            "prediction": prediction}


def write_predictions(uri: str, rows: Iterable[dict]) -> int:
    """Write prediction rows as JSONL, atomically; returns the row count."""
    n = 0
    with storage.open_write(uri, "wt") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n
