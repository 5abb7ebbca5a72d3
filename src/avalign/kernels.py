"""Fused Triton kernels for pretrained_q_values (Eq. 12): ``kernel="triton"`` in avalign.ops.

Per row chunk, the LM-head logits z = hidden @ weight.T + bias stay a torch matmul (cuBLAS) in the
inputs' dtype, and everything after them runs in float32 inside two kernels instead of a dozen torch
passes over a float32 copy of the logits:

* forward, one program per row: pass 1 over vocabulary blocks gives the online max m and
  Z = sum_j exp(z_j - m); pass 2 gives p_j = exp(z_j - m) / Z and u_j = alpha * p_j, and sums
  S = sum_j exp(u_j - alpha / Z) (alpha / Z = alpha * max p is the max of u) and sum_j p_j exp(u_j - alpha / Z).
  Then Q = u_a - logsumexp(u) = alpha * (p_a - 1 / Z) - log S, and for the backward pass
  c = p_a - sum_k p_k s_k with s = softmax(u). Each row keeps m, 1 / Z, 1 / S and c (float32).
* backward, one program per (row, vocabulary block): recomputes p_j and s_j = exp(alpha * (p_j - 1 / Z)) / S
  from those four numbers and overwrites the recomputed logits in place with
  grad_q * alpha * p_j * (onehot(a)_j - s_j - c) (avalign.ops._grad_logits derives it), in the logits'
  dtype; avalign.chunking.chunked_backward turns that into the hidden, weight and bias gradients.

Triton fixes at decoration time, i.e. when this module is first imported, whether the kernels are compiled
for a GPU or run by its interpreter (TRITON_INTERPRET=1), which runs them on CPU tensors for tests.
Without triton this module imports, with ``triton = None``, and avalign.ops never selects it.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .chunking import chunked_backward, row_chunks

try:
    import triton
    import triton.language as tl
except ImportError:  # avalign.ops checks `triton is None` before it selects these kernels
    triton = None

# Vocabulary entries per block of a kernel's loop (forward) or per program (backward). Read at every call.
BLOCK_SIZE = 1024


def _jit(fn):
    return fn if triton is None else triton.jit(fn)


@_jit
def _forward_kernel(
    logits_ptr, logits_stride, actions_ptr, q_ptr, m_ptr, inv_z_ptr, inv_s_ptr, c_ptr, n_cols, alpha,
    BLOCK_SIZE: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * logits_stride
    alpha = tl.cast(alpha, tl.float32)  # a Python float can arrive as float64 (torch.compile)

    # Pass 1: online max m and Z = sum exp(z - m). A block of -inf logits leaves both as they were.
    m = -float("inf")
    z_sum = 0.0
    for start in range(0, n_cols, BLOCK_SIZE):
        cols = start + tl.arange(0, BLOCK_SIZE)
        z = tl.load(row_ptr + cols, mask=cols < n_cols, other=-float("inf")).to(tl.float32)
        new_m = tl.maximum(m, tl.max(z, axis=0))
        shift = tl.where(new_m > -float("inf"), new_m, 0.0)
        z_sum = z_sum * tl.exp(m - shift) + tl.sum(tl.exp(z - shift), axis=0)
        m = new_m
    inv_z = 1.0 / z_sum

    # Pass 2: p = exp(z - m) / Z, u = alpha * p; S = sum exp(u - alpha / Z) and sum p * exp(u - alpha / Z).
    s_sum = 0.0
    ps_sum = 0.0
    for start in range(0, n_cols, BLOCK_SIZE):
        cols = start + tl.arange(0, BLOCK_SIZE)
        mask = cols < n_cols
        z = tl.load(row_ptr + cols, mask=mask, other=-float("inf")).to(tl.float32)
        p = tl.exp(z - m) * inv_z
        e = tl.where(mask, tl.exp(alpha * (p - inv_z)), 0.0)
        s_sum += tl.sum(e, axis=0)
        ps_sum += tl.sum(p * e, axis=0)
    inv_s = 1.0 / s_sum

    action = tl.load(actions_ptr + row)
    # An action outside the vocabulary reads nothing and gives NaN (the torch path raises in gather).
    z_a = tl.load(row_ptr + action, mask=(action >= 0) & (action < n_cols), other=float("nan")).to(tl.float32)
    p_a = tl.exp(z_a - m) * inv_z
    tl.store(q_ptr + row, alpha * (p_a - inv_z) - tl.log(s_sum))
    tl.store(m_ptr + row, m)
    tl.store(inv_z_ptr + row, inv_z)
    tl.store(inv_s_ptr + row, inv_s)
    tl.store(c_ptr + row, p_a - ps_sum * inv_s)


@_jit
def _backward_kernel(
    logits_ptr, logits_stride, actions_ptr, grad_q_ptr, m_ptr, inv_z_ptr, inv_s_ptr, c_ptr, n_cols, alpha,
    BLOCK_SIZE: tl.constexpr,
):
    # Overwrites one block of a row of logits with grad_q * dQ/dz; every program reads only what it writes.
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = cols < n_cols
    ptrs = logits_ptr + row * logits_stride + cols
    alpha = tl.cast(alpha, tl.float32)
    z = tl.load(ptrs, mask=mask, other=-float("inf")).to(tl.float32)
    m = tl.load(m_ptr + row)
    inv_z = tl.load(inv_z_ptr + row)
    inv_s = tl.load(inv_s_ptr + row)
    c = tl.load(c_ptr + row)
    p = tl.exp(z - m) * inv_z
    s = tl.exp(alpha * (p - inv_z)) * inv_s
    onehot = (cols == tl.load(actions_ptr + row)).to(tl.float32)
    grad = tl.load(grad_q_ptr + row) * alpha * p * (onehot - s - c)
    tl.store(ptrs, grad.to(logits_ptr.dtype.element_ty), mask=mask)


def _is_interpreted(kernel) -> bool:
    if triton is None:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(kernel, InterpretedFunction)


# Whether the kernels above run in Triton's interpreter (TRITON_INTERPRET=1 when they were decorated).
INTERPRETED = _is_interpreted(_forward_kernel)


def _forward(hidden, weight, bias, actions, alpha, chunk_size):
    """[N] float32 Q values and the [4, N] float32 per-row statistics of the backward pass (m, 1/Z, 1/S, c)."""
    n = hidden.shape[0]
    q = torch.empty(n, dtype=torch.float32, device=hidden.device)
    stats = torch.empty(4, n, dtype=torch.float32, device=hidden.device)
    with _launch_device(hidden.device):
        for rows in row_chunks(n, chunk_size):
            logits = F.linear(hidden[rows], weight, bias)  # the inputs' dtype; the kernel reads it in float32
            _forward_kernel[(logits.shape[0],)](
                logits, logits.stride(0), actions[rows], q[rows], *stats[:, rows], logits.shape[1], alpha,
                BLOCK_SIZE=BLOCK_SIZE,
            )
            del logits  # free this chunk's [chunk, V] buffer before the next one is made
    return q, stats


def _launch_device(device):
    """Triton launches on the current CUDA device: make it the tensors' one (cuda:1 while cuda:0 is current)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def triton_q_values(hidden, weight, bias, actions, alpha, chunk_size):
    """What avalign.ops._q_values computes, through the forward kernel (no autograd)."""
    return _forward(hidden, weight, bias, actions, alpha, chunk_size)[0]


class TritonPretrainedQ(torch.autograd.Function):
    """avalign.ops._PretrainedQ through the kernels: saves its inputs and four float32 numbers per row."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, actions, alpha, chunk_size):
        q, stats = _forward(hidden, weight, bias, actions, alpha, chunk_size)
        ctx.save_for_backward(hidden, weight, bias, actions, stats)
        ctx.alpha, ctx.chunk_size = alpha, chunk_size
        return q

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_q):
        hidden, weight, bias, actions, stats = ctx.saved_tensors
        grad_q = grad_q.float().contiguous()

        def grad_logits_of(rows, logits):
            grid = (logits.shape[0], triton.cdiv(logits.shape[1], BLOCK_SIZE))
            _backward_kernel[grid](
                logits, logits.stride(0), actions[rows], grad_q[rows], *stats[:, rows], logits.shape[1], ctx.alpha,
                BLOCK_SIZE=BLOCK_SIZE,
            )
            return logits

        with _launch_device(hidden.device):
            grads = chunked_backward(hidden, weight, bias, ctx.needs_input_grad[:3], ctx.chunk_size, grad_logits_of)
        return (*grads, None, None, None)
