"""Preference pairs as token ids, batch order, and padded tensors with little padding waste.

Each pair is encoded once: the prompt (``rlhf.encoding.encode_prompt``: chat template or plain text,
the last ``prompt_sequence_length`` tokens) and the two responses (``encode_response``: the first
``target_sequence_length`` tokens, EOS included), exactly as PPO later presents a generated response.

Two layouts, both one forward pass per batch:

- **shared prompt** (default): one row per pair, ``prompt + chosen + rejected``. Rejected tokens
  get positions continuing from the prompt and a block mask hides the chosen tokens from them, so
  each response sees exactly ``prompt + itself``, as if scored alone, while the prompt is computed
  once instead of twice (the prompt is usually most of the tokens);
- **two rows** per pair (chosen rows then rejected rows, right-padded): for attention kernels that
  take no custom mask (flash-attention-2).

Batches are length-bucketed: each epoch is shuffled with the seed, cut into windows of
``window`` batches, sorted by length inside each window and split into batches whose order is
shuffled again, so a batch holds pairs of similar length. The order is a pure function of
(seed, epoch), so the data position after a resume is just the number of batches consumed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from rlhf import encoding
from rlhf.data.canonical import PreferencePair, prompt_messages

# Segment ids inside a shared-prompt row.
PAD, PROMPT, CHOSEN, REJECTED = -1, 0, 1, 2


@dataclass
class EncodedPair:
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]

    def length(self, share_prompt: bool = True) -> int:
        """Tokens this pair occupies in its layout (before padding)."""
        p = len(self.prompt)
        if share_prompt:
            return p + len(self.chosen) + len(self.rejected)
        return 2 * (p + max(len(self.chosen), len(self.rejected)))


@dataclass
class EncodeStats:
    pairs: int = 0
    truncated_prompts: int = 0
    truncated_responses: int = 0


class PromptIds:
    """A conversation's prompt token ids, encoded once per distinct conversation (ranked and labeled
    data repeat prompts) and cut to its last ``length`` tokens; cut prompts are counted in ``stats``."""

    def __init__(self, tokenizer, length: int, use_chat_template: Optional[bool], stats: EncodeStats):
        self.tokenizer, self.length, self.use_chat_template, self.stats = tokenizer, length, use_chat_template, stats
        self.cache: dict[str, list[int]] = {}

    def __call__(self, messages) -> list[int]:
        key = json.dumps(messages, sort_keys=True)
        if key not in self.cache:
            full = encoding.encode_prompt(self.tokenizer, messages, self.use_chat_template)
            self.stats.truncated_prompts += len(full) > self.length
            self.cache[key] = full[-self.length:]
        return self.cache[key]


def response_ids(tokenizer, text: str, length: int, stats: EncodeStats) -> list[int]:
    """A response's token ids cut to ``length`` (EOS kept only when it fits); cut ones are counted."""
    stats.truncated_responses += len(encoding.encode_response(tokenizer, text)) > length
    return encoding.encode_response(tokenizer, text, length)


def encode_pairs(tokenizer, pairs: Sequence[PreferencePair], prompt_sequence_length: int,
                 target_sequence_length: int, use_chat_template: Optional[bool] = None,
                 instruction: str = "") -> tuple[list[EncodedPair], EncodeStats]:
    """Token ids of every pair; ``instruction`` applies to rows without their own."""
    stats = EncodeStats(pairs=len(pairs))
    prompt_ids = PromptIds(tokenizer, prompt_sequence_length, use_chat_template, stats)
    out = []
    for pair in pairs:
        if instruction and not pair.instruction:
            pair = PreferencePair(pair.messages, pair.chosen, pair.rejected, pair.source, instruction)
        out.append(EncodedPair(prompt_ids(prompt_messages(pair)),
                               response_ids(tokenizer, pair.chosen, target_sequence_length, stats),
                               response_ids(tokenizer, pair.rejected, target_sequence_length, stats)))
    return out, stats


