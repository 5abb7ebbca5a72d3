"""`avalign compare`: win / tie / lose rates of completions A against completions B of the same prompts, under a
judge. Rows are matched by prompt and sample_index; the last stdout line is one JSON object."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

from .bon import add_reward_model_arguments
from .parsing import ArgumentParser


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(prog="avalign compare", description=__doc__)
    parser.add_argument("--a", required=True, help="JSONL/JSON rows with prompt and completion (and sample_index).")
    parser.add_argument("--b", required=True, help="The rows to compare against, same format.")
    parser.add_argument("--judge", required=True, choices=["gold", "rm", "llm"],
                        help="gold: the synthetic task's gold return; rm: a reward model; llm: a chat model behind an "
                             "OpenAI-compatible endpoint, asked in both orders.")
    parser.add_argument("--margin", type=float, default=0.0,
                        help="gold / rm: a tie when the two scores differ by at most this much.")
    add_reward_model_arguments(parser, required=False, prefix="rm: ")
    parser.add_argument("--batch_size", type=int, default=32, help="rm: sequences per scoring batch.")
    parser.add_argument("--max_length", type=int, default=None, help="rm: truncate as in training.")
    parser.add_argument("--base_url", default=None, help="llm: e.g. http://localhost:8000/v1 (before /chat/completions).")
    parser.add_argument("--model", default=None, help="llm: the model name the endpoint serves.")
    parser.add_argument("--api_key_env", default="OPENAI_API_KEY",
                        help="llm: environment variable holding the API key (unset: no Authorization header).")
    parser.add_argument("--timeout", type=float, default=60.0, help="llm: seconds per request.")
    parser.add_argument("--retries", type=int, default=2, help="llm: retries after HTTP 429 / 5xx or network errors.")
    parser.add_argument("--retry_wait", type=float, default=2.0, help="llm: seconds before the first retry (doubles).")
    parser.add_argument("--workers", type=int, default=4, help="llm: requests in flight.")
    return parser.parse_args(argv)


def read_completions(path: str) -> dict[tuple, tuple[str, str, str]]:
    """Rows keyed by (prompt, sample_index, occurrence), so the k-th row with a (prompt, sample_index) in one file
    meets the k-th such row of the other. Values: (where the row is, prompt, completion)."""
    from ..data.loading import read_file
    from ..generation import record_text

    rows, seen = {}, Counter()
    for record in read_file(path):
        prompt, completion = record_text(record, "prompt"), record_text(record, "completion")
        sample_index = record.data.get("sample_index", 0)
        if not isinstance(sample_index, int) or isinstance(sample_index, bool):
            raise record.error(f"expected an integer, got {sample_index!r:.40}", "sample_index")
        key = (prompt, sample_index)
        rows[(*key, seen[key])] = (f"{path} row {record.row}", prompt, completion)
        seen[key] += 1
    return rows


def make_judge(args: argparse.Namespace):
    from ..errors import ConfigError
    from ..evaluation import judges

    if args.judge == "gold":
        return judges.GoldJudge(margin=args.margin)
    if args.judge == "rm":
        if args.reward_model is None:
            raise ConfigError("--judge rm needs --reward_model")
        return judges.RewardModelJudge(args.reward_model, args.scoring, args.margin, ensemble=args.ensemble,
                                       k=args.ensemble_k, kappa=args.kappa, batch_size=args.batch_size,
                                       max_length=args.max_length)
    if args.base_url is None or args.model is None:
        raise ConfigError("--judge llm needs --base_url and --model")
    return judges.LLMJudge(args.base_url, args.model, api_key_env=args.api_key_env, timeout=args.timeout,
                           retries=args.retries, retry_wait=args.retry_wait, workers=args.workers)


def compare(args: argparse.Namespace) -> dict:
    from ..errors import DataError
    from ..evaluation.judges import win_rates

    rows_a, rows_b = read_completions(args.a), read_completions(args.b)
    matched = [key for key in rows_a if key in rows_b]
    unmatched_a, unmatched_b = len(rows_a) - len(matched), len(rows_b) - len(matched)
    if unmatched_a or unmatched_b:
        print(f"warning: {unmatched_a} rows of {args.a} and {unmatched_b} rows of {args.b} have no counterpart (same "
              "prompt and sample_index) and are not judged", file=sys.stderr)
    if not matched:
        raise DataError(f"no row of {args.a} matches a row of {args.b} by prompt and sample_index")
    pairs = [(rows_a[key], rows_b[key]) for key in matched]
    outcomes = make_judge(args).judge(
        [a[1] for a, _ in pairs], [a[2] for a, _ in pairs], [b[2] for _, b in pairs],
        labels=[f"{a[0]} vs {b[0]}" for a, b in pairs],
    )
    return {"judge": args.judge, "margin": args.margin, "a": args.a, "b": args.b, "unmatched_a": unmatched_a,
            "unmatched_b": unmatched_b, **win_rates(outcomes)}


def table(result: dict) -> str:
    def interval(bounds) -> str:
        return f"[{bounds[0]:6.1f}, {bounds[1]:6.1f}]"

    return "\n".join([
        f"A = {result['a']}  vs  B = {result['b']}  (judge: {result['judge']}, tie margin {result['margin']})",
        f"{result['n']} pairs judged; unmatched rows: {result['unmatched_a']} in A, {result['unmatched_b']} in B",
        f"{'':<10}{'%':>7}  95% bootstrap interval",
        f"{'A wins':<10}{result['win_pct']:7.1f}  {interval(result['win_pct_ci95'])}",
        f"{'tie':<10}{result['tie_pct']:7.1f}",
        f"{'A loses':<10}{result['lose_pct']:7.1f}",
        f"{'win-lose':<10}{result['win_minus_lose_pct']:7.1f}  {interval(result['win_minus_lose_pct_ci95'])}",
    ])


def main(argv: list[str]) -> int:
    result = compare(parse_args(argv))
    print(table(result))
    print(json.dumps(result, sort_keys=True))
    return 0
