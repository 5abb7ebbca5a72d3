"""Row chunks of a [N, V] computation, shared by avalign.ops (torch) and avalign.kernels (Triton): both walk
the rows the same way and turn each chunk's logits gradient into the hidden, weight and bias gradients here."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# torch.addmm(..., out_dtype=torch.float32) from bf16/fp16 inputs exists on CUDA from torch 2.8.
_MM_OUT_DTYPE = torch.torch_version.TorchVersion(torch.__version__) >= "2.8"


def chunked_backward(hidden, weight, bias, needs_input_grad, chunk_size, grad_logits_of):
    """Gradients of hidden, weight and bias (None where not needed) from each chunk's logits gradient.

    ``grad_logits_of(rows, logits)`` turns the recomputed LM-head logits of the rows ``rows`` (in the
    inputs' dtype) into grad_q * dQ/dz, in that dtype or a wider one; it may reuse the logits' buffer.
    The weight and bias gradients are accumulated over chunks in float32 (float64 for float64 inputs).
    """
    need_hidden, need_weight, need_bias = needs_input_grad
    acc_dtype = compute_dtype(hidden.dtype)
    grad_hidden = torch.empty_like(hidden) if need_hidden else None
    grad_weight = torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device) if need_weight else None
    grad_bias = torch.zeros(weight.shape[0], dtype=acc_dtype, device=weight.device) if need_bias else None

    # backward may run inside a user's autocast region; the dtypes below are chosen explicitly.
    with torch.autocast(hidden.device.type, enabled=False):
        for rows in row_chunks(hidden.shape[0], chunk_size):
            h = hidden[rows]
            grad_logits = grad_logits_of(rows, F.linear(h, weight, bias))
            if need_hidden:
                grad_hidden[rows] = grad_logits.to(weight.dtype) @ weight
            if need_weight:
                _addmm_fp32_(grad_weight, grad_logits.T, h)
            if need_bias:
                grad_bias += grad_logits.sum(0, dtype=acc_dtype)
            del grad_logits  # free this chunk's [chunk, V] buffer before the next one is made

    if grad_weight is not None:
        grad_weight = grad_weight.to(weight.dtype)
    if grad_bias is not None:
        grad_bias = grad_bias.to(bias.dtype)
    return grad_hidden, grad_weight, grad_bias


def _addmm_fp32_(acc, a, b):
    """acc += a @ b, with acc in float32 (float64 for float64 inputs) and b in the inputs' dtype.

    On CUDA with half-precision b, one half-precision GEMM (a rounded to b's dtype, as the hidden
    gradient already is) that accumulates and writes in float32: a float32 GEMM there is ~15x slower.
    Elsewhere one GEMM in acc's dtype.
    """
    if _MM_OUT_DTYPE and acc.device.type == "cuda" and b.dtype in (torch.float16, torch.bfloat16):
        torch.addmm(acc, a.to(b.dtype), b, out_dtype=torch.float32, out=acc)
    else:
        acc.addmm_(a.to(acc.dtype), b.to(acc.dtype))


def compute_dtype(dtype):
    """float32 for half-precision and float32 inputs; float64 stays float64 (used by gradcheck)."""
    return torch.promote_types(dtype, torch.float32)


def row_chunks(n, chunk_size):
    return [slice(start, start + chunk_size) for start in range(0, n, chunk_size)]
