"""`avalign data stats --dataset_name X [X ...] [--family F] [--model_name_or_path M] [--max_length N] [--markdown]`."""

from __future__ import annotations

import argparse

from avalign.data.families import FAMILIES
from avalign.data.loading import load_dataset
from avalign.data.stats import MARKDOWN_HEADER, compute_stats, load_tokenizer
from .parsing import ArgumentParser


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="avalign data", description="Dataset tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    stats = commands.add_parser(
        "stats",
        help="rows, cleaning counts, length percentiles and truncation of a dataset",
        description="Load a dataset as training would (same parsers, cleaning and split) and print its rows, what "
        "cleaning removed, prompt/response length percentiles (p50/p90/p99/max) and, with --max_length, how many "
        "rows would be truncated. Lengths are tokens of --model_name_or_path's tokenizer, else UTF-8 bytes.",
    )
    stats.add_argument("--dataset_name", nargs="+", required=True, metavar="NAME_OR_PATH",
                       help="local file or directory, save_to_disk folder or Hugging Face dataset id; several allowed")
    stats.add_argument("--family", choices=list(FAMILIES), default=None, help="parser to use (default: detected)")
    stats.add_argument("--model_name_or_path", default=None, help="count tokens with this model's tokenizer")
    stats.add_argument("--max_length", type=int, default=None, help="count rows whose prompt + response exceed this")
    stats.add_argument("--eval_fraction", type=float, default=0.1, help="share of prompts held out (default 0.1)")
    stats.add_argument("--seed", type=int, default=0, help="seed of the prompt-grouped split")
    stats.add_argument("--max_rows", type=int, default=None, help="read at most this many rows per split")
    stats.add_argument("--conversational", action="store_true", help="measure the conversational (messages) form")
    stats.add_argument("--markdown", action="store_true", help="print one markdown table row per dataset instead")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    tokenizer = load_tokenizer(args.model_name_or_path) if args.model_name_or_path else None
    if args.markdown:
        print(MARKDOWN_HEADER)
    for index, name in enumerate(args.dataset_name):
        data = load_dataset(name, family=args.family, eval_fraction=args.eval_fraction, seed=args.seed,
                            conversational=args.conversational, max_rows=args.max_rows)
        stats = compute_stats(name, data, tokenizer=tokenizer, max_length=args.max_length)
        print(stats.markdown_row() if args.markdown else ("\n" if index else "") + stats.render())
    return 0
