"""pretrained_q_values (Eq. 12) against an independent float64 reference, values and gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from avalign.errors import ConfigError
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


def test_autocast_runs_lm_head_in_autocast_dtype():
    hidden, weight, bias, actions, grad_out = make_inputs(20, 301)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q, grads = run(pretrained_q_values, hidden, weight, bias, actions, grad_out, alpha=1.0, chunk_size=6)
    # Autocast casts the LM head's inputs to bf16 (a cast whose gradient is the identity), so the reference
    # is Eq. 12 on the bf16-rounded inputs; the float32 parameters get float32 gradients.
    rounded = [t.detach().bfloat16() for t in (hidden, weight, bias)]
    q_ref, grads_ref = reference(*rounded, actions, grad_out, 1.0)
    assert q.dtype == torch.float32
    assert_matches(q, q_ref, rtol=1e-4, atol_fraction=1e-4)
    for grad, grad_ref in zip(grads, grads_ref):
        assert grad.dtype == torch.float32
        assert_matches(grad, grad_ref, rtol=1e-2, atol_fraction=1e-2)


def test_rejects_bad_arguments():
    hidden, weight, bias, actions, _ = make_inputs(4, 11)
    with pytest.raises(ConfigError, match="chunk_size"):
        pretrained_q_values(hidden, weight, bias, actions, alpha=1.0, chunk_size=0)
    with pytest.raises(ConfigError, match="actions"):
        pretrained_q_values(hidden, weight, bias, actions[:3], alpha=1.0)
