"""pretrained_q_values (Eq. 12) against an independent float64 reference, values and gradients."""

from __future__ import annotations

import importlib.util
import math
import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from avalign.errors import ConfigError
from avalign import ops
from avalign.chunking import chunked_backward, compute_dtype
from avalign.ops import pretrained_q_values


def naive_pretrained_q_values(hidden, weight, bias, actions, alpha):
    """Eq. 12 written directly over the full [N, V] tensor; the reference (differentiated by autograd)."""
    scaled = alpha * F.linear(hidden, weight, bias).softmax(-1)
    return scaled.gather(-1, actions[:, None]).squeeze(-1) - scaled.logsumexp(-1)


def make_inputs(n, v, h=16, *, bias=True, scale=1.0, dtype=torch.float32, seed=0):
    """Leaf tensors whose logits have standard deviation about `scale`."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen) * scale / math.sqrt(h)
    weight = torch.randn(v, h, generator=gen)
    b = torch.randn(v, generator=gen) * 0.5 if bias else None
    actions = torch.randint(0, v, (n,), generator=gen)
    grad_out = torch.randn(n, generator=gen)
    leaves = [t.to(dtype).requires_grad_() if t is not None else None for t in (hidden, weight, b)]
    return (*leaves, actions, grad_out)


def run(fn, hidden, weight, bias, actions, grad_out, **kwargs):
    """Q values and the gradients of sum(grad_out * Q) w.r.t. the given leaves (None where absent)."""
    q = fn(hidden, weight, bias, actions, **kwargs)
    leaves = [t for t in (hidden, weight, bias) if t is not None]
    grads = iter(torch.autograd.grad(q, leaves, grad_out.to(q.dtype)))
    return q.detach(), [next(grads) if t is not None else None for t in (hidden, weight, bias)]


def reference(hidden, weight, bias, actions, grad_out, alpha):
    """The float64 reference on float64 copies of the inputs."""
    copies = [t.detach().double().requires_grad_() if t is not None else None for t in (hidden, weight, bias)]
    return run(naive_pretrained_q_values, *copies, actions, grad_out.double(), alpha=alpha)


def assert_matches(actual, expected, rtol=1e-5, atol_fraction=1e-6):
    """Close to the float64 reference; atol is a small fraction of the reference's largest entry."""
    atol = atol_fraction * expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual.double(), expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize(
    ("n", "v", "chunk_size", "alpha", "bias"),
    [
        (37, 1001, 7, 1.0, True),  # odd chunk, N not a multiple of it, V not a multiple of anything
        (64, 1001, 16, 0.5, True),
        (40, 1001, 9, 5.0, False),
        (20, 513, 64, 1, True),  # one chunk larger than N; alpha given as an int
        (9, 101, 1, 2.0, True),  # one row per chunk, the smallest chunk allowed
        (33, 1001, None, 1.0, True),  # automatic chunk size
    ],
)
def test_values_and_gradients_match_float64_reference(n, v, chunk_size, alpha, bias):
    hidden, weight, b, actions, grad_out = make_inputs(n, v, bias=bias)
    q, grads = run(pretrained_q_values, hidden, weight, b, actions, grad_out, alpha=alpha, chunk_size=chunk_size)
    q_ref, grads_ref = reference(hidden, weight, b, actions, grad_out, alpha)
    assert q.dtype == torch.float32 and q.shape == (n,)
    assert_matches(q, q_ref)
    for grad, grad_ref in zip(grads, grads_ref):
        if grad_ref is None:
            assert grad is None
        else:
            assert grad.dtype == torch.float32
            assert_matches(grad, grad_ref)


def test_empty_batch():
    hidden, weight, bias, actions, _ = make_inputs(0, 101)
    q = pretrained_q_values(hidden, weight, bias, actions, alpha=1.0, chunk_size=4)
    assert q.shape == (0,) and q.dtype == torch.float32
    q.sum().backward()
    assert hidden.grad.shape == (0, 16)
    assert torch.count_nonzero(weight.grad) == 0 and torch.count_nonzero(bias.grad) == 0


def test_bfloat16_inputs():
    hidden, weight, bias, actions, grad_out = make_inputs(30, 1001, dtype=torch.bfloat16)
    q, grads = run(pretrained_q_values, hidden, weight, bias, actions, grad_out, alpha=2.0, chunk_size=7)
    q_ref, grads_ref = reference(hidden, weight, bias, actions, grad_out, 2.0)
    assert q.dtype == torch.float32
    # bf16 logits carry ~3 significant digits; Q itself is much less sensitive than that.
    assert_matches(q, q_ref, rtol=1e-4, atol_fraction=1e-4)
    for grad, grad_ref in zip(grads, grads_ref):
        assert grad.dtype == torch.bfloat16
        assert_matches(grad, grad_ref, rtol=1e-2, atol_fraction=1e-2)


