"""Correctness checks that need a CUDA device (the CPU suite cannot run them). Part of benchmarks/gpu/run.sh.

1. The pretrained-Q op (Eq. 12) on CUDA, torch and Triton kernels, float32 and bf16: values and gradients against
   a float64 reference computed naively from the same (rounded) inputs.
2. Padding-free batches on CUDA in bf16, with sdpa and flex_attention: TQR outputs and gradients of the packed row
   against the padded batch.

Prints one JSON object (also written to --json) and exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback

import torch

from avalign.backbones import build_backbone
from avalign.data.collator import collate_packed, collate_sequences
from avalign.modeling import TQRConfig, TQRModel, supports_padding_free
from avalign.ops import pretrained_q_values

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # cpu: only to try the script out
# Relative error allowed: float32 with TF32 off is exact to rounding; bf16 logits carry ~3 significant digits.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2}


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value.detach().double() - reference).norm() / reference.norm().clamp(min=1e-30))


def q_op_check(kernel: str, dtype: torch.dtype, n=2048, h=256, v=50_257, alpha=1.0) -> dict:
    generator = torch.Generator(device=DEVICE).manual_seed(0)
    leaves = [torch.randn(n, h, device=DEVICE, generator=generator),
              torch.randn(v, h, device=DEVICE, generator=generator) * h**-0.5 * 4,
              torch.randn(v, device=DEVICE, generator=generator)]
    leaves = [t.to(dtype).requires_grad_() for t in leaves]
    actions = torch.randint(v, (n,), device=DEVICE, generator=generator)
    upstream = torch.randn(n, device=DEVICE, generator=generator) * (torch.rand(n, device=DEVICE) > 0.2)
    q = pretrained_q_values(*leaves, actions, alpha, kernel=kernel)
    (q * upstream).sum().backward()

    exact = [t.detach().double().requires_grad_() for t in leaves]
    logits = exact[0] @ exact[1].T + exact[2]
    reference = torch.log_softmax(alpha * logits.softmax(-1), -1).gather(1, actions[:, None]).squeeze(1)
    (reference * upstream.double()).sum().backward()
    errors = {"q": relative_error(q, reference.detach())}
    errors.update({name: relative_error(t.grad, e.grad) for name, t, e in zip(("hidden", "weight", "bias"), leaves, exact)})
    return {"errors": errors, "ok": max(errors.values()) < TOLERANCE[dtype]}


def packing_check(attention: str, dtype: torch.dtype) -> dict:
    """Same TQR outputs and gradients from the padded batch and the packed row."""
    backbone = build_backbone("qwen2", 32_000, hidden_size=256, num_layers=4, num_heads=4, max_positions=1024, seed=0)
    backbone.set_attn_implementation(attention)
    model = TQRModel(backbone.to(DEVICE, dtype), TQRConfig())
    torch.manual_seed(1)
    for parameter in model.reward_head.parameters():  # zero-initialised heads would compare trivially
        torch.nn.init.normal_(parameter, std=0.5)
    model.to(DEVICE, dtype)
    supported = supports_padding_free(model.backbone)
    rng = torch.Generator().manual_seed(0)
    features = [{"prompt_ids": torch.randint(5, 32_000, (int(p),), generator=rng).tolist(),
                 "chosen_ids": torch.randint(5, 32_000, (int(c),), generator=rng).tolist(),
                 "rejected_ids": torch.randint(5, 32_000, (int(r),), generator=rng).tolist()}
                for p, c, r in torch.randint(16, 300, (8, 3), generator=rng)]
    results = []
    for batch in (collate_sequences(features, ("chosen", "rejected"), pad_token_id=0),
                  collate_packed(features, ("chosen", "rejected"))):
        batch.pop("is_preference")
        model.zero_grad()
        output = model(**{k: t.to(DEVICE) for k, t in batch.items()})
        m = output.mask
        values = [output.q_values[m], output.reward_mean[m], output.reward_log_std[m], output.reward_weights[m]]
        sum(x.float().sum() * (i + 1) for i, x in enumerate(values)).backward()
        grads = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
        results.append((torch.cat([x.float() for x in values]), grads))
    (values_a, grads_a), (values_b, grads_b) = results
    errors = {"outputs": relative_error(values_b, values_a.double()), "grads": relative_error(grads_b, grads_a.double())}
    return {"supports_padding_free": supported, "errors": errors,
            "ok": supported and max(errors.values()) < TOLERANCE[dtype]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = False  # the float32 checks compare against float64 at 1e-4
    checks = {}
    for kernel in ("torch", "triton"):
        for dtype in (torch.float32, torch.bfloat16):
            checks[f"q_op/{kernel}/{str(dtype)[6:]}"] = lambda k=kernel, d=dtype: q_op_check(k, d)
    for attention in ("sdpa", "flex_attention"):
        checks[f"packing/{attention}/bfloat16"] = lambda a=attention: packing_check(a, torch.bfloat16)
    device = torch.cuda.get_device_name(0) if DEVICE.type == "cuda" else "cpu"
    results = {"device": device, "torch": torch.__version__}
    for name, check in checks.items():
        try:
            results[name] = check()
        except Exception:  # one failing check must not hide the others' results
            results[name] = {"ok": False, "error": traceback.format_exc()[-3000:]}
        print(name, json.dumps(results[name]), flush=True)
    failed = [name for name, r in results.items() if isinstance(r, dict) and not r["ok"]]
    results["failed"] = failed
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    print("failed:", failed or "none")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
