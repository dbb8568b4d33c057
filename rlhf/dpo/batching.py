"""Preference pairs as policy rows, and each row's response log-prob.

A pair becomes two rows, chosen then rejected, in the layout every LoRA-policy step uses
(``rlhf.policy_training.rows``: ``[left-padded prompt | right-padded response]``, PPO's passes).
The pairs come encoded by the reward step (``rlhf.reward.batching.encode_pairs``: one
prompt/response encoding for every step).
"""

from __future__ import annotations

from typing import Sequence

import torch

from rlhf.policy_training.rows import PolicyRows, policy_rows, response_logprobs


def collate(pairs: Sequence, pad_id: int, device=None) -> PolicyRows:
    """Rows for ``pairs`` (``EncodedPair``: prompt, chosen, rejected token ids): the chosen rows,
    then the rejected rows."""
    return policy_rows([p.prompt for p in pairs] * 2, [p.chosen for p in pairs] + [p.rejected for p in pairs],
                       pad_id, device)


def chosen_rejected(per_row: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A per-row value of ``collate``'s rows split into the pairs' chosen and rejected halves."""
    pairs = per_row.shape[0] // 2
    return per_row[:pairs], per_row[pairs:]


def sequence_logprobs(model, rows: PolicyRows, average: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(response | prompt) of each pair's chosen and rejected response (``[B]`` each) under
    the model's active adapter: the sum of the token log-probs, or their mean (``average``, IPO)."""
    return chosen_rejected(response_logprobs(model, rows, average)[0])