def test_extreme_logits_stay_finite_and_exact():
    hidden, weight, bias, actions, grad_out = make_inputs(25, 1001, scale=50.0)
    # Half of the actions are each row's argmax, where p is nearly one-hot and Q nears its upper bound.
    with torch.no_grad():
        argmax = F.linear(hidden, weight, bias).argmax(-1)
    actions[::2] = argmax[::2]
    q, grads = run(pretrained_q_values, hidden, weight, bias, actions, grad_out, alpha=5.0, chunk_size=4)
    q_ref, grads_ref = reference(hidden, weight, bias, actions, grad_out, 5.0)
    assert torch.isfinite(q).all() and all(torch.isfinite(g).all() for g in grads)
    assert_matches(q, q_ref)
    # Logits of size ~50 are rounded to float32 with absolute error ~50 * 2**-24, which the steep softmax
    # turns into gradient errors of ~2e-5 of the largest entry: autograd over the naive formula in float32
    # is off by as much. Hence a larger atol here; rtol stays 1e-5.
    for grad, grad_ref in zip(grads, grads_ref):
        assert_matches(grad, grad_ref, atol_fraction=1e-4)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 5.0])
@pytest.mark.parametrize("scale", [1.0, 50.0])
def test_q_within_mathematical_bounds(alpha, scale):
    # alpha * pi lies in [0, alpha] and sums to alpha, so logsumexp(alpha * pi) <= log(V - 1 + e^alpha)
    # (all mass on one action) and Q = alpha * pi(a) - logsumexp(...) lies between the two bounds below.
    v = 1001
    hidden, weight, bias, actions, _ = make_inputs(50, v, scale=scale)
    with torch.no_grad():
        q = pretrained_q_values(hidden, weight, bias, actions, alpha=alpha, chunk_size=8)
    log_norm_max = math.log(v - 1 + math.exp(alpha))
    slack = 1e-5
    assert (q >= -log_norm_max - slack).all()
    assert (q <= alpha - log_norm_max + slack).all()


def test_gradcheck_float64():
    hidden, weight, bias, actions, _ = make_inputs(5, 7, h=3, dtype=torch.float64, scale=2.0)
    assert torch.autograd.gradcheck(
        lambda h, w, b: pretrained_q_values(h, w, b, actions, alpha=2.0, chunk_size=2), (hidden, weight, bias)
    )


def largest_saved_tensor(fn):
    """Run fn() and return the element count of the largest tensor autograd saved for backward."""
    sizes = [0]

    def pack(tensor):
        sizes.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return max(sizes)


def test_never_saves_a_full_vocabulary_tensor():
    n, v = 64, 1001  # hidden size 16 < N, so the saved [V, H] weight is smaller than N * V
    hidden, weight, bias, actions, _ = make_inputs(n, v)

    def chunked():
        pretrained_q_values(hidden, weight, bias, actions, alpha=1.0, chunk_size=16).sum().backward()

    def naive():
        naive_pretrained_q_values(hidden, weight, bias, actions, alpha=1.0).sum().backward()

    assert largest_saved_tensor(naive) >= n * v  # the hook does see [N, V] tensors when they are saved
    assert largest_saved_tensor(chunked) < n * v


def test_frozen_weight_and_inference():
    hidden, weight, bias, actions, grad_out = make_inputs(12, 101)
    weight.requires_grad_(False)
    bias.requires_grad_(False)
    q = pretrained_q_values(hidden, weight, bias, actions, alpha=1.0, chunk_size=5)
    (grad_hidden,) = torch.autograd.grad(q, hidden, grad_out)
    q_ref, (grad_hidden_ref, _, _) = reference(hidden, weight, bias, actions, grad_out, 1.0)
    assert_matches(grad_hidden, grad_hidden_ref)

    hidden.requires_grad_(False)
    q = pretrained_q_values(hidden, weight, bias, actions, alpha=1.0, chunk_size=5)
    assert q.grad_fn is None
    assert_matches(q, q_ref)
    hidden.requires_grad_()
    with torch.no_grad():
        assert pretrained_q_values(hidden, weight, bias, actions, alpha=1.0).grad_fn is None


