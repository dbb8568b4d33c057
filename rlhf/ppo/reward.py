"""Reward functions for PPO: turn a rollout into one normalized score per response.

- ``SharedBaseReward``: the reward model was trained as LoRA on the policy's own base checkpoint, so
  it runs as adapter ``reward`` on the policy's weights (no second model in memory) and reads the
  rollout's token ids directly: prompt tokens, response tokens, EOS, exactly the layout the reward
  model was trained on (``rlhf.reward`` docstring).
- ``SeparateReward``: any other reward model, loaded once, frozen, merged, in inference mode
  (``RewardScorer``); responses are decoded and re-encoded the way that model was trained.

One convention for cut-off responses in both: a response that ended has its EOS (as the reward model
was trained on complete responses), a response cut off at ``target_sequence_length`` has none and is
scored at its last token (``missing_eos_penalty`` is the trainer's separate charge for it).

Both return ``(raw − mean) / std`` with the statistics saved with the reward model.

Classifiers (``rlhf.reward.classifier``): the reward is the ``positive_label`` class's logit or
log-probability. A classifier reward model on the policy's base whose reward is the logit is shared
too: its score head's positive row is the one-output head. For the log-probability (a softmax over
every class) it is loaded apart. An existing Hugging Face sequence classifier (``reward_model_type``
``hf_classifier`` in its info, ``rlhf.reward.outputs.read_info``) is always apart, with its own
tokenizer, reading the decoded response (``rlhf.reward.hf_classifier``).
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import torch

from rlhf.ppo.policy import SharedBaseModel
from rlhf.ppo.rollout import Rollout

log = logging.getLogger(__name__)


class SharedBaseReward:
    def __init__(self, model: SharedBaseModel, model_dir: str, info: dict, positive: int = 0):
        from safetensors.torch import load_file
        from rlhf.reward import outputs
        head = load_file(os.path.join(model_dir, info.get("score_head") or outputs.SCORE_HEAD_FILE))
        mean, std = outputs.normalization(info)
        weight, bias = head["weight"], head.get("bias")
        if info.get("labels"):  # a classifier: the positive class's row gives its logit
            weight, bias = weight[positive:positive + 1], None if bias is None else bias[positive:positive + 1]
        model.attach_reward(model_dir, weight, bias, mean, std)
        self.model = model

    def __call__(self, rollout: Rollout) -> torch.Tensor:
        return self.model.reward_scores(rollout.input_ids, rollout.attention_mask, rollout.last_index)


class SeparateReward:
    def __init__(self, model_dir: str, tokenizer, prompt_messages: Sequence[list], device=None, dtype=None,
                 batch_size: int = 16, positive_label: str = ""):
        from rlhf.reward.scorer import load_scorer
        self.scorer = load_scorer(model_dir, positive_label, device=device, dtype=dtype, batch_size=batch_size)
        for p in self.scorer.model.parameters():
            p.requires_grad_(False)
        self.tokenizer, self.messages = tokenizer, list(prompt_messages)

    def __call__(self, rollout: Rollout) -> torch.Tensor:
        texts = [self.tokenizer.decode(rollout.response_ids[i, :int(n)].tolist(), skip_special_tokens=True)
                 for i, n in enumerate(rollout.lengths)]
        with torch.inference_mode():
            scores = self.scorer.score_messages([self.messages[i] for i in rollout.prompt_index], texts,
                                                ended=rollout.ended.tolist())
        return torch.as_tensor(scores.normalized, dtype=torch.float32)


def shares_base(info: dict, policy_ref: str, policy_resolved: str) -> bool:
    """True when the reward model's base checkpoint is the policy's."""
    if info.get("base_model") == policy_ref:
        return True
    resolved = info.get("base_model_resolved")
    return bool(resolved) and os.path.realpath(resolved) == os.path.realpath(policy_resolved)


def build_reward(model_dir: str, info: dict, model: SharedBaseModel, policy_ref: str, policy_resolved: str,
                 tokenizer, prompt_messages: Sequence[list], device=None, dtype=None,
                 force_separate: bool = False, positive_label: str = ""):
    """The reward function for a trained reward model directory (local) or a Hugging Face sequence
    classifier directory; ``positive_label`` overrides a trained classifier's saved one (and is
    required for a Hugging Face classifier)."""
    kind = info.get("reward_model_type", "pairwise")
    positive = 0
    if kind == "classifier":
        from rlhf.reward.classifier import positive_index
        positive = positive_index(info["labels"], positive_label or info["positive_label"],
                                  f"the classifier reward model {model_dir}")
        force_separate = force_separate or info.get("reward_from") == "logprob"  # needs every class
    if kind != "hf_classifier" and not force_separate and shares_base(info, policy_ref, policy_resolved):
        log.info("reward model shares the policy's base: loaded as adapter 'reward' (one base copy)")
        return SharedBaseReward(model, model_dir, info, positive)
    log.info("reward model %s (%s) loaded apart, frozen", model_dir, info.get("base_model"))
    return SeparateReward(model_dir, tokenizer, prompt_messages, device=device, dtype=dtype,
                          positive_label=positive_label)
