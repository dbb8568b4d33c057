"""The PPO objective `L = L_policy + c1·L_VF + c2·L_ENT` (Schulman et al. 2017, eq. 9), masked to
real response tokens. Every function returns the loss and its diagnostics."""

from __future__ import annotations

import torch

from rlhf.ppo.whiten import masked_mean


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, cliprange: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate loss (PPO eq. 7), as a quantity to minimize.

    Diagnostics: `clipfrac` (share of tokens where the clipped branch is active) and `approx_kl`,
    the k3 estimator of KL(old || new) (Schulman 2020, "Approximating KL divergence"), which is
    unbiased and non-negative.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).to(logprobs.dtype), mask)
        approx_kl = masked_mean((ratio - 1.0) - log_ratio, mask)
    return loss, {"clipfrac": clipfrac, "approx_kl": approx_kl}


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor, cliprange_value: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss: 0.5·max((V−R)², (V_clip−R)²) with V_clip within ±cliprange_value of the
    rollout's value (OpenAI baselines ppo2; N-details #9)."""
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_loss, clipped_loss), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped_loss > unclipped_loss).to(values.dtype), mask)
    return loss, {"clipfrac": clipfrac}


def entropy_loss(entropy: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L_ENT = −mean entropy: adding c2·L_ENT to the loss rewards exploration."""
    return -masked_mean(entropy, mask)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) over the last axis: logsumexp(z) − Σ softmax(z)·z."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)