@pytest.mark.parametrize("with_bias", [True, False])
def test_autocast_runs_lm_head_in_autocast_dtype(with_bias):
    hidden, weight, bias, actions, grad_out = make_inputs(20, 301, bias=with_bias)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q, grads = run(pretrained_q_values, hidden, weight, bias, actions, grad_out, alpha=1.0, chunk_size=6)
    # Autocast casts the LM head's inputs to bf16 (a cast whose gradient is the identity), so the reference
    # is Eq. 12 on the bf16-rounded inputs; the float32 parameters get float32 gradients.
    rounded = [t.detach().bfloat16() if t is not None else None for t in (hidden, weight, bias)]
    q_ref, grads_ref = reference(*rounded, actions, grad_out, 1.0)
    assert q.dtype == torch.float32
    assert_matches(q, q_ref, rtol=1e-4, atol_fraction=1e-4)
    # Bit for bit the op on bf16 inputs outside autocast: the logits are those of a bf16 LM head.
    assert torch.equal(q, pretrained_q_values(*rounded, actions, alpha=1.0, chunk_size=6))
    for grad, grad_ref in zip(grads, grads_ref):
        if grad_ref is None:
            assert grad is None
            continue
        assert grad.dtype == torch.float32
        assert_matches(grad, grad_ref, rtol=1e-2, atol_fraction=1e-2)


def test_rows_with_far_apart_maxima_share_a_chunk():
    """alpha * pi of a near one-hot row peaks near alpha, of a uniform row at alpha / V: each row's logsumexp is
    shifted by its own maximum, or exp underflows for the uniform row when both share a chunk."""
    weight = torch.eye(5, dtype=torch.float32)
    hidden = torch.tensor([[50.0, 0, 0, 0, 0], [0.0, 0, 0, 0, 0]])
    actions = torch.tensor([0, 3])
    q = pretrained_q_values(hidden, weight, None, actions, alpha=1000.0, chunk_size=2)
    q_ref = naive_pretrained_q_values(hidden.double(), weight.double(), None, actions, alpha=1000.0)
    assert torch.isfinite(q).all()
    assert_matches(q, q_ref)


@pytest.mark.parametrize(("v", "h", "elements", "rows"), [(5, 3, 12, 2), (5, 3, 4, 1), (1, 3, 4, 4)])
def test_automatic_chunk_size_bounds_the_chunk_elements(monkeypatch, v, h, elements, rows):
    """chunk_size=None: AUTO_CHUNK_ELEMENTS // V rows per chunk (V the vocabulary, not the hidden size), at least
    one row; the expected rows are worked out by hand for a shrunken AUTO_CHUNK_ELEMENTS."""
    monkeypatch.setattr(ops, "AUTO_CHUNK_ELEMENTS", elements)
    sizes = []
    monkeypatch.setattr(ops, "row_chunks", lambda n, chunk_size: sizes.append(chunk_size) or [slice(0, n)])
    hidden, weight, bias, actions, _ = make_inputs(6, v, h=h)
    with torch.no_grad():
        pretrained_q_values(hidden, weight, bias, actions, alpha=1.0)
    assert sizes == [rows]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
