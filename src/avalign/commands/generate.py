"""`avalign generate`: sample completions from a policy to JSONL; the last stdout line is one JSON object."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from .parsing import ArgumentParser


def add_policy_arguments(parser: argparse.ArgumentParser, default_n: int) -> None:
    """Flags `generate` and `bon` share: the policy, the prompts, the output and how to sample."""
    parser.add_argument("--policy", required=True,
                        help="A Hugging Face causal-LM / seq2seq directory or a TQR checkpoint (`avalign train`).")
    parser.add_argument("--beta", type=float, default=1.0,
                        help="beta of the Boltzmann policy softmax(beta * Q) of a TQR checkpoint with a fresh Q head "
                             "(pretrained_q=False); other policies sample their LM's own logits.")
    parser.add_argument("--prompts", default="synthetic",
                        help="'synthetic' (the synthetic task's eval prompts), a .jsonl/.json file of rows with a "
                             "'prompt' string, or any dataset `avalign train` reads (its eval split's prompts).")
    parser.add_argument("--dataset_family", default=None, help="Parser for a dataset given as --prompts.")
    parser.add_argument("--eval_fraction", type=float, default=0.1, help="As in training: the eval split's share.")
    parser.add_argument("--dataset_seed", type=int, default=0, help="As in training: the split's seed.")
    parser.add_argument("--synthetic_eval_size", type=int, default=500, help="Synthetic eval pairs to take prompts from.")
    parser.add_argument("--max_prompts", type=int, default=None, help="Use the first K distinct prompts.")
    parser.add_argument("--output", required=True, help="Where to write the rows (JSONL).")
    parser.add_argument("--n", type=int, default=default_n, help="Completions sampled per prompt.")
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top_p", type=float, default=1.0, help="Nucleus sampling (1: off).")
    parser.add_argument("--top_k", type=int, default=0, help="Top-k sampling (0: off).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=16, help="Prompts per generate call.")
    parser.add_argument("--max_prompt_tokens", type=int, default=None,
                        help="Keep the last K tokens of a longer prompt (default: whole prompts).")


def load_policy_and_prompts(args: argparse.Namespace):
    """(policy, tokenizer, prompts, synthetic task or None) from the shared flags."""
    from ..generation import load_policy, load_prompts

    prompts, task = load_prompts(args.prompts, max_prompts=args.max_prompts, family=args.dataset_family,
                                 eval_fraction=args.eval_fraction, dataset_seed=args.dataset_seed,
                                 synthetic_eval_size=args.synthetic_eval_size)
    model, tokenizer = load_policy(args.policy, beta=args.beta)
    return model, tokenizer, prompts, task


def sampling_kwargs(args: argparse.Namespace) -> dict:
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                do_sample=not getattr(args, "greedy", False), seed=args.seed, batch_size=args.batch_size,
                max_prompt_tokens=args.max_prompt_tokens)


def gold_summary(task, rows: list[dict], field: str = "completion", key: str = "gold_reward") -> dict:
    """Set ``row[key]`` to the gold return of ``row[field]`` (a text, or a list of texts: a list of returns). Words the
    task does not know make a return null; they are counted here and on stderr. Returns the mean and the count."""
    from ..evaluation.judges import gold_return

    known, unknown_words, unknown_rows = [], 0, 0
    for row in rows:
        texts = row[field] if isinstance(row[field], list) else [row[field]]
        results = [gold_return(task, row["prompt"], text) for text in texts]
        golds = [value for value, _ in results]
        row[key] = golds if isinstance(row[field], list) else golds[0]
        known += [value for value in golds if value is not None]
        unknown_words += sum(unknown for _, unknown in results)
        unknown_rows += None in golds
    if unknown_words:
        print(f"warning: {unknown_words} words in {unknown_rows} rows are not words of the synthetic task: their "
              f"{key} is null and left out of the mean", file=sys.stderr)
    return {f"mean_{key}": float(np.mean(known)) if known else float("nan"), f"{key}_unknown_words": unknown_words}


def write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(prog="avalign generate", description=__doc__)
    add_policy_arguments(parser, default_n=1)
    parser.add_argument("--greedy", action="store_true", help="Greedy decoding instead of sampling (one per prompt).")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    from ..generation import generate_completions

    args = parse_args(argv)
    model, tokenizer, prompts, task = load_policy_and_prompts(args)
    rows = generate_completions(model, tokenizer, prompts, num_return_sequences=args.n, **sampling_kwargs(args))
    for row in rows:
        row.update(policy=args.policy, seed=args.seed)
    summary = {"output": args.output, "rows": len(rows), "prompts": len(prompts),
               "empty_completions": sum(not row["completion"].strip() for row in rows)}
    if task is not None:
        summary.update(gold_summary(task, rows))
    write_jsonl(args.output, rows)
    print(json.dumps(summary, sort_keys=True))
    return 0
