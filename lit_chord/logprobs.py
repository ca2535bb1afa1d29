"""Per-token log-probabilities (and entropies) from the last hidden states, without the full-vocabulary blow-up.

For a 152k-token vocabulary, B·T = 4,096 tokens make a (B·T, V) float32 log-softmax of 2.5 GB, plus as much again
for its gradient. `token_logprobs` projects ``chunk_size`` tokens at a time inside a custom autograd function
that keeps only each token's log-sum-exp (and entropy) and recomputes the chunk's logits in backward: one extra
matmul, a (chunk, V) buffer instead of (B·T, V). Gradients reach both the hidden states and the LM-head weight.
"""

from __future__ import annotations

import torch
from torch import Tensor


class _ChunkedLogprobs(torch.autograd.Function):
    """log p(target) (and entropy) of softmax(h·Wᵀ/τ), chunk by chunk; only per-token stats are saved."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, chunk_size, with_entropy):  # (N, H), (V, H), (N,)
        n, v = hidden.shape[0], weight.shape[0]
        logprobs = torch.empty(n, dtype=torch.float32, device=hidden.device)  # (N,)
        lse = torch.empty_like(logprobs)
        entropy = torch.empty_like(logprobs) if with_entropy else None
        z = torch.empty(min(chunk_size, n), v, dtype=torch.float32, device=hidden.device)  # reused (C, V) buffer
        e = torch.empty_like(z) if with_entropy else None
        for s in range(0, n, chunk_size):
            zc = _chunk_logits(hidden[s : s + chunk_size], weight, temperature, z)  # (C, V) float32
            rows = zc.shape[0]
            target_logit = zc.gather(1, targets[s : s + chunk_size, None]).squeeze(1)
            zmax = zc.amax(dim=1, keepdim=True)
            zc.sub_(zmax)  # z − max, in place
            if with_entropy:
                ec = torch.exp(zc, out=e[:rows])
                total = ec.sum(dim=1)
                # H = log Σe − Σ e·(z − max) / Σe, since log p = (z − max) − log Σe
                entropy[s : s + rows] = total.log() - zc.mul_(ec).sum(dim=1) / total
            else:
                total = zc.exp_().sum(dim=1)
            lse[s : s + rows] = zmax.squeeze(1) + total.log()
            logprobs[s : s + rows] = target_logit - lse[s : s + rows]
        ctx.save_for_backward(hidden, weight, targets, lse, entropy if with_entropy else lse)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        ctx.set_materialize_grads(False)  # an output without a gradient (e.g. a metric-only entropy) arrives as None
        return (logprobs, entropy) if with_entropy else logprobs

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy=None):
        hidden, weight, targets, lse, entropy = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        n, chunk = hidden.shape[0], ctx.chunk_size
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        # Accumulate dW in float32 across chunks even when the weight is bf16.
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        z = torch.empty(min(chunk, n), weight.shape[0], dtype=torch.float32, device=hidden.device)
        use_entropy = grad_entropy is not None  # skip the entropy's share of the work when it gets no gradient
        p = torch.empty_like(z) if use_entropy else None
        # d/dz of (logits / τ) is 1/τ: fold it into the per-token upstream gradients.
        g_lp = grad_logprobs.float() / ctx.temperature if grad_logprobs is not None else lse.new_zeros(n)  # (N,)
        g_ent = grad_entropy.float() / ctx.temperature if use_entropy else None
        with torch.no_grad(), torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, n, chunk):
                h = hidden[s : s + chunk]
                gc = _chunk_logits(h, weight, ctx.temperature, z)  # (C, V)
                rows = gc.shape[0]
                gc.sub_(lse[s : s + rows, None])  # log p
                g = g_lp[s : s + rows, None]
                if use_entropy:
                    # ∂H/∂z_j = −p_j (log p_j + H); ∂log p_t/∂z_j = 1[j = t] − p_j
                    pc = torch.exp(gc, out=p[:rows])
                    gc.add_(entropy[s : s + rows, None]).mul_(-g_ent[s : s + rows, None]).sub_(g).mul_(pc)
                else:
                    gc.exp_().mul_(-g)
                gc.scatter_add_(1, targets[s : s + rows, None], g)  # + g·onehot(target)
                gc_in = gc if gc.dtype == weight.dtype else gc.to(weight.dtype)
                if need_hidden:
                    torch.mm(gc_in, weight, out=grad_hidden[s : s + rows])
                if need_weight and h.dtype == torch.float32:
                    grad_weight.addmm_(gc_in.T, h)
                elif need_weight:
                    grad_weight.add_(gc_in.T @ h)  # bf16 product, float32 sum over chunks
        grad_weight = grad_weight.to(weight.dtype) if need_weight else None
        return grad_hidden, grad_weight, None, None, None, None


def _chunk_logits(h: Tensor, weight: Tensor, temperature: float, out: Tensor) -> Tensor:
    """float32 logits h·Wᵀ/τ of one chunk, written into the leading rows of the reusable buffer ``out``."""
    zc = out[: h.shape[0]]
    h = h if temperature == 1.0 else h / temperature  # scale the (C, H) input, not the (C, V) logits
    if h.dtype == torch.float32 and weight.dtype == torch.float32:
        return torch.mm(h, weight.T, out=zc)
    return zc.copy_(h @ weight.T)  # bf16/fp16 matmul, softmax maths in float32


def token_logprobs(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    with_entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Log-probabilities of ``targets`` (and entropies) under softmax(hidden·Wᵀ/τ), without (B·T, V) logits.

    Processes ``chunk_size`` tokens at a time and recomputes each chunk's logits in backward, saving only the
    per-token logsumexp (and entropy). Gradients flow to ``hidden`` and ``weight`` from both outputs.

    Args:
        hidden: ``(B, T, H)`` last hidden states; position t predicts ``targets[:, t]``.
        weight: ``(V, H)`` LM-head weight (no bias).
        targets: ``(B, T)`` token ids in [0, V) (masked positions must still hold a valid id, e.g. the pad id).
        temperature: Logits are divided by it (the sampling temperature).
        chunk_size: Tokens per chunk; peak extra memory is about ``chunk_size·V`` float32 (twice with entropy).
        with_entropy: Also return the entropy of each token's distribution.

    Returns:
        ``(logprobs, entropy)``, both ``(B, T)`` float32; ``entropy`` is None unless ``with_entropy``.
    """
    b, t = targets.shape
    device = hidden.device.type
    # Under autocast the LM head would run in the autocast dtype: cast here, then keep autocast out of the chunks.
    autocast = torch.is_autocast_enabled(device)
    dtype = torch.get_autocast_dtype(device) if autocast else torch.promote_types(hidden.dtype, weight.dtype)
    flat = (hidden.reshape(b * t, -1).to(dtype), weight.to(dtype), targets.reshape(-1), float(temperature), chunk_size)
    with torch.autocast(device, enabled=False):
        outputs = _ChunkedLogprobs.apply(*flat, with_entropy)
    if with_entropy:
        return outputs[0].view(b, t), outputs[1].view(b, t)
    return outputs.view(b, t), None


def naive_token_logprobs(
    hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float = 1.0, with_entropy: bool = False
) -> tuple[Tensor, Tensor | None]:
    """Reference for `token_logprobs`: full float32 log_softmax over the vocabulary (memory O(B·T·V))."""
    logits = (hidden @ weight.T).float()  # (B, T, V)
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logprobs = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1) if with_entropy else None
    return logprobs, entropy
