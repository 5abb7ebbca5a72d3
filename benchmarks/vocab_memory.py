"""Peak memory of AVA's pretrained Q values (Eq. 12): naive full-vocabulary version vs the chunked op.

For each vocabulary size the script measures loss = sum(Q) plus its backward pass, once with the naive
formula (full [N, V] logits, differentiated by autograd) and once with avalign.ops.pretrained_q_values.
Every measurement runs in its own subprocess so that the peaks do not contaminate each other:

* CPU: peak RSS (getrusage ru_maxrss) minus the value measured after the inputs are allocated;
* CUDA: torch.cuda.max_memory_allocated minus the memory allocated after the inputs.

The peak therefore includes the gradients (weight.grad is as large as the LM-head weight, for both
methods) and everything the computation allocates, but not the inputs themselves.

It prints a markdown report (settings, table) and, with --json FILE, writes the raw numbers.

    python benchmarks/vocab_memory.py                      # V = 32k, 128k, 256k; H = 256; N = 2048
    python benchmarks/vocab_memory.py --n 8192 --device cuda --dtype bfloat16 --json out.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import shlex
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from avalign.ops import pretrained_q_values

MIB = 2**20


def naive_pretrained_q_values(hidden, weight, bias, actions, alpha):
    """Eq. 12 over the full [N, V] tensor: what the chunked op replaces."""
    scaled = alpha * F.linear(hidden, weight, bias).float().softmax(-1)
    return scaled.gather(-1, actions[:, None]).squeeze(-1) - scaled.logsumexp(-1)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, nargs="+", default=[32_000, 128_000, 256_000], help="vocabulary sizes")
    parser.add_argument("--hidden", type=int, default=256, help="hidden size H")
    parser.add_argument("--n", type=int, default=2048, help="number of positions N in the loss")
    parser.add_argument("--chunk-size", type=int, default=None, help="rows per chunk (default: automatic)")
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--json", metavar="FILE", help="write the measurements here")
    # Internal: run one measurement in this process and print it as JSON.
    parser.add_argument("--measure", choices=["naive", "chunked"], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def make_inputs(args, vocab, n):
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    gen = torch.Generator(device=device).manual_seed(0)
    hidden = torch.randn(n, args.hidden, device=device, generator=gen) / math.sqrt(args.hidden)
    weight = torch.randn(vocab, args.hidden, device=device, generator=gen)
    bias = torch.zeros(vocab, device=device)
    actions = torch.randint(0, vocab, (n,), device=device, generator=gen)
    return [t.to(dtype).requires_grad_() for t in (hidden, weight, bias)] + [actions]


def loss_and_backward(method, args, hidden, weight, bias, actions):
    if method == "naive":
        q = naive_pretrained_q_values(hidden, weight, bias, actions, args.alpha)
    else:
        q = pretrained_q_values(hidden, weight, bias, actions, args.alpha, chunk_size=args.chunk_size)
    q.sum().backward()


def peak_bytes(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def measure(args):
    """One measurement in this process: the extra peak memory of loss + backward, and its time."""
    vocab = args.vocab[0]
    device = torch.device(args.device)
    # A tiny run first, so that lazily loaded kernels and thread pools are not counted as the op's memory.
    loss_and_backward(args.measure, args, *make_inputs(args, vocab=64, n=4))
    inputs = make_inputs(args, vocab, args.n)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
    else:
        baseline = peak_bytes(device)
    start = time.perf_counter()
    loss_and_backward(args.measure, args, *inputs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return {"peak_bytes": peak_bytes(device) - baseline, "seconds": seconds}


def run_in_subprocess(args, method, vocab):
    command = [sys.executable, os.path.abspath(__file__), "--measure", method, "--vocab", str(vocab)]
    command += ["--hidden", str(args.hidden), "--n", str(args.n), "--alpha", str(args.alpha)]
    command += ["--device", args.device, "--dtype", args.dtype]
    if args.chunk_size is not None:
        command += ["--chunk-size", str(args.chunk_size)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        # Most likely killed for memory (the naive version at large V); report it instead of stopping.
        return {"error": f"exit {result.returncode}: {result.stderr.strip()[-300:]}"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def mib(record):
    return f"{record['peak_bytes'] / MIB:,.0f} MiB" if "peak_bytes" in record else "failed"


def main(argv=None):
    args = parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args)))
        return

    element_size = torch.empty((), dtype=getattr(torch, args.dtype)).element_size()
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__)] + sys.argv[1:])
    print("# Peak memory of sum(Q) + backward, Eq. 12 pretrained Q values\n")
    print(f"- date: {datetime.date.today().isoformat()}")
    print(f"- machine: {platform.machine()}, nproc {os.cpu_count()}, device {args.device}")
    print(f"- torch {torch.__version__}, python {platform.python_version()}")
    print(f"- command: `{command}`")
    chunk = args.chunk_size if args.chunk_size is not None else "auto"
    print(f"- N = {args.n}, H = {args.hidden}, dtype {args.dtype}, alpha {args.alpha}, chunk_size {chunk}")
    print("- peak: above the memory held after allocating the inputs; includes weight.grad")
    print("  (the size of the LM-head weight) for both methods\n")
    print("| vocab | LM-head weight | naive peak | chunked peak | naive / chunked | naive time | chunked time |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for vocab in args.vocab:
        naive, chunked = (run_in_subprocess(args, method, vocab) for method in ("naive", "chunked"))
        ratio = (
            f"{naive['peak_bytes'] / chunked['peak_bytes']:.1f}x"
            if "peak_bytes" in naive and "peak_bytes" in chunked and chunked["peak_bytes"] > 0
            else "n/a"
        )
        weight_bytes = vocab * args.hidden * element_size
        times = " | ".join(f"{r['seconds']:.1f} s" if "seconds" in r else "failed" for r in (naive, chunked))
        cells = f"{vocab:,} | {weight_bytes / MIB:,.0f} MiB | {mib(naive)} | {mib(chunked)} | {ratio} | {times}"
        print(f"| {cells} |", flush=True)
        rows.append({"vocab": vocab, "weight_bytes": weight_bytes, "naive": naive, "chunked": chunked})

    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in ("measure", "json")}
        report = {"settings": settings, "torch": torch.__version__, "nproc": os.cpu_count(), "results": rows}
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
