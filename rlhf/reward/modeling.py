"""The reward model: a sequence classifier with one output, LoRA adapters and a trained ``score`` head,
and the forward passes that turn token ids into rewards.

A reward is the score head applied to the final hidden state of the response's **last token**
(its EOS), found from the attention mask, not from the pad token id (for many chat models the pad
token *is* EOS, and Hugging Face's pooling would then skip it). ``score_sequences`` does this for
any padding (left-padded prompts and right-padded responses included, as PPO batches are), with
position ids computed from the mask.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

from rlhf import models
from rlhf.errors import UserError
from rlhf.settings import FP16_REFUSED

log = logging.getLogger(__name__)


def linear_module_names(model) -> list[str]:
    """Short names of the linear layers LoRA could adapt (``q_proj``, ``v_proj``, ...)."""
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D":
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def check_target_modules(model, targets: list[str], ref: str) -> None:
    """UserError when a LoRA target names no module of the model, listing the ones it has."""
    if not targets or targets == ["all-linear"]:
        return
    full = [n for n, _ in model.named_modules()]
    for target in targets:
        if not any(n == target or n.endswith("." + target) for n in full):
            raise UserError(
                f"LoRA target module {target!r} is not in model {ref} "
                f"({type(model).__name__}); its linear layers are: {', '.join(linear_module_names(model))}. "
                f"Set lora_target_modules to some of these (or all-linear)")


def build_reward_model(ref: str, tokenizer, *, lora_rank: int, lora_alpha: float,
                       lora_dropout: float, target_modules: list[str], device=None, dtype=None,
                       gradient_checkpointing: bool = False, trust_remote_code: bool = False,
                       seed: Optional[int] = None, labels: Optional[list[str]] = None):
    """Load ``ref`` as a one-label sequence classifier (or one output per class of ``labels``: a
    classifier reward model) and wrap it with LoRA; the score head is fully trained
    (``modules_to_save``). Trainable tensors are fp32 whatever the base dtype."""
    from peft import LoraConfig, get_peft_model
    if seed is not None:
        torch.manual_seed(seed)  # the new score head and LoRA A matrices are drawn from it
    base = models.load_sequence_classifier(ref, dtype=dtype, device=device,
                                           trust_remote_code=trust_remote_code,
                                           pad_token_id=tokenizer.pad_token_id, labels=labels)
    if base.dtype == torch.float16:
        raise UserError(f"the reward model's weights are fp16: {FP16_REFUSED} (--dtype)")
    check_target_modules(base, target_modules, ref)
    head_name = "score" if hasattr(base, "score") else None
    if head_name is None:
        raise UserError(f"model {ref} ({type(base).__name__}) has no `score` head: use a decoder-only "
                        f"model (Llama, Mistral, Qwen, Gemma, GPT-2 ...)")
    targets = target_modules if target_modules else None
    if targets == ["all-linear"]:
        targets = "all-linear"
    lora = LoraConfig(task_type="SEQ_CLS", r=lora_rank, lora_alpha=lora_alpha,
                      lora_dropout=lora_dropout, target_modules=targets, modules_to_save=[head_name])
    try:
        model = get_peft_model(base, lora)
    except ValueError as e:
        raise UserError(f"LoRA cannot be applied to {ref}: {e}. Its linear layers are: "
                        f"{', '.join(linear_module_names(base))}; set lora_target_modules") from None
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    if gradient_checkpointing:
        kwargs = {"use_reentrant": False}  # non-reentrant: no need for inputs that require grad
        if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.2x
            base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    base.config.use_cache = False
    return model


def parts(model):
    """(trunk, score head) of a reward model, bare or wrapped by peft."""
    seqcls = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(seqcls, seqcls.base_model_prefix), seqcls.score


def active_head(head):
    """The score head that runs: peft's trained copy (``modules_to_save``, fp32) unless adapters are
    disabled, else the original one (in the base's dtype); a bare head is itself."""
    copies = getattr(head, "modules_to_save", None)
    if copies is not None and not getattr(head, "disable_adapters", False):
        for name in getattr(head, "active_adapters", ()):
            if name in copies:
                return copies[name]
    return getattr(head, "original_module", head)


def _head(head, hidden: torch.Tensor) -> torch.Tensor:
    weight = next(active_head(head).parameters())
    return head(hidden.to(weight.dtype)).squeeze(-1).float()


def attention_kind(model) -> str:
    seqcls = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(seqcls.config, "_attn_implementation", None) or "eager"


def pair_rewards(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards (fp32) of the chosen and rejected responses of a collated batch, either layout
    (``rlhf.reward.batching``); one forward pass through the trunk."""
    trunk, head = parts(model)
    device = next(trunk.parameters()).device
    if "position_ids" in batch:  # shared-prompt rows with a 4D mask
        hidden = trunk(input_ids=batch["input_ids"].to(device),
                       attention_mask=batch["attention_mask"].to(device),
                       position_ids=batch["position_ids"].to(device), use_cache=False).last_hidden_state
        rows = torch.arange(hidden.shape[0], device=device)
        picked = torch.stack([hidden[rows, batch["chosen_index"].to(device)],
                              hidden[rows, batch["rejected_index"].to(device)]], dim=1)
        rewards = _head(head, picked)
        return rewards[:, 0], rewards[:, 1]
    rewards = score_sequences(model, batch["input_ids"], batch["attention_mask"])
    return rewards.chunk(2)


def score_sequences(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Rewards [N] (fp32) of padded sequences, at each row's last attended token. Works with left,
    right or both-side padding: positions come from the mask."""
    trunk, head = parts(model)
    device = next(trunk.parameters()).device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    hidden = trunk(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=False).last_hidden_state
    length = attention_mask.shape[1]
    last = length - 1 - attention_mask.long().flip(-1).argmax(-1)
    picked = hidden[torch.arange(hidden.shape[0], device=device), last]
    return _head(head, picked)