class BatchPlan:
    """Deterministic, length-bucketed batch order over ``len(lengths)`` items, epoch after epoch.
    ``batch(k)`` is the k-th batch (item indices) counting from the start of training."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, window: int = 50,
                 bucket: bool = True):
        if len(lengths) == 0:
            raise ValueError("no items to batch")
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.window = window
        self.bucket = bucket
        self.batches_per_epoch = math.ceil(len(lengths) / batch_size)
        self._epoch: Optional[int] = None
        self._order: list[np.ndarray] = []

    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(len(self.lengths))
        batches = []
        span = self.batch_size * self.window
        for start in range(0, len(perm), span):
            chunk = perm[start:start + span]
            if self.bucket:
                chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        if self.bucket:  # sorted windows would otherwise run short-to-long
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def batch(self, k: int) -> np.ndarray:
        epoch, index = divmod(k, self.batches_per_epoch)
        if epoch != self._epoch:
            self._order, self._epoch = self._epoch_batches(epoch), epoch
        return self._order[index]


def _round_up(n: int, multiple: Optional[int]) -> int:
    return n if not multiple else -(-n // multiple) * multiple


def collate_shared(batch: Sequence[EncodedPair], pad_id: int, mask_dtype=torch.bool,
                   pad_to_multiple_of: Optional[int] = None) -> dict:
    """One row per pair: ``prompt + chosen + rejected`` (see module docstring).

    Returns ``input_ids`` and ``position_ids`` [B, L], a 4D ``attention_mask`` [B, 1, L, L]
    (bool, True = may attend; or additive float when ``mask_dtype`` is a float type) and the
    indices of each response's last token, ``chosen_index`` / ``rejected_index`` [B]."""
    length = _round_up(max(p.length(True) for p in batch), pad_to_multiple_of)
    n = len(batch)
    ids = torch.full((n, length), pad_id, dtype=torch.long)
    pos = torch.zeros((n, length), dtype=torch.long)
    seg = torch.full((n, length), PAD, dtype=torch.long)
    chosen_index = torch.empty(n, dtype=torch.long)
    rejected_index = torch.empty(n, dtype=torch.long)
    for i, pair in enumerate(batch):
        p, c, r = len(pair.prompt), len(pair.chosen), len(pair.rejected)
        ids[i, :p + c + r] = torch.tensor(pair.prompt + pair.chosen + pair.rejected)
        pos[i, :p + c] = torch.arange(p + c)
        pos[i, p + c:p + c + r] = torch.arange(p, p + r)  # rejected continues right after the prompt
        seg[i, :p] = PROMPT
        seg[i, p:p + c] = CHOSEN
        seg[i, p + c:p + c + r] = REJECTED
        chosen_index[i] = p + c - 1
        rejected_index[i] = p + c + r - 1
    q, k = seg[:, :, None], seg[:, None, :]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    allowed = causal & (k != PAD) & ~((q == REJECTED) & (k == CHOSEN))
    # Padding queries attend to themselves only: a fully masked row would give NaN in SDPA.
    allowed |= torch.eye(length, dtype=torch.bool) & (q == PAD)
    mask = allowed[:, None]
    if mask_dtype != torch.bool:
        mask = torch.zeros(mask.shape, dtype=mask_dtype).masked_fill(~mask, torch.finfo(mask_dtype).min)
    return {"input_ids": ids, "position_ids": pos, "attention_mask": mask,
            "chosen_index": chosen_index, "rejected_index": rejected_index}


def collate_rows(batch: Sequence[EncodedPair], pad_id: int, pad_to_multiple_of: Optional[int] = None) -> dict:
    """Two right-padded rows per pair, the B chosen rows first: ``input_ids``, 2D
    ``attention_mask`` and ``last_index`` [2B]."""
    seqs = [p.prompt + p.chosen for p in batch] + [p.prompt + p.rejected for p in batch]
    return collate_sequences(seqs, pad_id, pad_to_multiple_of)


def collate_sequences(seqs: Sequence[Sequence[int]], pad_id: int,
                      pad_to_multiple_of: Optional[int] = None) -> dict:
    """Right-padded rows with a 2D mask; ``last_index`` [N] is each row's last real token."""
    length = _round_up(max(len(s) for s in seqs), pad_to_multiple_of)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(list(s))
        mask[i, :len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask,
            "last_index": torch.tensor([len(s) - 1 for s in seqs])}
