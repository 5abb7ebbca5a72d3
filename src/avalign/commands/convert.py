"""`avalign convert llama2c --checkpoint stories260K.bin --tokenizer tok512.bin --output_dir DIR`."""

from __future__ import annotations

import argparse

from .parsing import ArgumentParser


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="avalign convert", description="Convert checkpoints to Hugging Face format.")
    formats = parser.add_subparsers(dest="format", required=True)
    llama2c = formats.add_parser(
        "llama2c",
        help="a llama2.c checkpoint (legacy version-0 export) and its tokenizer.bin",
        description="Write a LlamaForCausalLM and its fast tokenizer, loadable with from_pretrained(output_dir).",
    )
    llama2c.add_argument("--checkpoint", required=True, help="llama2.c model file, e.g. stories260K.bin")
    llama2c.add_argument("--tokenizer", required=True, help="llama2.c tokenizer file, e.g. tok512.bin")
    llama2c.add_argument("--output_dir", required=True, help="directory to write the Hugging Face model to")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    # Imported here so that `--help` answers without loading torch and transformers.
    from avalign.convert import convert_llama2c

    convert_llama2c(args.checkpoint, args.tokenizer, args.output_dir)
    print(f"wrote a LlamaForCausalLM and its tokenizer to {args.output_dir}")
    return 0
