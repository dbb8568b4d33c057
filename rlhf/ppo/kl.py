"""KL penalty against the reference model and the controllers that set its coefficient.

Per-token estimators of KL(π || π_ref) from samples of π (Schulman 2020, "Approximating KL
divergence"): k1 = log π − log π_ref (unbiased, can be negative per token; the usual RLHF penalty,
Ziegler et al. 2019) and k3 = (r − 1) − log r with r = π_ref/π (unbiased, always ≥ 0, lower variance).

Controllers: fixed β, or adaptive β (Ziegler et al. 2019, "Fine-Tuning Language Models from Human
Preferences", §2.2): β ← β·(1 + K_β·e), e = clip(KL/KL_target − 1, ±0.2), K_β = n_steps/horizon.
"""

from __future__ import annotations

import torch

from rlhf.ppo.config import ESTIMATORS


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL estimate from the sampled tokens' log-probs under the policy and the reference."""
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {ESTIMATORS}")


class FixedKLController:
    """β stays at its initial value."""

    def __init__(self, value: float):
        self.value = float(value)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """Moves β so the measured KL tracks `target` (Ziegler et al. 2019, §2.2; lm-human-preferences)."""

    def __init__(self, value: float, target: float, horizon: int):
        super().__init__(value)
        self.target, self.horizon = float(target), int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon


def make_controller(kl_coeff: float, adaptive: bool, target: float, horizon: int) -> FixedKLController:
    return AdaptiveKLController(kl_coeff, target, horizon) if adaptive else FixedKLController(kl_coeff)
