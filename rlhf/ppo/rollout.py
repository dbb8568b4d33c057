"""Rollouts: sample responses with a KV cache and keep what the sampling computed.

One decoding loop (prefill the prompts, then one token per step reusing the cache) records for each
sampled token its log-probability under the temperature-scaled policy, the entropy of that
distribution and, with a value head, the value of the state it was sampled in. The loop projects
only the last position to the vocabulary with the model's own head (bias, scaling, soft-capping:
``SharedBaseModel.head``), and stops as soon as every row has produced EOS (or after
``max_new_tokens``).

The PPO trainer does not use these log-probs and values as the "old" ones: in bf16 the KV-cached
loop differs from the training forward pass by up to 3e-3 in log-prob (3e-2 in value), so the
trainer recomputes them with one forward pass in training precision (``PPOTrainer.old_policy``),
as TRL and OpenRLHF do. In fp32 both agree to ~1e-6 (tested).

Sampling: logits / temperature, then optional top-k and top-p (nucleus) truncation. The recorded
log-probs are those of the untruncated temperature-scaled distribution, the one the PPO update
differentiates (as in TRL and the "N implementation details" reference).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from rlhf.ppo.policy import SharedBaseModel, position_ids_from_mask


@dataclass
class Rollout:
    """A batch of prompts and sampled responses. Prompts are left-padded (all end at column
    ``P-1``), responses right-padded; ``response_mask`` is 1 for every sampled token up to and
    including EOS."""

    prompt_ids: torch.Tensor       # [B, P]
    prompt_mask: torch.Tensor      # [B, P]
    response_ids: torch.Tensor     # [B, T]
    response_mask: torch.Tensor    # [B, T] float
    logprobs: torch.Tensor         # [B, T] float32, 0 at padding
    entropy: torch.Tensor          # [B, T] float32
    values: Optional[torch.Tensor]  # [B, T] float32 (value head) or None
    ended: torch.Tensor            # [B] bool: the response ends with EOS
    prompt_index: Optional[list[int]] = None  # rows of the prompt dataset (for text-based scoring)

    @property
    def prompt_width(self) -> int:
        return self.prompt_ids.shape[1]

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.response_ids], 1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.response_mask.to(self.prompt_mask.dtype)], 1)

    @property
    def lengths(self) -> torch.Tensor:
        return self.response_mask.sum(1).long()

    @property
    def last_index(self) -> torch.Tensor:
        """Column of each row's last real token (the response's last token, or the prompt's)."""
        return self.prompt_width + self.lengths - 1

    def select(self, index: torch.Tensor) -> "Rollout":
        return Rollout(**{k: (v[index] if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()})


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k / the top-p nucleus to -inf (rows `[B, V]`). The nucleus is the
    smallest set of most likely tokens whose probability reaches ``top_p`` (always ≥ 1 token)."""
    if top_k and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        # drop a token when the tokens before it already reach top_p
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample(logits: torch.Tensor) -> torch.Tensor:
    """One token per row from softmax(logits), by the exponential race: argmax p_i / E_i with
    E_i ~ Exp(1) picks i with probability p_i (the Gumbel-max trick in another form), and is far
    faster than torch.multinomial over a 50k vocabulary on CPU."""
    probs = torch.softmax(logits, dim=-1)
    return probs.div_(torch.empty_like(probs).exponential_()).argmax(-1)


@torch.no_grad()
def generate(model: SharedBaseModel, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
             max_new_tokens: int, eos_token_id: int, pad_token_id: int, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0) -> Rollout:
    """Sample up to ``max_new_tokens`` per prompt with the policy adapter active.

    With the base sharded (``model.sharded``) every process must run as many forward passes: a
    process whose rows have all ended keeps decoding (outputs discarded, nothing sampled, so its
    rollout and random stream are those of the unsharded loop) until every process has ended."""
    from rlhf import distributed
    batch, width = prompt_ids.shape
    device = prompt_ids.device
    mask = torch.cat([prompt_mask, prompt_mask.new_ones(batch, max_new_tokens)], 1)
    positions = position_ids_from_mask(prompt_mask)
    hidden, head_logits, cache = model.states_and_logits(prompt_ids, prompt_mask, positions, use_cache=True)
    h = hidden[:, -1]
    next_position = positions[:, -1:] + 1
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    tokens, logprobs, entropies, values, active = [], [], [], [], []
    with_values = model.value_model == "head"
    ended_here = False  # sharded: this process's rows have all ended, the others' have not
    for step in range(max_new_tokens):
        if not ended_here:
            logits = model.last_logits(hidden, head_logits) / temperature
            log_p = torch.log_softmax(logits, dim=-1)
            sample_from = filter_logits(logits, top_k, top_p) if (top_k or top_p < 1.0) else logits
            token = sample(sample_from)
            token = torch.where(done, torch.full_like(token, pad_token_id), token)
            tokens.append(token)
            logprobs.append(log_p.gather(1, token[:, None]).squeeze(1))
            entropies.append(-(log_p.exp() * log_p).sum(-1))
            if with_values:
                values.append(model.values_from_hidden(h))
            active.append(~done)
            done = done | (token == eos_token_id)
        if step + 1 == max_new_tokens:
            break
        if getattr(model, "sharded", False):  # one all-reduce a token: stop together
            ended_here = bool(done.all())
            if distributed.everyone(ended_here):
                break
        elif bool(done.all()):
            break
        hidden, head_logits, cache = model.states_and_logits(token[:, None], mask[:, :width + step + 1],
                                                             next_position, past_key_values=cache, use_cache=True)
        h = hidden[:, -1]
        next_position = next_position + 1
    response_mask = torch.stack(active, 1).to(torch.float32)
    return Rollout(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask,
        response_ids=torch.stack(tokens, 1),
        response_mask=response_mask,
        logprobs=torch.stack(logprobs, 1) * response_mask,
        entropy=torch.stack(entropies, 1) * response_mask,
        values=(torch.stack(values, 1) * response_mask) if with_values else None,
        ended=done,
    )
