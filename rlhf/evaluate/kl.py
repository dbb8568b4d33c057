"""KL(tuned ‖ base) on the eval prompts, measured along the tuned model's own responses.

For each response token y_t (EOS included, padding excluded) we compute two per-token quantities:

* k1 = log π_tuned(y_t | x, y_<t) − log π_base(y_t | x, y_<t), the log-ratio. Summed over a response
  it is the Monte-Carlo estimate of the sequence KL that PPO's KL penalty uses (Schulman, "Approximating
  KL divergence", 2020). It is unbiased only when responses are *sampled* from the tuned model at
  temperature 1; on greedy responses it is the log-ratio along the tuned model's mode, a proxy that is
  usually positive but can be negative.
* full = Σ_v π_tuned(v | ·) (log π_tuned(v | ·) − log π_base(v | ·)), the exact KL of the two
  next-token distributions at that position. Its sum over a response is the sequence KL by the chain
  rule when responses are sampled from the tuned model, with less variance than k1 (it averages over the
  vocabulary instead of one sampled token), and it is always ≥ 0, so it stays meaningful on greedy
  responses.

Both are reported per token (mean over all response tokens of all prompts) and per sequence (mean over
prompts of the per-response sum). Distributions are the models' own (temperature 1, no top-p/top-k).
The tuned model's logits come from generation itself (nothing computed twice); only the base model
runs one extra forward pass over prompt + tuned response.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def logprobs_of(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[tokens] without materializing the whole log-softmax: [..., V], [...] -> [...]."""
    logits = logits.float()
    return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def full_kl(tuned_logits: torch.Tensor, base_logits: torch.Tensor) -> torch.Tensor:
    """Exact KL(softmax(tuned) ‖ softmax(base)) over the last (vocabulary) axis: [..., V] -> [...]."""
    lt = torch.log_softmax(tuned_logits.float(), dim=-1)
    lb = torch.log_softmax(base_logits.float(), dim=-1)
    return (lt.exp() * (lt - lb)).sum(-1)


def kl_terms(tuned_logits: torch.Tensor, base_logits: torch.Tensor,
             tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token (k1, full) for response `tokens` [B, R] given both models' logits [B, R, V] at the
    positions that predict them. Computed one row at a time so memory stays at one [R, V] block."""
    k1 = torch.empty(tokens.shape, dtype=torch.float32, device=tokens.device)
    full = torch.empty_like(k1)
    for i in range(tokens.shape[0]):
        k1[i] = logprobs_of(tuned_logits[i], tokens[i]) - logprobs_of(base_logits[i], tokens[i])
        full[i] = full_kl(tuned_logits[i], base_logits[i])
    return k1, full


def response_logits(model, sequences: torch.Tensor, attention_mask: torch.Tensor,
                    response_length: int) -> torch.Tensor:
    """Logits [B, R, V] at the positions that predict the last `response_length` tokens of
    `sequences` (left-padded prompt + response). Position ids follow the attention mask, as in
    generation, so left padding does not shift positions."""
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    kwargs = dict(input_ids=sequences, attention_mask=attention_mask, position_ids=position_ids,
                  use_cache=False)
    try:  # keep only the logits we need: [B, L, V] for a long prompt is large
        logits = model(**kwargs, logits_to_keep=response_length + 1).logits
    except TypeError:  # a model class without `logits_to_keep`
        logits = model(**kwargs).logits
    return logits[:, -(response_length + 1):-1]


@dataclass
class KLResult:
    """Per-token means and per-sequence means of both estimators, and per-prompt sums."""

    k1_token_mean: float
    k1_sequence_mean: float
    full_token_mean: float
    full_sequence_mean: float
    k1_per_sequence: list[float] = field(default_factory=list)
    full_per_sequence: list[float] = field(default_factory=list)
    tokens: int = 0


class KLAccumulator:
    """Collects per-token KL terms batch by batch, keyed by example index."""

    def __init__(self):
        self._k1: dict[int, tuple[float, int]] = {}
        self._full: dict[int, float] = {}

    def add(self, indices: list[int], k1: torch.Tensor, full: torch.Tensor, mask: torch.Tensor) -> None:
        mask = mask.float()
        k1_sum = (k1 * mask).sum(-1).tolist()
        full_sum = (full * mask).sum(-1).tolist()
        counts = mask.sum(-1).long().tolist()
        for j, idx in enumerate(indices):
            self._k1[idx] = (k1_sum[j], counts[j])
            self._full[idx] = full_sum[j]

    def merge(self, other: "KLAccumulator") -> None:
        """Add another accumulator's examples (another process's share of the prompts)."""
        self._k1.update(other._k1)
        self._full.update(other._full)

    def result(self) -> KLResult:
        order = sorted(self._k1)
        tokens = sum(self._k1[i][1] for i in order)
        k1_seq = [self._k1[i][0] for i in order]
        full_seq = [self._full[i] for i in order]
        nan = float("nan")
        n = len(order)
        return KLResult(
            k1_token_mean=sum(k1_seq) / tokens if tokens else nan,
            k1_sequence_mean=sum(k1_seq) / n if n else nan,
            full_token_mean=sum(full_seq) / tokens if tokens else nan,
            full_sequence_mean=sum(full_seq) / n if n else nan,
            k1_per_sequence=k1_seq, full_per_sequence=full_seq, tokens=tokens)


def measure_on_batches(base_context, accumulator: KLAccumulator):
    """An `on_batch` hook for `inference.generate` (called with `keep_logits=True` on the tuned model):
    runs the base model (entered through the context manager factory `base_context`, e.g.
    `PolicyPair.base`) over each batch's prompt + tuned response and adds the KL terms."""

    def on_batch(batch) -> None:
        length = batch.response_tokens.shape[1]
        with base_context() as base, torch.inference_mode():
            base_logits = response_logits(base, batch.sequences, batch.attention_mask, length)
        k1, full = kl_terms(batch.logits, base_logits, batch.response_tokens)
        accumulator.add(batch.indices, k1, full, batch.response_mask)

    return on_batch
