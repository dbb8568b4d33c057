"""Prompts and responses as policy rows, and each row's response log-prob.

A row is ``[left-padded prompt | right-padded response]``: the layout PPO's passes read
(``SharedBaseModel.response_pass``), so a response is scored exactly as the policy would have
produced it, and no prompt position is projected to the vocabulary at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass
class PolicyRows:
    input_ids: torch.Tensor       # [B, P + R]
    attention_mask: torch.Tensor  # [B, P + R]
    response_mask: torch.Tensor   # [B, R] float: 1 on response tokens (EOS included)
    prompt_width: int


def policy_rows(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int,
                device=None) -> PolicyRows:
    """``[left-padded prompt | right-padded response]`` rows, the layout of PPO's passes."""
    width_p = max(len(p) for p in prompts)
    width_r = max(max(len(r) for r in responses), 1)
    ids = torch.full((len(prompts), width_p + width_r), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    response_mask = torch.zeros(len(prompts), width_r)
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        ids[i, width_p - len(prompt):width_p] = torch.tensor(list(prompt), dtype=torch.long)
        ids[i, width_p:width_p + len(response)] = torch.tensor(list(response), dtype=torch.long)
        mask[i, width_p - len(prompt):width_p + len(response)] = 1
        response_mask[i, :len(response)] = 1
    return PolicyRows(ids.to(device), mask.to(device), response_mask.to(device), width_p)


def response_logprobs(model, rows: PolicyRows, average: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(log π(response | prompt) of each row ``[B]``, its response token count ``[B]``) under the
    model's active adapter: the sum of the token log-probs, or their mean (``average``)."""
    logprobs, _, _ = model.response_pass(rows.input_ids, rows.attention_mask, rows.prompt_width, 1.0,
                                         with_values=False)
    tokens = rows.response_mask.sum(-1)
    total = (logprobs.float() * rows.response_mask).sum(-1)
    if average:
        total = total / tokens.clamp(min=1)
    return total, tokens


def training_pass(model, rows: PolicyRows, average: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``response_logprobs`` with LoRA dropout on: the pass DDP wraps."""
    with model.training_pass():
        return response_logprobs(model, rows, average)
