"""Log-probabilities (and entropies) of chosen tokens straight from hidden states, without ever
holding a `[tokens, vocab]` float32 log-softmax, nor even the logits of all positions at once.

`token_logprobs(hidden, lm_head_weight, labels)` projects the hidden states to the vocabulary a
chunk of positions at a time, keeps only `logsumexp` and the chosen token's logit per position, and
recomputes each chunk's logits in the backward pass (the same trick as fused linear cross-entropy
kernels, e.g. Liger Kernel / Wijmans et al. 2024 "Cut Your Losses in Large-Vocabulary Language
Models"). Memory is O(tokens·hidden + chunk·vocab) instead of O(tokens·vocab), with the same
numbers as `log_softmax(h @ W.T / τ).gather(...)` (tested).

Derivatives used in backward, with z the scaled logits and p = softmax(z):
  ∂ log p_y / ∂z = onehot(y) − p;     ∂H / ∂z = −p ⊙ (log p + H).
"""

from __future__ import annotations

import torch

# Float32 elements per chunk of logits (64 MiB): small next to a model, large enough to keep
# the matmuls efficient.
CHUNK_ELEMENTS = 1 << 24


def _chunk_rows(vocab: int, chunk_rows: int | None) -> int:
    return chunk_rows or max(1, CHUNK_ELEMENTS // vocab)


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    """float32 for half-precision models (softmax statistics need it), float64 kept as is."""
    return torch.promote_types(hidden.dtype, torch.float32)


def _scaled_logits(hidden: torch.Tensor, weight: torch.Tensor, inv_temperature: float) -> torch.Tensor:
    z = (hidden @ weight.t()).to(_compute_dtype(hidden))
    return z * inv_temperature if inv_temperature != 1.0 else z


class _LinearLogProb(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, inv_temperature, chunk_rows, with_entropy):
        n = hidden.shape[0]
        logp = torch.empty(n, dtype=_compute_dtype(hidden), device=hidden.device)
        lse = torch.empty_like(logp)
        entropy = torch.empty_like(logp) if with_entropy else torch.zeros(0, device=hidden.device)
        for s in range(0, n, chunk_rows):
            z = _scaled_logits(hidden[s:s + chunk_rows], weight, inv_temperature)
            lse_c = torch.logsumexp(z, dim=-1)
            lse[s:s + chunk_rows] = lse_c
            logp[s:s + chunk_rows] = z.gather(-1, labels[s:s + chunk_rows, None]).squeeze(-1) - lse_c
            if with_entropy:
                p = torch.exp(z - lse_c[:, None])
                entropy[s:s + chunk_rows] = lse_c - (p * z).sum(-1)
        ctx.save_for_backward(hidden, weight, labels, lse, entropy)
        ctx.inv_temperature, ctx.chunk_rows, ctx.with_entropy = inv_temperature, chunk_rows, with_entropy
        ctx.set_materialize_grads(False)
        if not with_entropy:
            ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, labels, lse, entropy = ctx.saved_tensors
        rows, inv_t = ctx.chunk_rows, ctx.inv_temperature
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=_compute_dtype(hidden), device=weight.device) if need_w else None
        if grad_entropy is not None and not ctx.with_entropy:
            grad_entropy = None
        for s in range(0, hidden.shape[0], rows):
            h = hidden[s:s + rows]
            z = _scaled_logits(h, weight, inv_t)
            log_p = z - lse[s:s + rows, None]
            p = torch.exp(log_p)
            grad_z = torch.zeros_like(z)
            if grad_logp is not None:
                g = grad_logp[s:s + rows].to(z.dtype)
                grad_z -= p * g[:, None]
                grad_z.scatter_add_(-1, labels[s:s + rows, None], g[:, None])
            if grad_entropy is not None:
                g = grad_entropy[s:s + rows].to(z.dtype)
                grad_z -= p * (log_p + entropy[s:s + rows, None]) * g[:, None]
            if inv_t != 1.0:
                grad_z *= inv_t
            if need_h:
                grad_h[s:s + rows] = (grad_z.to(weight.dtype) @ weight).to(hidden.dtype)
            if need_w:
                grad_w += grad_z.t() @ h.to(z.dtype)
        return grad_h, (grad_w.to(weight.dtype) if need_w else None), None, None, None, None


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                   temperature: float = 1.0, with_entropy: bool = False,
                   chunk_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax(hidden @ weight.T / temperature)[labels] for hidden `[..., H]` and labels `[...]`.

    Returns `(logprobs, entropy)` in float32 (float64 for float64 inputs) with the labels' shape; `entropy` is None unless asked
    for (then it is differentiable too, for an entropy bonus).
    """
    shape = labels.shape
    h = hidden.reshape(-1, hidden.shape[-1])
    logp, entropy = _LinearLogProb.apply(h, weight, labels.reshape(-1), 1.0 / temperature,
                                         _chunk_rows(weight.shape[0], chunk_rows), with_entropy)
    return logp.reshape(shape), (entropy.reshape(shape) if with_entropy else None)
