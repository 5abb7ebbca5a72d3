"""`avalign <command> [flags]`: a thin dispatcher over the library. Each command lives in avalign.commands."""

from __future__ import annotations

import importlib
import sys

from .errors import AvalignError

COMMANDS = {
    "train": ("avalign.commands.train", "train an AVA (or baseline) model"),
    "evaluate": ("avalign.commands.evaluate", "pairwise accuracy of a trained reward model"),
    "score": ("avalign.commands.score", "score a file of responses: per-token rewards to JSONL, HTML, PNG"),
    "serve": ("avalign.commands.serve", "serve a reward model over HTTP (OpenRLHF's remote reward protocol)"),
    "generate": ("avalign.commands.generate", "sample completions from a policy to JSONL"),
    "bon": ("avalign.commands.bon", "best-of-N sampling with a reward model"),
    "ppo": ("avalign.commands.ppo", "PPO on a policy with (dense) AVA or baseline rewards"),
    "compare": ("avalign.commands.compare", "win / tie / lose rates of two sets of completions under a judge"),
    "experiment": ("avalign.commands.experiment", "run a study from a YAML config (`avalign experiment reward-modeling ...`)"),
    "data": ("avalign.commands.data", "dataset statistics (`avalign data stats ...`)"),
    "tokenizer": ("avalign.commands.tokenizer", "train an offline byte-level BPE tokenizer"),
    "convert": ("avalign.commands.convert", "convert checkpoints (`avalign convert llama2c ...`)"),
    "merge": ("avalign.commands.merge", "fold a LoRA adapter into its base model and write a plain model"),
}


def _usage() -> str:
    lines = ["usage: avalign <command> [flags]   (avalign <command> --help for its flags)", "", "commands:"]
    lines += [f"  {name:<10} {help_text}" for name, (_, help_text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    command = argv.pop(0)
    if command not in COMMANDS:
        print(f"avalign: unknown command '{command}'.\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    try:
        return int(module.main(argv) or 0)
    except AvalignError as error:  # the project's own errors already say what to fix: no traceback
        print(f"avalign {command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
