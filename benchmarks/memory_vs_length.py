"""Peak memory of one AVA-p training step against TRL's SFT step on the same tokens, as the sequence length grows.

For each length T, one preference pair whose prompt + response + EOS is exactly T tokens on each side: AVA-p
(avalign.AVATrainer) trains on the pair, SFT (trl.SFTTrainer) on prompt+chosen and prompt+rejected as two rows,
so both see the same 2T tokens. Same tiny backbone (saved once, loaded by both), float32 on CPU, the real Trainer
step of benchmarks/train_step.py (``measure``). Each measurement runs in a fresh process and reads the kernel's
RSS high-water mark (VmHWM of /proc/self/status, reset when training starts); the table shows the peak above the
RSS at the start of training. AVA's memory is linear in T when its ratio to SFT's stays flat.

    python benchmarks/memory_vs_length.py --lengths 1024 2048 4096 8192 16384 \\
        --markdown benchmarks/results/memory_vs_length_cpu.md --json benchmarks/results/memory_vs_length_cpu.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_step  # noqa: E402  (the step, the backbone and the tokenizer)
from common import machine_info, run_command, versions  # noqa: E402

MIB = 2**20
METHODS = ("ava-p", "sft")
PROMPT_TOKENS = 16
# A tiny Llama: the vocabulary is kept at 4096 so that SFT's logits are a realistic share of its memory.
BASE = dataclasses.replace(train_step.PRESETS["cpu"], hidden_size=64, num_layers=2, num_heads=2, batch_pairs=1,
                           warmup_steps=0, measured_steps=1, threads=1)


def preset(length: int) -> train_step.Preset:
    """Every sequence exactly ``length`` tokens: PROMPT_TOKENS prompt words, the rest response words and EOS."""
    response = length - PROMPT_TOKENS - 1
    return dataclasses.replace(BASE, prompt_words=(PROMPT_TOKENS, PROMPT_TOKENS), response_words=(response, response),
                               max_length=length + 1)


def render(report: dict) -> str:
    lines = [
        "| T (tokens per sequence) | tokens per step | AVA-p peak (MiB) | SFT peak (MiB) | AVA-p / SFT |",
        "|---:|---:|---:|---:|---:|",
    ]
    for length, row in report["lengths"].items():
        ava, sft = row.get("ava-p", {}), row.get("sft", {})
        if "peak_bytes" not in ava or "peak_bytes" not in sft:
            error = (ava.get("error") or sft.get("error") or "missing").splitlines()[-1][:100]
            lines.append(f"| {length} | failed: {error} | | | |")
            continue
        lines.append(f"| {length} | {ava['tokens_per_step']:,} | {ava['peak_bytes'] / MIB:,.0f} | "
                     f"{sft['peak_bytes'] / MIB:,.0f} | {ava['peak_bytes'] / sft['peak_bytes']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--markdown", metavar="FILE")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--timeout", type=int, default=600, help="seconds per measurement")
    # Internal: one measurement in this process, printed as JSON.
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        train_step.torch.set_num_threads(BASE.threads)
        print(json.dumps(train_step.measure(args.worker, preset(args.length), args.model_dir)))
        return

    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__)] + sys.argv[1:])
    tokenizer = train_step.word_tokenizer(BASE.vocab_size)
    report = {"command": command, "machine": machine_info(), "versions": versions(),
              "model": dataclasses.asdict(BASE), "lengths": {}}
    with tempfile.TemporaryDirectory() as workdir:
        model_dir = os.path.join(workdir, "model")
        model = train_step.build_model(preset(max(args.lengths)), tokenizer)  # positions for the longest
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        report["parameters"] = sum(p.numel() for p in model.parameters())
        del model
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "TQDM_DISABLE": "1", "HF_DATASETS_CACHE": os.path.join(workdir, "datasets-cache")}
        for length in args.lengths:
            row = report["lengths"][str(length)] = {}
            for method in args.methods:
                print(f"[memory_vs_length] T={length} {method} ...", file=sys.stderr, flush=True)
                command = [sys.executable, os.path.abspath(__file__), "--worker", method, "--length", str(length),
                           "--model-dir", model_dir]
                row[method] = run_command(command, env, args.timeout)
                if args.json:  # what is measured so far survives a run stopped from outside
                    with open(args.json, "w") as f:
                        json.dump(report, f, indent=2, default=str)
    markdown = render(report)
    print(markdown)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown)


if __name__ == "__main__":
    main()
