"""pretrained_q_values(kernel="triton") (avalign.kernels) against the float64 reference and the torch path.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (conftest sets TRITON_INTERPRET=1
before anything imports triton); with one, the same tests run the compiled kernels on CUDA.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytest.importorskip("triton", reason="the Triton kernels need the triton package")

from avalign import kernels  # noqa: E402
from avalign.errors import ConfigError  # noqa: E402
from avalign.modeling import TQRConfig, TQRModel  # noqa: E402
from avalign.ops import pretrained_q_values  # noqa: E402

from conftest import tiny_backbone  # noqa: E402
from test_modeling import batch_for  # noqa: E402
from test_ops import assert_matches, make_inputs, reference, run  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def on_device(*tensors):
    """Copies on DEVICE, leaves again where the originals required grad (None stays None)."""
    return [
        None if t is None else t.detach().to(DEVICE).requires_grad_(t.requires_grad) if t.is_floating_point()
        else t.to(DEVICE)
        for t in tensors
    ]


def run_both(hidden, weight, bias, actions, grad_out, **kwargs):
    """(Q, grads) of the triton and the torch path on DEVICE, moved back to the CPU."""
    results = []
    for kernel in ("triton", "torch"):
        inputs = on_device(hidden, weight, bias, actions, grad_out)
        q, grads = run(pretrained_q_values, *inputs, kernel=kernel, **kwargs)
        results.append((q.cpu(), [None if g is None else g.cpu() for g in grads]))
    return results


def assert_matches_reference(q, grads, expected, dtype=torch.float32, q_tol=(1e-5, 1e-6), grad_tol=(1e-5, 1e-6)):
    """Q (float32) and gradients (in ``dtype``, None where the reference has none) close to ``expected``, the
    float64 reference; tolerances are assert_matches' (rtol, atol as a fraction of the largest entry)."""
    q_ref, grads_ref = expected
    assert q.dtype == torch.float32 and q.shape == q_ref.shape
    assert_matches(q, q_ref, *q_tol)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        if grad_ref is None:
            assert grad is None
        else:
            assert grad.dtype == dtype
            assert_matches(grad, grad_ref, *grad_tol)


@pytest.fixture
def block_size(request, monkeypatch):
    """The kernels' vocabulary block size for one test (default 128, so that V = 1000 spans several blocks)."""
    size = getattr(request, "param", 128)
    monkeypatch.setattr(kernels, "BLOCK_SIZE", size)
    return size


@pytest.mark.parametrize(
    ("n", "v", "chunk", "alpha", "bias", "block_size"),
    [
        (37, 1000, 7, 1.0, True, 128),  # odd chunk, N not a multiple of it, V not a multiple of the block
        (30, 1000, 7, 0.3, False, 256),
        (23, 1000, 5, 20.0, True, 128),
        (20, 513, 64, 1.0, True, 1024),  # one chunk larger than N; the vocabulary inside one block
        (33, 1000, None, 5.0, False, 128),  # automatic chunk size
    ],
    indirect=["block_size"],
)
def test_triton_matches_float64_reference_and_torch_path(n, v, chunk, alpha, bias, block_size):
    hidden, weight, b, actions, grad_out = make_inputs(n, v, bias=bias, seed=n)
    grad_out[::3] = 0.0  # masked positions send no gradient
    (q, grads), (q_torch, grads_torch) = run_both(hidden, weight, b, actions, grad_out, alpha=alpha, chunk_size=chunk)
    # rtol 1e-5 and an atol of 1e-6 of the reference's largest entry: entries that the float64 reference
    # puts at ~0 by cancellation come out as float32 rounding noise of that size.
    assert_matches_reference(q, grads, reference(hidden, weight, b, actions, grad_out, alpha))
    assert q.shape == (n,)
    torch.testing.assert_close(q, q_torch, rtol=1e-5, atol=1e-6)
    for grad, grad_torch in zip(grads, grads_torch):
        if grad_torch is not None:
            torch.testing.assert_close(grad, grad_torch, rtol=1e-5, atol=1e-6 * grad_torch.abs().max().item())
    assert (grads[0][::3] == 0).all() and grads[0][1::3].abs().amax(1).min() > 0


def test_extreme_logits_stay_finite_and_exact(block_size):
    # p nearly one-hot (logits of size ~50) and, for half of the rows, the action is each row's argmax.
    hidden, weight, bias, actions, grad_out = make_inputs(25, 1000, scale=50.0)
    actions[::2] = torch.nn.functional.linear(hidden, weight, bias).argmax(-1)[::2]
    (q, grads), _ = run_both(hidden, weight, bias, actions, grad_out, alpha=5.0, chunk_size=4)
    assert torch.isfinite(q).all() and all(torch.isfinite(g).all() for g in grads)
    # As in test_ops: float32 rounding of logits of size ~50 moves the steep softmax's gradient by ~2e-5 of
    # its largest entry, for the naive formula in float32 too.
    expected = reference(hidden, weight, bias, actions, grad_out, 5.0)
    assert_matches_reference(q, grads, expected, grad_tol=(1e-5, 1e-4))


