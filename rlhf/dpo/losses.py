"""DPO's losses on sequence log-probs of the policy and of the reference.

With Δ = (log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r)):

- sigmoid (DPO, Rafailov et al. 2023, eq. 7): −log σ(β Δ); with label smoothing ε (conservative
  DPO) −(1 − ε) log σ(β Δ) − ε log σ(−β Δ);
- ipo (Azar et al. 2023, eq. 17): (Δ − 1/(2β))², on length-averaged log-probs (as TRL does).

The implicit rewards are β (log π(y) − log π_ref(y)) (Rafailov et al. 2023, section 5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
             reference_rejected: torch.Tensor, beta: float, loss_type: str = "sigmoid",
             label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses ``[B]`` and the implicit rewards of chosen and rejected ``[B]`` (detached)."""
    chosen_ratio = policy_chosen - reference_chosen
    rejected_ratio = policy_rejected - reference_rejected
    delta = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = (-(1 - label_smoothing) * F.logsigmoid(beta * delta)
                  - label_smoothing * F.logsigmoid(-beta * delta))
    elif loss_type == "ipo":
        losses = (delta - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"loss_type {loss_type!r}: use sigmoid or ipo")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()