@pytest.mark.parametrize("needs", [(True, True, True), (False, True, False), (True, False, True)])
def test_chunked_backward_accumulates_each_requested_gradient(dtype, needs):
    """Given the logits' gradient G (here a fixed matrix), the gradients are G @ W, G^T h and the column sums of G,
    accumulated in float32 (float64 for float64 inputs) and returned in the inputs' dtype; None where not needed."""
    hidden, weight, bias, _, _ = make_inputs(7, 11, h=5, dtype=dtype)
    grad_logits = torch.randn(7, 11, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    grads = chunked_backward(hidden.detach(), weight.detach(), bias.detach(), needs, 3,
                             lambda rows, logits: grad_logits[rows].to(compute_dtype(logits.dtype)))
    h, w = hidden.detach().double(), weight.detach().double()
    expected = (grad_logits.to(dtype).double() @ w, grad_logits.T @ h, grad_logits.sum(0))
    tolerance = {"rtol": 1e-2, "atol": 5e-2} if dtype == torch.bfloat16 else {"rtol": 1e-12, "atol": 1e-12}
    for needed, grad, grad_ref in zip(needs, grads, expected):
        if not needed:
            assert grad is None
            continue
        assert grad.dtype == dtype
        torch.testing.assert_close(grad.double(), grad_ref, **tolerance)


def exact(message):
    return "^" + re.escape(message) + "$"


def test_rejects_bad_arguments():
    hidden, weight, bias, actions, _ = make_inputs(4, 11)
    with pytest.raises(ConfigError, match=exact("chunk_size must be a positive number of rows; got 0")):
        pretrained_q_values(hidden, weight, bias, actions, alpha=1.0, chunk_size=0)
    with pytest.raises(ConfigError, match=exact("actions must be an integer tensor of shape [4]; got torch.int64 (3,)")):
        pretrained_q_values(hidden, weight, bias, actions[:3], alpha=1.0)
    for h, w in ((hidden[None], weight), (hidden, weight[None])):
        message = f"hidden must be [N, H] and weight [V, H]; got {tuple(h.shape)} and {tuple(w.shape)}"
        with pytest.raises(ConfigError, match=exact(message)):
            pretrained_q_values(h, w, bias, actions, alpha=1.0)
    with pytest.raises(ConfigError, match=exact("unknown kernel 'cuda'; expected one of ['auto', 'torch', 'triton']")):
        pretrained_q_values(hidden, weight, bias, actions, alpha=1.0, kernel="cuda")


def fake_cuda(dtype):
    """What _triton_kernels reads of a CUDA tensor, without a GPU."""
    return SimpleNamespace(is_cuda=True, dtype=dtype, device=SimpleNamespace(type="cuda"))


def test_kernel_choice(monkeypatch):
    """Which implementation each ``kernel`` value picks (avalign.kernels or None for torch), and the one-line refusals
    of kernel='triton' where it cannot run: no triton, a dtype it lacks, CPU tensors outside the interpreter."""
    cpu = torch.zeros(2, 3)
    assert ops._triton_kernels("torch", fake_cuda(torch.float16)) is None
    assert ops._triton_kernels("auto", cpu) is None
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "triton" else find_spec(name))
    assert ops._triton_kernels("auto", fake_cuda(torch.float16)) is None
    with pytest.raises(ConfigError, match=exact("kernel='triton' needs the triton package; use kernel='torch' or 'auto'")):
        ops._triton_kernels("triton", cpu)
    monkeypatch.undo()

    pytest.importorskip("triton")
    from avalign import kernels

    assert ops._triton_kernels("auto", fake_cuda(torch.float64)) is None
    for interpreted, chosen in ((True, None), (False, kernels)):  # interpreted kernels are not picked for CUDA
        monkeypatch.setattr(kernels, "INTERPRETED", interpreted)
        for dtype in ops.TRITON_DTYPES:
            assert ops._triton_kernels("auto", fake_cuda(dtype)) is chosen
        assert ops._triton_kernels("auto", cpu) is None  # compiled or not, never for CPU tensors
    assert ops._triton_kernels("triton", fake_cuda(torch.bfloat16)) is kernels
    with pytest.raises(ConfigError, match=exact(
        "kernel='triton' on CPU tensors: avalign.kernels was imported before TRITON_INTERPRET=1 was set, so its "
        "kernels are compiled for a GPU; set the variable before anything imports triton"
    )):
        ops._triton_kernels("triton", cpu)
    monkeypatch.setattr(kernels, "INTERPRETED", True)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert ops._triton_kernels("triton", cpu) is kernels
    with pytest.raises(ConfigError, match=exact(
        "kernel='triton' supports float16, bfloat16 and float32 inputs, not torch.float64"
    )):
        ops._triton_kernels("triton", cpu.double())
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ConfigError, match=exact(
        "kernel='triton' runs on CPU tensors only in Triton's interpreter: set TRITON_INTERPRET=1 before triton is "
        "first imported, or use kernel='torch'"
    )):
        ops._triton_kernels("triton", cpu)
    monkeypatch.setattr(kernels, "triton", None)
    for tensor in (cpu, fake_cuda(torch.float16)):
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        with pytest.raises(ConfigError, match=exact(
            "kernel='triton': the triton package is installed but fails to import"
        )):
            ops._triton_kernels("triton", tensor)


def test_the_chosen_kernels_compute_q(monkeypatch):
    """pretrained_q_values runs what _triton_kernels picked for its inputs: its autograd function when gradients are
    needed, its forward alone for inference (here the torch implementation under a recording stand-in)."""
    calls = []
    stand_in = SimpleNamespace(
        TritonPretrainedQ=SimpleNamespace(apply=lambda *args: calls.append("autograd") or ops._PretrainedQ.apply(*args)),
        triton_q_values=lambda *args: calls.append("inference") or ops._q_values(*args),
    )
    hidden, weight, bias, actions, grad_out = make_inputs(6, 31)
    picked = {"triton": stand_in}
    monkeypatch.setattr(ops, "_triton_kernels", lambda kernel, h: picked.get(kernel) if h is hidden else "wrong inputs")
    q, grads = run(pretrained_q_values, hidden, weight, bias, actions, grad_out, alpha=2.0, kernel="triton")
    with torch.no_grad():
        q_inference = pretrained_q_values(hidden, weight, bias, actions, alpha=2.0, kernel="triton")
    assert calls == ["autograd", "inference"]
    q_ref, grads_ref = reference(hidden, weight, bias, actions, grad_out, 2.0)
    for actual, expected in zip([q, q_inference, *grads], [q_ref, q_ref, *grads_ref]):
        assert_matches(actual, expected)
