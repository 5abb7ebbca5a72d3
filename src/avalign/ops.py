"""Per-position quantities AVA needs from the vocabulary, without a full [N, vocab] tensor.

Eq. 12 of Cai et al. (2025) defines the pretrained Q values of a language model as

    Q(s, a) = log softmax_a(alpha * pi(. | s)),    pi = softmax(logits),

and only the taken action's Q enters the objectives, so the op returns Q(s_i, a_i) for N positions
the caller has already gathered. Written naively, this materialises [N, V] float32 logits and
probabilities and autograd keeps several such tensors for the backward pass: at N = 8192 and
V = 150k every copy is 4.9 GB. ``pretrained_q_values`` instead walks over row chunks inside a custom
autograd function that saves only its inputs and recomputes each chunk's logits in the backward
pass, so at most one chunk's [chunk, V] buffers are alive at any time and the gradients are exact.

Two implementations of the per-chunk work, chosen with ``kernel``:

* ``"torch"``: the LM-head logits of a chunk are copied to float32 and both softmaxes run as torch
  passes over that copy (forward) or over it and one more [chunk, V] buffer (backward).
* ``"triton"`` (avalign.kernels): the LM head stays a torch matmul in the inputs' dtype (bf16 on a GPU)
  with no float32 copy; one Triton kernel per chunk reads those logits twice (online max and sum, then
  the softmax of alpha * p) and writes Q plus four float32 numbers per row, which the backward pass
  reuses instead of recomputing the softmaxes; a second kernel turns the recomputed logits into their
  gradient in place. ``"auto"`` picks it on CUDA when triton is installed. The default is ``"torch"``
  until the kernels have been run and measured on a GPU (docs/performance.md).

Both accumulate the weight gradient over chunks in float32; on CUDA with half-precision inputs that is
one half-precision GEMM per chunk that writes into the float32 accumulator, not a float32 GEMM.
"""

from __future__ import annotations

import importlib.util
import os

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from avalign.errors import ConfigError

from .chunking import chunked_backward, compute_dtype, row_chunks

# With chunk_size=None a chunk holds at most this many logits: 2**26 float32 values are 256 MiB per
# [chunk, V] buffer (the forward needs one, the backward two), whatever the vocabulary size. That is
# 2048 rows at V = 32k and 256 rows at V = 256k, still wide enough for the LM-head matmul to run at
# full speed.
AUTO_CHUNK_ELEMENTS = 2**26

# Values of pretrained_q_values(kernel=...); see the module docstring.
Q_KERNELS = ("auto", "torch", "triton")
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def pretrained_q_values(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    actions: torch.Tensor,
    alpha: float,
    chunk_size: int | None = None,
    kernel: str = "torch",
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
        kernel: "torch", "triton" (avalign.kernels; CUDA, or CPU under TRITON_INTERPRET=1 for tests) or
            "auto": triton when it is installed, the tensors are on CUDA and their dtype is float16,
            bfloat16 or float32; torch otherwise.

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
    if kernel not in Q_KERNELS:
        raise ConfigError(f"unknown kernel '{kernel}'; expected one of {list(Q_KERNELS)}")
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

    function, forward = _PretrainedQ, _q_values
    kernels = _triton_kernels(kernel, hidden)
    if kernels is not None:
        function, forward = kernels.TritonPretrainedQ, kernels.triton_q_values

    with torch.autocast(device_type, enabled=False):
        needs_grad = any(t is not None and t.requires_grad for t in (hidden, weight, bias))
        if torch.is_grad_enabled() and needs_grad:
            return function.apply(hidden, weight, bias, actions, alpha, chunk_size)
        # Inference: nothing to save, so skip the autograd function altogether.
        with torch.no_grad():
            return forward(hidden, weight, bias, actions, alpha, chunk_size)


def _triton_kernels(kernel, hidden):
    """avalign.kernels where ``kernel`` selects it for these inputs, else None.

    ConfigError where ``kernel="triton"`` cannot run."""
    if kernel == "torch":
        return None
    installed = importlib.util.find_spec("triton") is not None  # without importing it (see below)
    if kernel == "auto":
        if not (installed and hidden.is_cuda and hidden.dtype in TRITON_DTYPES):
            return None
        from . import kernels

        # Interpreted kernels (TRITON_INTERPRET=1) would run on CUDA tensors too, but far slower than torch.
        return kernels if kernels.triton is not None and not kernels.INTERPRETED else None
    if not installed:
        raise ConfigError("kernel='triton' needs the triton package; use kernel='torch' or 'auto'")
    if hidden.dtype not in TRITON_DTYPES:
        raise ConfigError(f"kernel='triton' supports float16, bfloat16 and float32 inputs, not {hidden.dtype}")
    if hidden.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ConfigError(
            "kernel='triton' runs on CPU tensors only in Triton's interpreter: set TRITON_INTERPRET=1 before "
            "triton is first imported, or use kernel='torch'"
        )
    # Importing avalign.kernels decorates its kernels, and Triton fixes interpreted or compiled then, from
    # TRITON_INTERPRET: the checks above come first so that a refused call does not fix it.
    from . import kernels

    if kernels.triton is None:
        raise ConfigError("kernel='triton': the triton package is installed but fails to import")
    if hidden.device.type == "cpu" and not kernels.INTERPRETED:
        raise ConfigError(
            "kernel='triton' on CPU tensors: avalign.kernels was imported before TRITON_INTERPRET=1 was set, so "
            "its kernels are compiled for a GPU; set the variable before anything imports triton"
        )
    return kernels


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

        def grad_logits_of(rows, logits):
            return _grad_logits(logits.to(compute_dtype(logits.dtype)), actions[rows], ctx.alpha, grad_q[rows])

        grads = chunked_backward(hidden, weight, bias, ctx.needs_input_grad[:3], ctx.chunk_size, grad_logits_of)
        return (*grads, None, None, None)


def _q_values(hidden, weight, bias, actions, alpha, chunk_size):
    """Forward pass over row chunks; one chunk's [chunk, V] buffer at a time."""
    q = torch.empty(hidden.shape[0], dtype=compute_dtype(hidden.dtype), device=hidden.device)
    for rows in row_chunks(hidden.shape[0], chunk_size):
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
    return logits.to(compute_dtype(logits.dtype))


def _softmax_(x):
    """Row softmax in place, so a chunk needs no second [chunk, V] buffer for it."""
    x.sub_(x.amax(1, keepdim=True)).exp_()
    return x.div_(x.sum(1, keepdim=True))
