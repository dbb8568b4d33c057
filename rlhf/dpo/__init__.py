"""DPO: tune the LoRA policy directly on preference pairs (Rafailov et al. 2023), no reward model.

Modules, one concept each: ``config`` (DPOConfig), ``losses`` (sigmoid and IPO losses, implicit
rewards), ``batching`` (pairs as policy rows, sequence log-probs), ``trainer`` (the step on the
loop shared with SFT, ``rlhf.policy_training``: the loss, the cached reference log-probs),
``outputs`` (where a pipeline's run lives; the files are PPO's layout, ``rlhf.ppo.outputs``, so
evaluation and deployment read either), ``run`` (``train_dpo``).
"""

from rlhf.dpo.config import DPOConfig

__all__ = ["DPOConfig", "train_dpo"]


def train_dpo(config: DPOConfig) -> dict:
    from rlhf.dpo.run import train_dpo as run
    return run(config)
