"""Supervised fine-tuning (SFT): a LoRA adapter trained on demonstrations, loss on the response tokens
only, then merged into the base. The merged model is the starting policy of RL and the reference its
KL is measured against (Stiennon et al. 2020, section 3.1; Ouyang et al. 2022, section 3.5).

Modules, one concept each: ``config`` (SFTConfig), ``data`` (the demonstrations: an sft dataset, or
the preferred candidates of preference data), ``batching`` (examples as policy rows, the loss),
``trainer`` (the step on the loop shared with DPO, ``rlhf.policy_training``), ``run``
(``train_sft``: data, model, loop, outputs), ``provenance`` (``rlhf_sft.json`` in the merged model: the
base it was fine-tuned from, read by evaluation). The outputs are PPO's layout (``rlhf.ppo.outputs``)
with ``merged_model/``, the directory later steps take as their base model.
"""

from rlhf.sft.config import SFTConfig

__all__ = ["SFTConfig", "train_sft"]


def train_sft(config: SFTConfig) -> dict:
    from rlhf.sft.run import train_sft as run
    return run(config)
