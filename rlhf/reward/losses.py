"""The pairwise reward-model loss.

Bradley–Terry (Ouyang et al. 2022, eq. 1): ``-log σ(r_chosen − r_rejected − m)``, with an optional
margin ``m`` (Touvron et al. 2023 use a per-pair margin from rating gaps; here one constant) and
optional reward centering ``c · mean((r_chosen + r_rejected)²)`` (Eisenstein et al. 2023, "Helping or
Herding", eq. 2), which pulls the rewards of each pair towards a zero mean without changing their
difference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: float = 0.0,
                       center_coefficient: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean loss over the pairs, and its parts (``loss/bt``, ``loss/center``) detached for logging."""
    r_chosen, r_rejected = r_chosen.float(), r_rejected.float()
    bt = -F.logsigmoid(r_chosen - r_rejected - margin).mean()
    total = bt
    parts = {"loss/bt": bt.detach()}
    if center_coefficient:
        center = center_coefficient * ((r_chosen + r_rejected) ** 2).mean()
        total = total + center
        parts["loss/center"] = center.detach()
    return total, parts
