"""Generalized advantage estimation (Schulman et al. 2016, "High-dimensional continuous control
using generalized advantage estimation"), over right-padded response tokens."""

from __future__ import annotations

import torch


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns for `[batch, T]` per-token rewards and values.

    `mask` marks real response tokens (a prefix of each row: responses are right-padded). The episode
    ends after the last real token, so the value beyond it is 0 (no bootstrap). Returns
    `(advantages, returns)` with `returns = advantages + values`, both 0 at padded positions.
    """
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask  # padding contributes nothing, incl. V_{t+1}=0
    advantages = torch.zeros_like(values)
    last = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        next_value = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        advantages[:, t] = last
    advantages = advantages * mask
    return advantages, (advantages + values) * mask