def test_whole_blocks_of_minus_infinity_logits(block_size):
    # A bias of -inf masks tokens out of the vocabulary; here the first two blocks hold nothing else, so the
    # online max is still -inf after them.
    hidden, weight, bias, actions, grad_out = make_inputs(15, 1000)
    with torch.no_grad():
        bias[: 2 * block_size + 10] = -float("inf")
    actions = torch.randint(2 * block_size + 10, 1000, actions.shape, generator=torch.Generator().manual_seed(1))
    (q, grads), (q_torch, _) = run_both(hidden, weight, bias, actions, grad_out, alpha=3.0, chunk_size=4)
    assert_matches_reference(q, grads, reference(hidden, weight, bias, actions, grad_out, 3.0))
    torch.testing.assert_close(q, q_torch, rtol=1e-5, atol=1e-6)
    assert (grads[2][: 2 * block_size + 10] == 0).all()


def test_bfloat16_inputs_get_bfloat16_gradients(block_size):
    hidden, weight, bias, actions, grad_out = make_inputs(30, 1000, dtype=torch.bfloat16)
    results = run_both(hidden, weight, bias, actions, grad_out, alpha=2.0, chunk_size=7)
    # Tolerances of test_ops' bfloat16 test: the logits (and here also their gradient) are rounded to bf16.
    # Both paths: on CUDA their weight gradients go through the bf16 GEMM with a float32 output.
    expected = reference(hidden, weight, bias, actions, grad_out, 2.0)
    for q, grads in results:
        assert_matches_reference(q, grads, expected, torch.bfloat16, q_tol=(1e-4, 1e-4), grad_tol=(1e-2, 1e-2))


def test_inference_and_empty_batch(block_size):
    hidden, weight, bias, actions, _ = on_device(*make_inputs(19, 1000)[:4], None)
    q = pretrained_q_values(hidden, weight, bias, actions, alpha=1.0, chunk_size=6, kernel="triton")
    with torch.no_grad():
        q_inference = pretrained_q_values(hidden, weight, bias, actions, alpha=1.0, chunk_size=6, kernel="triton")
    assert q.grad_fn is not None and q_inference.grad_fn is None
    torch.testing.assert_close(q_inference, q.detach(), rtol=0, atol=0)

    hidden, weight, bias, actions, _ = on_device(*make_inputs(0, 1000)[:4], None)
    q = pretrained_q_values(hidden, weight, bias, actions, alpha=1.0, chunk_size=4, kernel="triton")
    assert q.shape == (0,) and q.dtype == torch.float32
    q.sum().backward()
    assert hidden.grad.shape == (0, 16)
    assert torch.count_nonzero(weight.grad) == 0 and torch.count_nonzero(bias.grad) == 0


def refuse_triton(monkeypatch):
    """Make every entry point of avalign.kernels raise."""

    def refuse(*args, **kwargs):
        raise AssertionError("the Triton kernels were called")

    monkeypatch.setattr(kernels.TritonPretrainedQ, "apply", refuse)
    monkeypatch.setattr(kernels, "triton_q_values", refuse)


