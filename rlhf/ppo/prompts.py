"""Prompts for rollouts: encoded once, served in a seeded, resumable order, left-padded per batch."""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import torch

from rlhf.errors import UserError


@dataclasses.dataclass
class PromptSet:
    ids: list[list[int]]        # token ids, the last `prompt_sequence_length` kept
    texts: list[str]            # rendered prompts (for sample files)
    messages: list[list[dict]]  # conversations with the instruction applied (for text scorers)


def load_prompts(uri: str, tokenizer, max_length: int, instruction: Optional[str] = None,
                 use_chat_template: Optional[bool] = None) -> PromptSet:
    """Read the prompts (canonical rows as `rlhf validate` writes them, or a user's raw prompt JSONL,
    checked line by line: `rlhf.data.rows`) and encode them as the reward model saw its prompts
    (``rlhf.encoding.encode_prompt``). ``instruction`` is used for rows that carry none (a row's own
    instruction wins, as in the reward step)."""
    from rlhf.data import canonical
    from rlhf.data.rows import load_rows
    from rlhf.encoding import encode_prompt, render_prompt
    out = PromptSet([], [], [])
    for row in load_rows(uri, "prompt", instruction or ""):
        if instruction and not row.instruction:
            row = dataclasses.replace(row, instruction=instruction)
        messages = canonical.prompt_messages(row)
        out.ids.append(encode_prompt(tokenizer, messages, use_chat_template, max_length=max_length))
        out.texts.append(render_prompt(tokenizer, messages, use_chat_template))
        out.messages.append(messages)
    return out


def left_pad(sequences: Sequence[Sequence[int]], pad_token_id: int,
             device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and attention mask, so every prompt ends in the last column."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        if s:
            ids[i, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


class PromptSampler:
    """Batches of prompt indices: a fresh seeded permutation per pass over the data, drawn from its
    own generator so the order depends only on (seed, epoch) and resumes from ``state_dict()``."""

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if size <= 0:
            raise UserError("no prompts to sample from")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.size, generator=g).tolist()

    def next_batch(self) -> list[int]:
        """The next ``batch_size`` indices for this rank (the global batch is ``batch_size ×
        world_size``; wraps into the next epoch when the data runs out)."""
        out = []
        need = self.batch_size * self.world_size
        while len(out) < need:
            if self.position >= self.size:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            take = min(need - len(out), self.size - self.position)
            out.extend(self._order[self.position:self.position + take])
            self.position += take
        return out[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation(self.epoch)
