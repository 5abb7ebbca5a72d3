"""`avalign tokenizer train --input FILE [--input FILE ...] --vocab_size N --output_dir DIR [--text_fields a,b]`."""

from __future__ import annotations

import argparse

from .parsing import ArgumentParser


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="avalign tokenizer", description="Offline tokenizers.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train",
        help="train a byte-level BPE tokenizer on local files",
        description="Train a byte-level BPE tokenizer on .txt (one text per line) or .jsonl/.jsonl.gz files "
        "and save it where AutoTokenizer.from_pretrained can load it.",
    )
    train.add_argument("--input", action="append", required=True, metavar="FILE", help="a training file; repeatable")
    train.add_argument("--vocab_size", type=int, required=True, help="vocabulary size, special tokens included")
    train.add_argument("--output_dir", required=True, help="directory to save the tokenizer to")
    train.add_argument(
        "--text_fields",
        type=lambda value: [field.strip() for field in value.split(",") if field.strip()],
        default=None,
        metavar="A,B,...",
        help="JSON fields to join into one text per row (default: every string field; "
        "prompt+chosen and prompt+rejected for preference rows)",
    )
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    # Imported here so that `--help` answers without loading transformers.
    from avalign.tokenizer import read_texts, train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(read_texts(args.input, args.text_fields), args.vocab_size, args.output_dir)
    print(f"saved a {len(tokenizer)}-token byte-level BPE tokenizer to {args.output_dir}")
    return 0