def test_auto_uses_torch_on_cpu(monkeypatch):
    hidden, weight, bias, actions, grad_out = make_inputs(12, 101)
    refuse_triton(monkeypatch)
    with pytest.raises(AssertionError, match="kernels were called"):  # the patch does catch a triton call
        pretrained_q_values(hidden, weight, bias, actions, alpha=1.0, kernel="triton")
    q, grads = run(pretrained_q_values, hidden, weight, bias, actions, grad_out, alpha=1.0, kernel="auto")
    q_torch, grads_torch = run(pretrained_q_values, hidden, weight, bias, actions, grad_out, alpha=1.0, kernel="torch")
    torch.testing.assert_close(q, q_torch, rtol=0, atol=0)
    for grad, grad_torch in zip(grads, grads_torch):
        torch.testing.assert_close(grad, grad_torch, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(pretrained_q_values(hidden, weight, bias, actions, alpha=1.0), q, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="auto picks triton only on CUDA")
def test_auto_uses_triton_on_cuda(monkeypatch):
    hidden, weight, bias, actions, _ = on_device(*make_inputs(12, 101)[:4], None)
    refuse_triton(monkeypatch)
    with pytest.raises(AssertionError, match="kernels were called"):
        pretrained_q_values(hidden, weight, bias, actions, alpha=1.0, kernel="auto")
    with pytest.raises(AssertionError, match="kernels were called"):
        pretrained_q_values(hidden.bfloat16(), weight.bfloat16(), bias.bfloat16(), actions, alpha=1.0, kernel="auto")
    pretrained_q_values(hidden.double(), weight.double(), bias.double(), actions, alpha=1.0, kernel="auto")  # torch
    pretrained_q_values(hidden, weight, bias, actions, alpha=1.0)  # the default stays torch, even on CUDA


def test_triton_refuses_what_it_cannot_run(monkeypatch):
    hidden, weight, bias, actions, _ = make_inputs(4, 11)
    with pytest.raises(ConfigError, match="float64"):
        pretrained_q_values(hidden.double(), weight.double(), bias.double(), actions, alpha=1.0, kernel="triton")
    with pytest.raises(ConfigError, match="unknown kernel"):
        pretrained_q_values(hidden, weight, bias, actions, alpha=1.0, kernel="cuda")

    # On CPU tensors the kernels need the interpreter. The refusal must come before avalign.kernels is first
    # imported (which would fix the kernels as compiled for the rest of the process); here it is imported
    # already, and a refused call changes nothing: the same call runs once the variable is back.
    with monkeypatch.context() as patch:
        patch.delenv("TRITON_INTERPRET", raising=False)
        with pytest.raises(ConfigError, match="TRITON_INTERPRET"):
            pretrained_q_values(hidden, weight, bias, actions, alpha=1.0, kernel="triton")
    if kernels.INTERPRETED:
        pretrained_q_values(hidden, weight, bias, actions, alpha=1.0, kernel="triton")
    # The variable set now, after kernels were decorated compiled, does not make them run on CPU.
    with monkeypatch.context() as patch:
        patch.setenv("TRITON_INTERPRET", "1")
        patch.setattr(kernels, "INTERPRETED", False)
        with pytest.raises(ConfigError, match="imported before TRITON_INTERPRET"):
            pretrained_q_values(hidden, weight, bias, actions, alpha=1.0, kernel="triton")

    # Without triton installed: "triton" refuses, "auto" falls back to torch.
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else find_spec(name, *a))
    with pytest.raises(ConfigError, match="needs the triton package"):
        pretrained_q_values(hidden, weight, bias, actions, alpha=1.0, kernel="triton")
    refuse_triton(monkeypatch)
    assert pretrained_q_values(*on_device(hidden, weight, bias, actions), alpha=1.0, kernel="auto").shape == (4,)


def test_tqr_config_validates_q_kernel():
    assert TQRConfig().q_kernel == "torch"  # until the kernels have run on a GPU
    with pytest.raises(ConfigError, match="q_kernel"):
        TQRConfig(q_kernel="cuda")


@pytest.mark.parametrize("arch", ["gpt2", "bart"])  # bart: an LM head with a bias (final_logits_bias)
def test_tqr_model_triton_matches_torch(arch, tokenizer, synthetic, monkeypatch):
    monkeypatch.setattr(kernels, "BLOCK_SIZE", 32)  # several blocks over the tiny vocabulary
    rows = synthetic[0].select(range(3))
    results = {}
    for kernel in ("triton", "torch"):
        model = TQRModel(tiny_backbone(arch, tokenizer, seed=0), TQRConfig(alpha=2.0, q_chunk_size=5, q_kernel=kernel))
        model.to(DEVICE).eval()
        batch = {key: value.to(DEVICE) for key, value in batch_for(model, tokenizer, rows).items()}
        out = model(**batch)
        assert out.mask.sum() > 5  # several chunks
        grad_out = torch.linspace(-1.0, 1.0, out.q_values.numel(), device=DEVICE).view_as(out.q_values)
        (out.q_values * grad_out).sum().backward()
        grads = {name: p.grad.cpu() for name, p in model.named_parameters() if p.grad is not None}
        results[kernel] = out.q_values.detach().cpu(), grads

    (q, grads), (q_torch, grads_torch) = results["triton"], results["torch"]
    torch.testing.assert_close(q, q_torch, rtol=1e-5, atol=1e-6)
    assert grads.keys() == grads_torch.keys() and any("embed" in name or "wte" in name for name in grads)
    for name, grad in grads.items():
        # atol: 1e-5 of the parameter's largest gradient entry, and at least 1e-9 for the gradients that are
        # zero in exact arithmetic (attention key biases: softmax ignores a shift shared by all keys), which
        # both paths give as float32 noise of ~1e-13.
        atol = max(1e-5 * grads_torch[name].abs().max().item(), 1e-9)
        torch.testing.assert_close(grad, grads_torch[name], rtol=1e-5, atol=atol, msg=lambda text: f"{name}: {text}")
