"""Log-probabilities (and entropies) of chosen tokens straight from hidden states, without ever
holding a `[tokens, vocab]` float32 log-softmax, nor even the logits of all positions at once.

`token_logprobs(hidden, lm_head_weight, labels)` projects the hidden states to the vocabulary a
chunk of positions at a time, keeps only `logsumexp` and the chosen token's logit per position, and
recomputes each chunk's logits in the backward pass (the same trick as fused linear cross-entropy
kernels, e.g. Liger Kernel / Wijmans et al. 2024 "Cut Your Losses in Large-Vocabulary Language
Models"). Memory is O(tokens·hidden + chunk·vocab) instead of O(tokens·vocab), with the same
numbers as `log_softmax(head(h) / τ).gather(...)` (tested).

The head is what the model's own output layer computes (`LogitHead`): `h @ W.T`, plus the layer's
bias when it has one (Phi, GPT-J, CodeGen), times a scale (Granite divides by `logits_scaling`,
Cohere multiplies by `logit_scale`), then Gemma 2/3's soft-capping `c·tanh(z/c)`. `logit_head(lm)`
reads those from a model; a model whose head does something else is caught by
`SharedBaseModel`'s probe, which then uses the model's own logits.

Derivatives used in backward, with z the final scaled logits, r the raw ones and p = softmax(z):
  ∂ log p_y / ∂z = onehot(y) − p;     ∂H / ∂z = −p ⊙ (log p + H);
  ∂z / ∂r = s/τ (no cap) or s/τ·(1 − tanh²(s·r/c)) (cap c).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

# Float32 elements per chunk of logits (64 MiB): small next to a model, large enough to keep
# the matmuls efficient.
CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class LogitHead:
    """The output layer of a causal LM: logits = softcap(scale · (h @ weight.T + bias))."""

    weight: torch.Tensor
    bias: Optional[torch.Tensor] = None
    scale: float = 1.0
    softcap: Optional[float] = None

    def logits(self, hidden: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """Logits `[..., V]` in float32 (float64 kept), divided by the temperature."""
        z, _ = _final_logits(hidden, self.weight, self.bias, self.scale, self.softcap, 1.0 / temperature)
        return z


def logit_head(lm) -> Optional[LogitHead]:
    """The head of a Hugging Face causal LM as a `LogitHead`, or None when its output layer is not a
    plain linear layer (e.g. wrapped by a LoRA adapter). Config attributes read: `logits_scaling`
    (Granite), `logit_scale` (Cohere), `final_logit_softcapping` (Gemma 2/3)."""
    layer = lm.get_output_embeddings()
    if type(layer) is not torch.nn.Linear:
        return None
    config = lm.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    scale = 1.0
    if getattr(text, "logits_scaling", None):
        scale /= float(text.logits_scaling)
    if getattr(text, "logit_scale", None):
        scale *= float(text.logit_scale)
    softcap = getattr(text, "final_logit_softcapping", None)
    return LogitHead(layer.weight, layer.bias, scale, float(softcap) if softcap else None)


def _chunk_rows(vocab: int, chunk_rows: int | None) -> int:
    return chunk_rows or max(1, CHUNK_ELEMENTS // vocab)


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    """float32 for half-precision models (softmax statistics need it), float64 kept as is."""
    return torch.promote_types(hidden.dtype, torch.float32)


def _final_logits(hidden, weight, bias, scale, softcap, inv_temperature):
    """(z, ∂z/∂r): the final logits in the compute dtype and their derivative by the raw logits r
    (a scalar, or a tensor with soft-capping). The matmul and bias run in the model's dtype, as the
    model's own `F.linear` does; the rest in float32."""
    raw = torch.nn.functional.linear(hidden, weight, bias).to(_compute_dtype(hidden))
    factor = scale * inv_temperature
    if softcap:
        t = torch.tanh(raw * (scale / softcap))
        return t * (softcap * inv_temperature), factor * (1 - t * t)
    return (raw * factor if factor != 1.0 else raw), factor


