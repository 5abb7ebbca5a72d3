"""`avalign bon`: best-of-N sampling with a reward model, to JSONL; the last stdout line is one JSON object."""

from __future__ import annotations

import argparse
import json

import numpy as np

from .generate import add_policy_arguments, gold_summary, load_policy_and_prompts, sampling_kwargs, write_jsonl
from .parsing import ArgumentParser, at_least

KAPPA_HELP = ("Pessimism of AVA reward models: score with token rewards w*mu - kappa*sigma (an error for Bradley-Terry "
              "models, which have no sigma; in an ensemble it applies to the AVA members). Default 0: the mean.")
ENSEMBLE_HELP = ("How several --reward_model paths combine into one score per response (Coste et al. 2023): mean, "
                 "worst (the minimum over members) or lcb (mean - ensemble_k * std). Required with several paths.")
ENSEMBLE_K_HELP = "lcb: how many standard deviations below the members' mean."


def _finite_mean(values) -> float:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else float("nan")


def _or_null(score: float) -> float | None:
    return score if np.isfinite(score) else None


def add_reward_model_arguments(parser: argparse.ArgumentParser, required: bool = True, prefix: str = "") -> None:
    """Flags `bon` and `compare --judge rm` share: the reward model(s), how an ensemble combines them, pessimism and
    the sequence score; ``prefix`` starts each help text."""
    from ..reward_model import ENSEMBLES

    parser.add_argument("--reward_model", nargs="+", required=required,
                        help=f"{prefix}Any reward model avalign trains: an AVA (TQR) directory, a Bradley-Terry "
                             "(sequence-classification) directory, or a Preference Transformer (TQR); several paths "
                             "with --ensemble.")
    parser.add_argument("--ensemble", default=None, choices=ENSEMBLES, help=prefix + ENSEMBLE_HELP)
    parser.add_argument("--ensemble_k", type=at_least(0.0, float), default=1.0, help=prefix + ENSEMBLE_K_HELP)
    parser.add_argument("--kappa", type=at_least(0.0, float), default=0.0, help=prefix + KAPPA_HELP)
    parser.add_argument("--scoring", default=None, choices=["last", "sum", *ENSEMBLES],
                        help=f"{prefix}Sequence score: AVA offers last and sum (Eq. 19), Bradley-Terry last only, an "
                             "ensemble its --ensemble. Default: the score the model was trained to rank by.")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(prog="avalign bon", description=__doc__)
    add_policy_arguments(parser, default_n=4)
    add_reward_model_arguments(parser)
    parser.add_argument("--max_length", type=int, default=None, help="Truncate scored sequences as in training.")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    from ..evaluation.judges import reward_model_scorer
    from ..generation import best_of_n
    from ..reward_model import load_reward_models

    args = parse_args(argv)
    model, tokenizer, prompts, task = load_policy_and_prompts(args)
    reward_model = load_reward_models(args.reward_model, args.ensemble, args.ensemble_k, kappa=args.kappa,
                                      max_length=args.max_length, batch_size=args.batch_size, device=model.device)
    rows = best_of_n(model, tokenizer, prompts, reward_model_scorer(reward_model, args.scoring), args.n,
                     **sampling_kwargs(args))
    for row in rows:  # sample_index 0: one row per prompt, matched by `compare` against `generate --n 1`
        row.update(sample_index=0, policy=args.policy, seed=args.seed, n=args.n,
                   reward_model=args.reward_model[0] if args.ensemble is None else args.reward_model,
                   ensemble=args.ensemble, ensemble_k=args.ensemble_k, kappa=args.kappa,
                   scoring=args.scoring or reward_model.scorings[0])
    candidate_scores = np.array([row["candidate_scores"] for row in rows])
    summary = {"output": args.output, "prompts": len(rows), "n": args.n,
               "mean_proxy_score": _finite_mean([row["proxy_score"] for row in rows]),
               "mean_candidate_proxy_score": _finite_mean(candidate_scores),
               "empty_candidates": int(np.isinf(candidate_scores).sum())}
    for row in rows:  # empty completions score -inf (unscorable): null in the JSONL, which has no infinities
        row["proxy_score"] = _or_null(row["proxy_score"])
        row["candidate_scores"] = [_or_null(score) for score in row["candidate_scores"]]
    if task is not None:
        summary.update(gold_summary(task, rows))
        summary.update(gold_summary(task, rows, "candidates", "candidate_gold_rewards"))
    write_jsonl(args.output, rows)
    print(json.dumps(summary, sort_keys=True))
    return 0
