"""Runs bad-input cases of issue 16 through the `avalign` CLI and classifies each outcome.

    PYTHONPATH=src python experiments/bad_inputs.py [--jobs 2] [--only NAME ...]

Each case expects an error (exit 2, one line on stderr naming what to fix) or success (exit 0). Outcomes:
clear error, traceback (a Python traceback on stderr), silent (exit 0 where an error was expected), other (a
non-zero exit without a traceback that is not the expected one-line error, or a failure where success was expected).
The table and the counts are printed; docs/reliability.md gives them before and after the fixes of issue 16."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TINY = ["--synthetic_train_size", "32", "--synthetic_eval_size", "8", "--max_steps", "2", "--disable_tqdm", "true",
        "--report_to", "none", "--save_strategy", "no"]


def cases(work: Path) -> list[tuple[str, list[str], str]]:
    """(name, argv after `avalign`, expected: 'error' or 'ok'). Files the cases read are written into ``work``."""
    (work / "typo.yaml").write_text("learning_rat: 0.001\n")
    (work / "broken.yaml").write_text("learning_rate: [0.001\nbeta: 1\n")
    (work / "list.yaml").write_text("- learning_rate\n- 0.1\n")
    from transformers import GPT2Config, GPT2LMHeadModel  # a language model: no reward head to load

    from avalign.data.synthetic import synthetic_datasets

    tokenizer = synthetic_datasets("preference", 1, 1)[2].tokenizer()
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2)).save_pretrained(
        work / "not_a_model")
    tokenizer.save_pretrained(work / "not_a_model")
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer) - 5, n_embd=16, n_layer=1, n_head=2)).save_pretrained(
        work / "small_vocab")
    tokenizer.save_pretrained(work / "small_vocab")
    out = str(work / "out")  # the control run's model, which the evaluate cases read; no other case writes there
    train = ["train", *TINY]
    diverge = ["--learning_rate", "1e6", "--max_steps", "10", "--synthetic_train_size", "160"]
    return [
        ("unknown flag", [*train, "--no_such_flag", "1"], "error"),
        ("abbreviated flag", [*train, "--learning_rat", "0.001"], "error"),
        ("bad float", [*train, "--learning_rate", "abc"], "error"),
        ("yaml key typo", [*train, "--config", str(work / "typo.yaml")], "error"),
        ("yaml syntax error", [*train, "--config", str(work / "broken.yaml")], "error"),
        ("yaml not a mapping", [*train, "--config", str(work / "list.yaml")], "error"),
        ("missing yaml", [*train, "--config", str(work / "missing.yaml")], "error"),
        ("negative learning rate", [*train, "--learning_rate", "-1"], "error"),
        ("batch size 0", [*train, "--per_device_train_batch_size", "0"], "error"),
        ("eval batch size 0", [*train, "--per_device_eval_batch_size", "0"], "error"),
        ("missing model path", [*train, "--model_name_or_path", str(work / "nowhere")], "error"),
        ("missing dataset file", [*train, "--dataset_name", str(work / "nowhere.jsonl")], "error"),
        ("negative beta", [*train, "--beta", "-1"], "error"),
        ("negative lambda", [*train, "--lam", "-5"], "error"),
        ("negative cer_coef", [*train, "--cer_coef", "-3"], "error"),
        ("gamma above 1", [*train, "--gamma", "7"], "error"),
        ("dpo_beta 0", [*train, "--objective", "dpo", "--dpo_beta", "0"], "error"),
        ("max_length 0", [*train, "--max_length", "0"], "error"),
        ("eval_fraction 1.5", [*train, "--eval_fraction", "1.5"], "error"),
        ("max_length beyond positions", [*train, "--model_name_or_path", str(work / "not_a_model"), "--max_length",
                                         "2000"], "error"),  # GPT-2 embeds 1024 positions
        ("tokenizer beyond vocabulary", [*train, "--model_name_or_path", str(work / "small_vocab")], "error"),
        ("unknown objective", [*train, "--objective", "ppo"], "error"),
        ("dpo diverges", [*train, "--objective", "dpo", *diverge], "error"),
        ("bt diverges", [*train, "--objective", "bt", *diverge], "error"),
        ("sft diverges", [*train, "--objective", "sft", *diverge], "error"),
        ("evaluate unknown flag", ["evaluate", "--model_name_or_path", out, "--no_such_flag"], "error"),
        ("evaluate abbreviated flag", ["evaluate", "--model_name", out], "error"),
        ("evaluate batch size 0", ["evaluate", "--model_name_or_path", out, "--batch_size", "0"], "error"),
        ("evaluate missing model", ["evaluate", "--model_name_or_path", str(work / "nowhere")], "error"),
        ("evaluate LM without reward head", ["evaluate", "--model_name_or_path", str(work / "not_a_model")], "error"),
        ("train tiny (control)", [*train, "--output_dir", out], "ok"),
    ]


def classify(expected: str, code: int, stderr: str) -> str:
    if "Traceback (most recent call last)" in stderr:
        return "traceback"
    if expected == "ok":
        return "ok" if code == 0 else "other"
    if code == 0:
        return "silent"
    errors = [line for line in stderr.splitlines() if "error" in line.lower()]
    return "clear error" if code == 2 and len(errors) == 1 else "other"


def run_case(case, env, work: Path) -> tuple[str, str, int, str]:
    name, argv, expected = case
    if argv[0] == "train" and "--output_dir" not in argv:  # a directory of its own: cases run side by side
        argv = [*argv, "--output_dir", str(work / "runs" / name.replace(" ", "-"))]
    result = subprocess.run([sys.executable, "-m", "avalign.cli", *argv], capture_output=True, text=True, env=env,
                            timeout=600)
    last = (result.stderr.strip().splitlines() or [""])[-1][:160]
    return name, classify(expected, result.returncode, result.stderr), result.returncode, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None, help="Run only the cases with these names.")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory() as work:
        selected = [c for c in cases(Path(work)) if args.only is None or c[0] in args.only]
        # The control run first: the evaluate cases read its output directory.
        control = [c for c in selected if c[2] == "ok"]
        results = [run_case(c, env, Path(work)) for c in control]
        with ThreadPoolExecutor(args.jobs) as pool:
            results += list(pool.map(lambda c: run_case(c, env, Path(work)), [c for c in selected if c[2] != "ok"]))
    for name, outcome, code, last in results:
        print(f"{name:<30} {outcome:<12} exit {code:<3} {last}")
    counts: dict[str, int] = {}
    for _, outcome, _, _ in results:
        counts[outcome] = counts.get(outcome, 0) + 1
    print("counts:", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), f"(of {len(results)})")


if __name__ == "__main__":
    main()
