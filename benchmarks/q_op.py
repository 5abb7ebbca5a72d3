"""Time and memory of the pretrained Q op (Eq. 12): naive vs chunked torch vs fused Triton kernels.

For every vocabulary size, each variant computes Q for N positions and the gradients of sum(Q) with
respect to the hidden states and the LM-head weight (no bias, as in Qwen2 and Llama):

* ``naive``   the formula over full [N, V] logits (upcast to float32), differentiated by autograd
              (vocab_memory.naive_pretrained_q_values);
* ``torch``   avalign.ops.pretrained_q_values(kernel="torch"): row chunks, float32 copies of the logits;
* ``triton``  pretrained_q_values(kernel="triton"): the kernels of avalign.kernels (CUDA only).

Reported: the median wall-clock time of forward + backward and of the forward alone over ``--iters`` runs
after ``--warmup`` runs (CUDA synchronised); on CUDA the peak of torch.cuda.max_memory_allocated during
one forward + backward above the memory allocated before it (inputs excluded, the gradients included);
and the largest absolute difference of Q and of each gradient to the naive variant's (computed once, on
the same inputs). Memory is not measured on CPU: in one process ru_maxrss only grows, and the CPU preset
is a smoke run, not a memory study (benchmarks/vocab_memory.py measures CPU peaks, one process each).

    python benchmarks/q_op.py --preset cpu
    python benchmarks/q_op.py --preset gpu --json q_op.json --markdown q_op.md
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the sibling scripts, however this one is loaded

from avalign.ops import pretrained_q_values  # noqa: E402
from common import machine_info, synchronize, versions  # noqa: E402
from vocab_memory import naive_pretrained_q_values  # noqa: E402

MIB = 2**20
VARIANTS = ("naive", "torch", "triton")


@dataclass(frozen=True)
class Preset:
    description: str
    n: int
    hidden: int
    vocab: tuple[int, ...]
    dtype: str
    device: str
    variants: tuple[str, ...]
    warmup: int
    iters: int


PRESETS = {
    "cpu": Preset("smoke run on CPU, torch variants only", n=512, hidden=128, vocab=(8192,), dtype="float32",
                  device="cpu", variants=("naive", "torch"), warmup=1, iters=5),
    "gpu": Preset("Qwen2-0.5B LM head (H = 896) in bf16; Llama 2, Llama 3 and Qwen2 vocabularies", n=8192,
                  hidden=896, vocab=(32_000, 128_256, 151_936), dtype="bfloat16", device="cuda",
                  variants=VARIANTS, warmup=3, iters=10),
}


def make_inputs(preset, vocab, seed=0):
    """hidden [N, H] and weight [V, H] leaves with logits of standard deviation ~1, and the actions."""
    device, dtype = torch.device(preset.device), getattr(torch, preset.dtype)
    gen = torch.Generator(device=device).manual_seed(seed)
    hidden = torch.randn(preset.n, preset.hidden, device=device, generator=gen) / math.sqrt(preset.hidden)
    weight = torch.randn(vocab, preset.hidden, device=device, generator=gen)
    actions = torch.randint(0, vocab, (preset.n,), device=device, generator=gen)
    return hidden.to(dtype).requires_grad_(), weight.to(dtype).requires_grad_(), actions


def forward(variant, hidden, weight, actions, alpha, chunk_size):
    if variant == "naive":
        return naive_pretrained_q_values(hidden, weight, None, actions, alpha)
    return pretrained_q_values(hidden, weight, None, actions, alpha, chunk_size=chunk_size, kernel=variant)


def forward_backward(variant, hidden, weight, actions, alpha, chunk_size):
    q = forward(variant, hidden, weight, actions, alpha, chunk_size)
    grad_hidden, grad_weight = torch.autograd.grad(q.sum(), (hidden, weight))
    return q.detach(), grad_hidden, grad_weight


def median_seconds(fn, device, warmup, iters):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(variant, preset, vocab, inputs, expected, args):
    """One variant at one vocabulary size, in this process."""
    device = torch.device(preset.device)
    run = lambda: forward_backward(variant, *inputs, args.alpha, args.chunk_size)  # noqa: E731
    result = {}
    if device.type == "cuda":
        run()  # kernels compiled and cuBLAS workspaces allocated before the peak is measured
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
        outputs = run()
        synchronize(device)
        result["peak_bytes"] = torch.cuda.max_memory_allocated(device) - baseline
    else:
        outputs = run()
    for name, value, reference in zip(("q", "grad_hidden", "grad_weight"), outputs, expected):
        result[f"max_abs_diff_{name}"] = (value.float() - reference.float()).abs().max().item()
    del outputs
    result["fwd_bwd_s"] = median_seconds(run, device, args.warmup, args.iters)
    with torch.no_grad():
        result["fwd_s"] = median_seconds(
            lambda: forward(variant, *inputs, args.alpha, args.chunk_size), device, args.warmup, args.iters
        )
    return result


def run_preset(preset, args):
    rows = []
    for vocab in preset.vocab:
        inputs = make_inputs(preset, vocab)
        expected = forward_backward("naive", *inputs, args.alpha, args.chunk_size)
        scale = {f"max_abs_{name}": value.float().abs().max().item()
                 for name, value in zip(("q", "grad_hidden", "grad_weight"), expected)}
        results = {}
        for variant in preset.variants:
            try:
                results[variant] = measure(variant, preset, vocab, inputs, expected, args)
            except Exception as exc:  # e.g. out of memory for naive at a large V: reported, not fatal
                results[variant] = {"error": f"{type(exc).__name__}: {str(exc).strip()[:300]}"}
            if preset.device == "cuda":
                torch.cuda.empty_cache()
            print(f"V={vocab} {variant}: {results[variant]}", file=sys.stderr, flush=True)
        rows.append({"vocab": vocab, "naive_scale": scale, "variants": results})
        del inputs, expected
    return rows


def render(report):
    s = report["settings"]
    m = report["machine"]
    memory = ("peak torch.cuda.max_memory_allocated during one forward + backward, above the memory allocated"
              " before it" if s["device"] == "cuda" else "not measured on CPU")
    lines = [
        f"# Pretrained Q op (Eq. 12): forward + backward of sum(Q) (preset `{report['preset']}`)",
        "",
        f"- date: {report['date']}; command: `{report['command']}`",
        f"- machine: {m['cpu_model']}, nproc {m['nproc']}, {m['machine']}"
        + (f", GPU {m['gpu']}" if "gpu" in m else ""),
        "- versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        f"- N = {s['n']}, H = {s['hidden']}, dtype {s['dtype']}, device {s['device']}, alpha {s['alpha']},"
        f" chunk_size {s['chunk_size'] or 'auto'}, no bias; median of {s['iters']} runs after {s['warmup']}",
        f"- peak memory: {memory}",
        "- diff: largest |difference| to the naive variant (Q in float32; gradients in the inputs' dtype); the"
        " naive values' own largest |entry| is given beside the table",
        "",
        "| V | variant | fwd+bwd (ms) | fwd (ms) | vs naive (fwd+bwd) | peak mem (MiB) | diff Q | diff grad hidden"
        " | diff grad weight |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for row in report["results"]:
        naive = row["variants"].get("naive", {})
        for variant, r in row["variants"].items():
            if "error" in r:
                lines.append(f"| {row['vocab']:,} | {variant} | failed: {r['error'][:100]} |" + " |" * 6)
                continue
            ratio = f"{naive['fwd_bwd_s'] / r['fwd_bwd_s']:.2f}x" if "fwd_bwd_s" in naive else "n/a"
            peak = f"{r['peak_bytes'] / MIB:,.0f}" if "peak_bytes" in r else "-"
            diffs = [f"{r[f'max_abs_diff_{name}']:.2e}" for name in ("q", "grad_hidden", "grad_weight")]
            cells = [f"{row['vocab']:,}", variant, f"{r['fwd_bwd_s'] * 1e3:,.1f}", f"{r['fwd_s'] * 1e3:,.1f}", ratio,
                     peak, *diffs]
            lines.append("| " + " | ".join(cells) + " |")
        scale = row["naive_scale"]
        notes.append(f"V = {row['vocab']:,}: max |Q| {scale['max_abs_q']:.3g}, max |grad hidden|"
                     f" {scale['max_abs_grad_hidden']:.3g}, max |grad weight| {scale['max_abs_grad_weight']:.3g}")
    lines += ["", "- naive values: " + "; ".join(notes)]
    return "\n".join(lines) + "\n"


def triton_version():
    try:
        return importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="shapes, dtype and device")
    parser.add_argument("--vocab", type=int, nargs="+", help="vocabulary sizes (default: the preset's)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, help="subset to run (default: the preset's)")
    parser.add_argument("--n", type=int, help="positions N (default: the preset's)")
    parser.add_argument("--iters", type=int, help="timed runs per variant (default: the preset's)")
    parser.add_argument("--warmup", type=int, help="untimed runs first (default: the preset's)")
    parser.add_argument("--chunk-size", type=int, default=None, help="rows per chunk (default: automatic)")
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--markdown", metavar="FILE", help="also write the markdown table here")
    parser.add_argument("--json", metavar="FILE", help="write the raw measurements here")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    overrides = {"vocab": tuple(args.vocab) if args.vocab else None, "variants": tuple(args.variants or ()) or None,
                 "n": args.n, "iters": args.iters, "warmup": args.warmup}
    preset = Preset(**{**asdict(PRESETS[args.preset]), **{k: v for k, v in overrides.items() if v is not None}})
    args.iters, args.warmup = preset.iters, preset.warmup
    if preset.device == "cuda" and not torch.cuda.is_available():
        sys.exit(f"preset {args.preset} needs a CUDA device")
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__)] + sys.argv[1:])
    report = {
        "preset": args.preset, "date": datetime.date.today().isoformat(), "command": command,
        "machine": machine_info(), "versions": {**versions(), "triton": triton_version()},
        "settings": {**asdict(preset), "alpha": args.alpha, "chunk_size": args.chunk_size},
    }
    report["results"] = run_preset(preset, args)
    table = render(report)
    print(table)
    for path, text in ((args.markdown, table), (args.json, json.dumps(report, indent=2))):
        if path:
            Path(path).write_text(text)


if __name__ == "__main__":
    main()
