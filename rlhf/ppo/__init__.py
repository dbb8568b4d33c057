"""PPO tuning of a LoRA policy against a trained reward model, on one copy of the base weights.

Modules, one concept each: ``config`` (PPOConfig), ``gae``, ``whiten``, ``losses``, ``kl`` (penalty
estimators and controllers), ``logprobs`` (chunked log-probs from hidden states), ``policy`` (the
shared-base policy/reference/value/reward model), ``rollout`` (KV-cached sampling), ``prompts``,
``reward`` (reward functions), ``trainer`` (the loop), ``outputs`` (the output directory),
``distributed`` (data parallelism over the devices, ``--devices``), ``run`` (``tune(config)``, what
the CLI and the component call).
"""

from rlhf.ppo.config import PPOConfig

__all__ = ["PPOConfig", "tune"]


def tune(config: PPOConfig) -> dict:
    from rlhf.ppo.run import tune as _tune
    return _tune(config)