class _LinearLogProb(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, head, inv_temperature, chunk_rows, with_entropy):
        scale, softcap = head
        n = hidden.shape[0]
        logp = torch.empty(n, dtype=_compute_dtype(hidden), device=hidden.device)
        lse = torch.empty_like(logp)
        entropy = torch.empty_like(logp) if with_entropy else torch.zeros(0, device=hidden.device)
        for s in range(0, n, chunk_rows):
            z, _ = _final_logits(hidden[s:s + chunk_rows], weight, bias, scale, softcap, inv_temperature)
            lse_c = torch.logsumexp(z, dim=-1)
            lse[s:s + chunk_rows] = lse_c
            logp[s:s + chunk_rows] = z.gather(-1, labels[s:s + chunk_rows, None]).squeeze(-1) - lse_c
            if with_entropy:
                p = torch.exp(z - lse_c[:, None])
                entropy[s:s + chunk_rows] = lse_c - (p * z).sum(-1)
        ctx.save_for_backward(hidden, weight, bias, labels, lse, entropy)
        ctx.head, ctx.inv_temperature, ctx.chunk_rows, ctx.with_entropy = head, inv_temperature, chunk_rows, with_entropy
        ctx.set_materialize_grads(False)
        if not with_entropy:
            ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, bias, labels, lse, entropy = ctx.saved_tensors
        (scale, softcap), rows, inv_t = ctx.head, ctx.chunk_rows, ctx.inv_temperature
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        dtype = _compute_dtype(hidden)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=dtype, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=dtype, device=bias.device) if need_b else None
        if grad_entropy is not None and not ctx.with_entropy:
            grad_entropy = None
        for s in range(0, hidden.shape[0], rows):
            h = hidden[s:s + rows]
            z, dz_dr = _final_logits(h, weight, bias, scale, softcap, inv_t)
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
            grad_r = grad_z * dz_dr if not isinstance(dz_dr, float) or dz_dr != 1.0 else grad_z
            if need_h:
                grad_h[s:s + rows] = (grad_r.to(weight.dtype) @ weight).to(hidden.dtype)
            if need_w:
                grad_w += grad_r.t() @ h.to(z.dtype)
            if need_b:
                grad_b += grad_r.sum(0)
        return (grad_h, (grad_w.to(weight.dtype) if need_w else None), (grad_b.to(bias.dtype) if need_b else None),
                None, None, None, None, None)


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor | LogitHead, labels: torch.Tensor,
                   temperature: float = 1.0, with_entropy: bool = False,
                   chunk_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax(head(hidden) / temperature)[labels] for hidden `[..., H]` and labels `[...]`;
    `weight` is the output layer's weight (a bias-free, unscaled head) or a `LogitHead`.

    Returns `(logprobs, entropy)` in float32 (float64 for float64 inputs) with the labels' shape; `entropy` is None unless asked
    for (then it is differentiable too, for an entropy bonus).
    """
    head = weight if isinstance(weight, LogitHead) else LogitHead(weight)
    shape = labels.shape
    h = hidden.reshape(-1, hidden.shape[-1])
    logp, entropy = _LinearLogProb.apply(h, head.weight, head.bias, labels.reshape(-1), (head.scale, head.softcap),
                                         1.0 / temperature, _chunk_rows(head.weight.shape[0], chunk_rows),
                                         with_entropy)
    return logp.reshape(shape), (entropy.reshape(shape) if with_entropy else None)


def logits_logprobs(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
                    with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The same from full logits `[..., V]` (the model's own, when its head cannot be reproduced)."""
    z = logits.to(_compute_dtype(logits)) / temperature
    log_p = torch.log_softmax(z, dim=-1)
    logp = log_p.gather(-1, labels[..., None]).squeeze(-1)
    return logp, (-(log_p.exp() * log_p).sum(-1) if with_entropy else None)
