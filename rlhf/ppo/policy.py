"""One copy of the base weights for every model PPO needs.

- **policy**: LoRA adapter ``policy`` on the base (the only adapter the optimizer moves, with the
  value head);
- **reference**: the same weights with every adapter disabled (``reference()``): no second copy;
- **value**: a linear head on the policy's last hidden state (``value_model="head"``, default), or a
  second LoRA adapter ``value`` with its own head (``value_model="adapter"``);
- **reward**: when the reward model was trained on the same base checkpoint, its LoRA adapter is
  loaded as adapter ``reward`` with its score head (``attach_reward``); so the run holds one base
  copy in all. (A reward model on another base is loaded apart, frozen: see ``rlhf.ppo.reward``.)

Why a value head and not a second adapter, measured (SmolLM2-135M-Instruct, CPU, fp32, one thread
on a shared 2-core machine, batch 8, prompts <= 128 + 32 response tokens, 2 PPO epochs x 2
minibatches, LoRA r=8 on q/k/v/o; mean of steps 2-3 of
``python benchmarks/ppo_vs_trl.py --quick --steps 3 --threads 1 --value-model-study``):

    value model   step    generation  reference  values  scoring  training   peak RSS
    head          62.6 s  14.3 s      7.9 s      0 s     7.6 s    32.9 s     2533 MB
    adapter       89.6 s  13.9 s      6.0 s      6.1 s   5.8 s    57.9 s     3863 MB

(one run each; absolute times are inflated by other jobs on the machine). The head
reads the hidden states the policy pass computes anyway: the rollout gets values for free from the
decoding loop, and each PPO minibatch needs one forward/backward instead of two (whose graphs are
alive together, hence +1.3 GB). The price is that the value loss also moves the shared policy LoRA
(scaled by ``vf_coef``); the "N implementation details" study (Huang et al. 2022) trains a separate
critic, so the adapter variant stays available (``--value-model adapter``) for a decoupled critic.

Log-probs come from the model's own head (``self.head``, a ``LogitHead``: bias, logit scaling and
soft-capping applied, projected in chunks by ``rlhf.ppo.logprobs``), checked once against the
model's own logits on a probe; a head it cannot reproduce falls back to the model's own logits.
LoRA dropout acts only in ``training_pass`` (the PPO update); everything else runs without it.

Adapter switching goes through ``_use_adapter``: peft's ``set_adapter`` flips ``requires_grad`` on
the adapters (it makes the active one trainable), so each switch restores the flags we set, which
keeps the reward adapter and the base frozen.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Optional, Sequence

import torch
from torch import nn

from rlhf.errors import UserError
from rlhf.ppo.config import VALUE_MODELS
from rlhf.ppo.logprobs import LogitHead, logit_head, logits_logprobs, token_logprobs
from rlhf.settings import FP16_REFUSED

log = logging.getLogger(__name__)

POLICY, VALUE, REWARD = "policy", "value", "reward"


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count only real tokens, so left-padded prompts start at position 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class SharedBaseModel(nn.Module):
    """Policy, reference, value function (and reward model) on one set of base weights."""

    def __init__(self, causal_lm, lora_rank: int = 8, lora_alpha: float = 16.0,
                 lora_dropout: float = 0.0, lora_target_modules: Sequence[str] | str = ("q_proj", "v_proj"),
                 value_model: str = "head"):
        super().__init__()
        from peft import LoraConfig, get_peft_model
        if value_model not in VALUE_MODELS:
            raise UserError(f"value_model {value_model!r}: use one of {', '.join(VALUE_MODELS)}")
        if causal_lm.dtype == torch.float16:
            raise UserError(f"the policy's weights are fp16: {FP16_REFUSED} (--dtype)")
        for p in causal_lm.parameters():
            p.requires_grad_(False)
        targets = lora_target_modules if isinstance(lora_target_modules, str) else list(lora_target_modules)
        config = LoraConfig(r=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                            target_modules=targets, task_type="CAUSAL_LM", bias="none")
        try:
            self.peft = get_peft_model(causal_lm, config, adapter_name=POLICY)
            if value_model == "adapter":
                self.peft.add_adapter(VALUE, config)
        except ValueError as e:
            names = sorted({n.rsplit(".", 1)[-1] for n, m in causal_lm.named_modules()
                            if isinstance(m, nn.Linear)})
            raise UserError(f"LoRA target modules {targets}: {e}. Linear layers of this model: "
                            f"{', '.join(names)}; set --lora-target-modules accordingly") from None
        self.value_model = value_model
        lm = self.peft.get_base_model()
        self.trunk = getattr(lm, lm.base_model_prefix)
        self.lm_head = lm.get_output_embeddings()
        hidden = lm.config.hidden_size if hasattr(lm.config, "hidden_size") else lm.config.get_text_config().hidden_size
        # Zero-initialised: values start at 0 and the first value updates come from the returns.
        device = self.lm_head.weight.device
        self.value_head = nn.Linear(hidden, 1, device=device, dtype=torch.float32)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)
        self.reward_head: Optional[nn.Linear] = None
        self.reward_norm = (0.0, 1.0)
        self.sharded = False  # the frozen base is sharded over the processes (`shard_base`)
        self.eval()  # dropout off, except the trained adapters' LoRA dropout in `training_pass`
        trained_adapters = (POLICY, VALUE) if value_model == "adapter" else (POLICY,)
        self._lora_dropouts = [m.lora_dropout[a] for m in self.peft.modules()
                               if isinstance(getattr(m, "lora_dropout", None), nn.ModuleDict)
                               for a in trained_adapters if a in m.lora_dropout]
        self._trainable = {n for n, _ in self.named_parameters()
                           if n.startswith("value_head.")
                           or (".lora_" in n and any(f".{a}." in n for a in trained_adapters))}
        for name, p in self.named_parameters():
            if name in self._trainable and p.dtype != torch.float32:
                p.data = p.data.float()  # fp32 adapters over a bf16 base: AdamW updates need the precision
        self._use_adapter(POLICY)
        self.head: Optional[LogitHead] = self._fused_head()
        if self.head is None:
            log.warning("the fused log-prob path cannot reproduce the logits of %s (%s): using the model's "
                        "own logits (more memory: [batch, response, vocab] float32 per pass)",
                        type(lm).__name__, lm.config.model_type)

    def _fused_head(self) -> Optional[LogitHead]:
        """The model's head as a `LogitHead` when it reproduces the model's own logits on a probe
        (a few token ids, adapters off), else None: the passes then use the model's own logits."""
        head = logit_head(self.causal_lm)
        if head is None:
            return None
        ids = torch.arange(min(8, head.weight.shape[0]), device=self.device)[None]
        captured = []
        hook = self.trunk.register_forward_hook(lambda module, args, out: captured.append(_last_hidden(out)))
        try:
            with self.reference(), torch.no_grad():
                theirs = self.causal_lm(input_ids=ids, use_cache=False).logits
        finally:
            hook.remove()
        if not captured:
            return None
        ours = head.logits(captured[-1])
        theirs = theirs.to(ours.dtype)
        # the model applies its scaling/capping in its own dtype: allow a few of its rounding steps
        tolerance = 8 * torch.finfo(self.lm_head.weight.dtype).eps * max(1.0, float(theirs.abs().max()))
        return head if float((ours - theirs).abs().max()) <= tolerance else None

    def shard_base(self, device: torch.device) -> bool:
        """Shard the frozen base (and the frozen reward adapter) over the processes with FSDP2
        (``rlhf.distributed.shard_frozen``), rooted at the causal LM: every pass then goes through its
        ``forward``, which gathers the embeddings, final norm and output layer (a shared output layer
        cannot belong to a second FSDP unit), so log-probs come from the model's own logits. The
        trained adapters and the value head stay whole on every process. Call it after
        ``attach_reward``. False (nothing done) in a single process."""
        from rlhf import distributed
        if not distributed.shard_frozen(self, device, root=self.causal_lm):
            return False
        self.sharded, self.head = True, None
        return True

    @property
    def causal_lm(self):
        """The Hugging Face causal LM (with the LoRA layers peft put in it)."""
        return self.peft.get_base_model()

    # -- adapters -------------------------------------------------------------------------------

    def _restore_requires_grad(self) -> None:
        for name, p in self.named_parameters():
            p.requires_grad_(name in self._trainable)

    def _use_adapter(self, name: str) -> None:
        if self.peft.active_adapter != name:
            self.peft.set_adapter(name)
        self._restore_requires_grad()

    @contextlib.contextmanager
    def adapter(self, name: str):
        """Run the block with adapter ``name`` active, then return to the policy."""
        self._use_adapter(name)
        try:
            yield
        finally:
            self._use_adapter(POLICY)

    @contextlib.contextmanager
    def training_pass(self):
        """LoRA dropout on for the trained adapters (`lora_dropout`), in the PPO update's passes only:
        rollouts, old log-probs, reference and reward passes run without it."""
        for dropout in self._lora_dropouts:
            dropout.train()
        try:
            yield
        finally:
            for dropout in self._lora_dropouts:
                dropout.eval()

    @contextlib.contextmanager
    def reference(self):
        """The frozen reference model: the base with every adapter disabled."""
        with self.peft.disable_adapter():
            yield

    def attach_reward(self, adapter_dir: str, score_weight: torch.Tensor,
                      score_bias: Optional[torch.Tensor] = None, mean: float = 0.0, std: float = 1.0) -> None:
        """Load a reward model trained as LoRA on this same base: adapter + score head + the
        normalization statistics of its scores."""
        self.peft.load_adapter(adapter_dir, adapter_name=REWARD, is_trainable=False)
        weight = score_weight.reshape(1, -1).to(torch.float32)
        self.reward_head = nn.Linear(weight.shape[1], 1, bias=score_bias is not None,
                                     device=self.lm_head.weight.device, dtype=torch.float32)
        with torch.no_grad():
            self.reward_head.weight.copy_(weight)
            if score_bias is not None:
                self.reward_head.bias.copy_(score_bias.reshape(1))
        self.reward_head.requires_grad_(False)
        self.reward_norm = (float(mean), float(std) if std and std > 0 else 1.0)
        self._use_adapter(POLICY)

    # -- forward pieces -------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    def hidden_states(self, input_ids, attention_mask, position_ids=None, past_key_values=None,
                      use_cache: bool = False):
        """Last hidden states of the trunk (no logits). Returns ``(hidden, cache)``."""
        if self.sharded:  # through the FSDP root (the causal LM), projecting one position
            hidden, _, cache = self._lm_forward(input_ids, attention_mask, position_ids, past_key_values,
                                                use_cache, keep=1)
            return hidden, cache
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask)
        out = self.trunk(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=past_key_values, use_cache=use_cache)
        return out.last_hidden_state, (out.past_key_values if use_cache else None)

    def states_and_logits(self, input_ids, attention_mask, position_ids=None, past_key_values=None,
                          use_cache: bool = False, keep: int = 1):
        """``(hidden, logits, cache)``: the trunk's last hidden states and, only when the fused head
        cannot reproduce the model's logits (``self.head`` is None), the model's own logits of the last
        ``keep`` positions (else None: the caller projects what it needs with ``self.head``)."""
        if self.head is not None:
            hidden, cache = self.hidden_states(input_ids, attention_mask, position_ids, past_key_values, use_cache)
            return hidden, None, cache
        return self._lm_forward(input_ids, attention_mask, position_ids, past_key_values, use_cache, keep)

    def _lm_forward(self, input_ids, attention_mask, position_ids, past_key_values, use_cache: bool, keep: int):
        """``(hidden, logits, cache)`` from the causal LM's own forward (logits of the last ``keep``
        positions), the trunk's output caught by a hook."""
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask)
        captured = []
        hook = self.trunk.register_forward_hook(lambda module, args, out: captured.append(_last_hidden(out)))
        try:
            out = self.causal_lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                 past_key_values=past_key_values, use_cache=use_cache, logits_to_keep=keep)
        finally:
            hook.remove()
        return captured[-1], out.logits, (out.past_key_values if use_cache else None)

    def last_logits(self, hidden: torch.Tensor, logits: Optional[torch.Tensor]) -> torch.Tensor:
        """float32 logits ``[B, V]`` of the last position, from ``states_and_logits``' outputs."""
        if logits is not None:
            return logits[:, -1].to(torch.float32)
        return self.head.logits(hidden[:, -1])

    def values_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.value_head(hidden.to(torch.float32)).squeeze(-1)

    def response_pass(self, input_ids, attention_mask, prompt_width: int, temperature: float,
                      with_entropy: bool = False, with_values: bool = True):
        """Log-probs of the response tokens (and entropies, values) in one pass of the active model.

        ``input_ids`` is ``[left-padded prompt | right-padded response]``; the response starts at
        column ``prompt_width``. Only the response positions are projected to the vocabulary.
        """
        response_width = input_ids.shape[1] - prompt_width
        hidden, logits, _ = self.states_and_logits(input_ids, attention_mask, keep=response_width + 1)
        h = hidden[:, prompt_width - 1:-1]  # the state before each response token
        labels = input_ids[:, prompt_width:]
        if logits is None:
            logprobs, entropy = token_logprobs(h, self.head, labels, temperature, with_entropy)
        else:
            logprobs, entropy = logits_logprobs(logits[:, :-1], labels, temperature, with_entropy)
        values = self.values_from_hidden(h) if with_values and self.value_model == "head" else None
        return logprobs, entropy, values

    def value_pass(self, input_ids, attention_mask, prompt_width: int) -> torch.Tensor:
        """Values from the value adapter (``value_model="adapter"``)."""
        with self.adapter(VALUE):
            hidden, _ = self.hidden_states(input_ids, attention_mask)
        return self.values_from_hidden(hidden[:, prompt_width - 1:-1])

    def reference_logprobs(self, input_ids, attention_mask, prompt_width: int, temperature: float):
        with torch.no_grad(), self.reference():
            logprobs, _, _ = self.response_pass(input_ids, attention_mask, prompt_width, temperature,
                                                with_values=False)
        return logprobs

    def reward_scores(self, input_ids, attention_mask, last_index: torch.Tensor, normalize: bool = True):
        """Scores of the shared-base reward model at each row's last real token."""
        if self.reward_head is None:
            raise RuntimeError("no reward adapter attached")
        with torch.no_grad(), self.adapter(REWARD):
            hidden, _ = self.hidden_states(input_ids, attention_mask)
            last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_index]
            scores = self.reward_head(last.to(torch.float32)).squeeze(-1)
        if normalize:
            mean, std = self.reward_norm
            scores = (scores - mean) / std
        return scores

    # -- parameters and outputs -----------------------------------------------------------------

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if n in self._trainable]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().to("cpu", copy=True).contiguous()
                for n, p in self.named_parameters() if n in self._trainable}

    def load_trainable_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        params = dict(self.named_parameters())
        missing = self._trainable - set(tensors)
        unexpected = set(tensors) - self._trainable
        if missing or unexpected:
            raise UserError(f"the checkpoint does not match this model (missing {sorted(missing)[:3]}, "
                            f"unexpected {sorted(unexpected)[:3]}): it was written with other LoRA or "
                            f"value-model settings; use a new output directory or the same settings")
        with torch.no_grad():
            for name, value in tensors.items():
                params[name].copy_(value)


def _last_hidden(out) -> torch.Tensor:
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def parameter_count(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in module.parameters())
    return sum(p.numel() for p in module.parameters() if p.requires_grad), total
