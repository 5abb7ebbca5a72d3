"""Per-position quantities AVA needs from the vocabulary, without a full [N, vocab] tensor.

Eq. 12 of Cai et al. (2025) defines the pretrained Q values of a language model as

    Q(s, a) = log softmax_a(alpha * pi(. | s)),    pi = softmax(logits),

and only the taken action's Q enters the objectives, so the op returns Q(s_i, a_i) for N positions
the caller has already gathered. Written naively, this materialises [N, V] float32 logits and
probabilities and autograd keeps several such tensors for the backward pass: at N = 8192 and
V = 150k every copy is 4.9 GB. ``pretrained_q_values`` instead walks over row chunks inside a custom
autograd function that saves only its inputs and recomputes each chunk's logits in the backward
pass, so at most one chunk's [chunk, V] buffers are alive at any time and the gradients are exact.

A fused Triton kernel (LM-head matmul + both softmaxes in one pass over the vocabulary, in the style
of fused linear cross-entropy) would also remove the per-chunk [chunk, V] buffers on CUDA; it is a
possible follow-up, not implemented here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from avalign.errors import ConfigError

# With chunk_size=None a chunk holds at most this many logits: 2**26 float32 values are 256 MiB per
# [chunk, V] buffer (the forward needs one, the backward two), whatever the vocabulary size. That is
# 2048 rows at V = 32k and 256 rows at V = 256k, still wide enough for the LM-head matmul to run at
# full speed.
AUTO_CHUNK_ELEMENTS = 2**26


def pretrained_q_values(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    actions: torch.Tensor,
    alpha: float,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Pretrained Q values of the taken actions (Eq. 12): Q(s_i, a_i) = u_i[a_i] - logsumexp(u_i).

    Here u_i = alpha * softmax(hidden_i @ weight.T + bias) is the scaled policy of position i.

    Args:
        hidden: [N, H] final hidden states of the positions that enter the loss (any float dtype).
        weight: [V, H] LM-head weight, same dtype as ``hidden``.
        bias: [V] LM-head bias, or None.
        actions: [N] integer token ids a_i.
        alpha: the temperature-like scale of Eq. 12.
        chunk_size: rows per chunk. None picks ``AUTO_CHUNK_ELEMENTS // V`` rows (at least one), so a
            [chunk, V] float32 buffer stays at 256 MiB for any vocabulary.

    Returns:
        [N] Q values in float32 (float64 when the inputs are float64). The logits are computed in the
        inputs' dtype, like the model's own LM head, and everything after them in float32; gradients
        come back in the dtypes of ``hidden``, ``weight`` and ``bias``, with the weight and bias
        gradients accumulated over chunks in float32. Under ``torch.autocast`` the LM head runs in the
        autocast dtype, as ``F.linear`` would. Not twice differentiable.
    """
    if hidden.dim() != 2 or weight.dim() != 2:
        raise ConfigError(
            f"hidden must be [N, H] and weight [V, H]; got {tuple(hidden.shape)} and {tuple(weight.shape)}"
        )
    if actions.shape != hidden.shape[:1] or actions.dtype not in (torch.int64, torch.int32):
        raise ConfigError(
            f"actions must be an integer tensor of shape [{hidden.shape[0]}]; "
            f"got {actions.dtype} {tuple(actions.shape)}"
        )
    if chunk_size is None:
        chunk_size = max(1, AUTO_CHUNK_ELEMENTS // max(1, weight.shape[0]))
    elif chunk_size < 1:
        raise ConfigError(f"chunk_size must be a positive number of rows; got {chunk_size}")
    alpha = float(alpha)
    actions = actions.long()

    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        # Autocast would run F.linear in its low-precision dtype. Cast once here, where autograd sees
        # the casts, so that the forward pass and the backward's recomputation of the logits use the
        # same dtype whatever the autocast state is when backward runs.
        dtype = torch.get_autocast_dtype(device_type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)

    with torch.autocast(device_type, enabled=False):
        needs_grad = any(t is not None and t.requires_grad for t in (hidden, weight, bias))
        if torch.is_grad_enabled() and needs_grad:
            return _PretrainedQ.apply(hidden, weight, bias, actions, alpha, chunk_size)
        # Inference: nothing to save, so skip the autograd function altogether.
        with torch.no_grad():
            return _q_values(hidden, weight, bias, actions, alpha, chunk_size)


class _PretrainedQ(torch.autograd.Function):
    """Chunked Eq. 12 that saves only its inputs and recomputes each chunk's logits in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, actions, alpha, chunk_size):
        ctx.save_for_backward(hidden, weight, bias, actions)
        ctx.alpha, ctx.chunk_size = alpha, chunk_size
        return _q_values(hidden, weight, bias, actions, alpha, chunk_size)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_q):
        hidden, weight, bias, actions = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        acc_dtype = _compute_dtype(hidden.dtype)
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device) if need_weight else None
        grad_bias = torch.zeros(weight.shape[0], dtype=acc_dtype, device=weight.device) if need_bias else None

        # backward may run inside a user's autocast region; the dtypes below are chosen explicitly.
        with torch.autocast(hidden.device.type, enabled=False):
            for rows in _row_chunks(hidden.shape[0], ctx.chunk_size):
                h = hidden[rows]
                grad_logits = _grad_logits(_logits(h, weight, bias), actions[rows], ctx.alpha, grad_q[rows])
                if need_hidden:
                    grad_hidden[rows] = grad_logits.to(weight.dtype) @ weight
                if need_weight:
                    grad_weight.addmm_(grad_logits.T, h.to(acc_dtype))
                if need_bias:
                    grad_bias += grad_logits.sum(0)
                del grad_logits  # free this chunk's [chunk, V] buffer before the next one is made

        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        if grad_bias is not None:
            grad_bias = grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None


def _q_values(hidden, weight, bias, actions, alpha, chunk_size):
    """Forward pass over row chunks; one chunk's [chunk, V] buffer at a time."""
    q = torch.empty(hidden.shape[0], dtype=_compute_dtype(hidden.dtype), device=hidden.device)
    for rows in _row_chunks(hidden.shape[0], chunk_size):
        scaled = _softmax_(_logits(hidden[rows], weight, bias)).mul_(alpha)  # u = alpha * pi
        taken = scaled.gather(1, actions[rows, None]).squeeze(1)
        # logsumexp(u) in place. u lies in [0, alpha], but the max shift keeps exp finite for large alpha.
        shift = scaled.amax(1, keepdim=True)
        log_norm = scaled.sub_(shift).exp_().sum(1).log_() + shift.squeeze(1)
        q[rows] = taken - log_norm
        del scaled  # free this chunk's [chunk, V] buffer before the next one is made
    return q


def _grad_logits(logits, actions, alpha, grad_q):
    """grad_q * dQ/dz for one chunk, written into the logits' buffer and one more of the same size.

    With p = softmax(z), u = alpha * p, s = softmax(u) and Q = u[a] - logsumexp(u):
    dQ/du = onehot(a) - s, and through the softmax Jacobian
    dQ/dz_j = alpha * p_j * (onehot(a)_j - s_j - c),  c = p[a] - sum_k p_k s_k.
    """
    probs = _softmax_(logits)
    soft = _softmax_(probs * alpha)
    probs_taken = probs.gather(1, actions[:, None])
    c = probs_taken - torch.einsum("nv,nv->n", probs, soft)[:, None]  # einsum avoids a [chunk, V] product
    scale = (alpha * grad_q.to(probs.dtype))[:, None]
    # -scale * p_j * (s_j + c) for every j, then + scale * p[a] at j = a: the onehot(a) term.
    grad = soft.add_(c).mul_(probs).mul_(-scale)
    return grad.scatter_add_(1, actions[:, None], scale * probs_taken)


def _logits(hidden, weight, bias):
    """LM-head logits in the inputs' dtype (as the model computes them), then at least float32."""
    logits = F.linear(hidden, weight, bias)
    return logits.to(_compute_dtype(logits.dtype))


def _softmax_(x):
    """Row softmax in place, so a chunk needs no second [chunk, V] buffer for it."""
    x.sub_(x.amax(1, keepdim=True)).exp_()
    return x.div_(x.sum(1, keepdim=True))


def _compute_dtype(dtype):
    """float32 for half-precision and float32 inputs; float64 stays float64 (used by gradcheck)."""
    return torch.promote_types(dtype, torch.float32)


def _row_chunks(n, chunk_size):
    return [slice(start, start + chunk_size) for start in range(0, n, chunk_size)]
