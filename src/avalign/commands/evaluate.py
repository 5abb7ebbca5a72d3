"""`avalign evaluate`: pairwise accuracy of a trained reward model (AVA, Preference Transformer or Bradley-Terry);
the last stdout line is one JSON object.

--format pairs (default): a dataset avalign loads (its eval split by default), accuracy per scoring with a 95%
bootstrap interval, and the gold metrics on the synthetic task. --format rewardbench: a file of
prompt/chosen/rejected/subset rows, per-subset accuracy and RewardBench's section-weighted score."""

from __future__ import annotations

import argparse
import json
import os

from ..data.splits import check_fraction
from ..data.synthetic import SYNTHETIC
from ..errors import ConfigError, DataError
from .parsing import ArgumentParser, at_least


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(prog="avalign evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", required=True,
                        help="A directory written by `avalign train` (any objective that trains a reward model).")
    parser.add_argument("--dataset_name", default=SYNTHETIC, help="Hub id, local file, or 'synthetic'.")
    parser.add_argument("--format", default="pairs", choices=["pairs", "rewardbench"],
                        help="pairs: any dataset avalign loads; rewardbench: a local file with a subset column.")
    parser.add_argument("--scoring", default=None, choices=["last", "sum"],
                        help="Sequence score for --format rewardbench (default: the model's first, 'last').")
    parser.add_argument("--dataset_family", default=None, help="Parser for the dataset (default: detected).")
    parser.add_argument("--split", default=None, choices=["eval", "train", "all"],
                        help="Which side of the prompt-grouped split to score. Default: 'eval' (the held-out split, "
                        "same seed/fraction as training) for the model's own training file, else 'all'.")
    parser.add_argument("--eval_fraction", type=float, default=None, help="Default: as in training, else 0.1.")
    parser.add_argument("--dataset_seed", type=int, default=None, help="Default: as in training, else 0.")
    parser.add_argument("--max_rows", type=at_least(1), default=None)
    parser.add_argument("--max_length", type=at_least(4), default=None,
                        help="Truncation (default: the model's training max_length, else the model's context).")
    parser.add_argument("--batch_size", type=at_least(1), default=32)
    parser.add_argument("--synthetic_eval_size", type=at_least(1), default=500)
    args = parser.parse_args(argv)
    if args.eval_fraction is not None:
        check_fraction(args.eval_fraction)
    return args


def _pairs(args: argparse.Namespace, record: dict):
    """The pairs to score and why those: a file other than the model's training data is scored whole; the training
    file's held-out split (as recorded with the model) is scored only when given the training file itself."""
    from datasets import concatenate_datasets

    from ..data.synthetic import synthetic_datasets

    if args.dataset_name == SYNTHETIC:
        return (synthetic_datasets("preference", 0, args.synthetic_eval_size)[1],
                "the synthetic task's evaluation pairs (never trained on)")
    from ..data import load_dataset

    name = os.path.abspath(args.dataset_name) if os.path.exists(args.dataset_name) else args.dataset_name
    trained_on = record if record.get("dataset_name") == name else {}
    split = args.split or ("eval" if trained_on else "all")
    fraction = next(v for v in (args.eval_fraction, trained_on.get("eval_fraction"), 0.1) if v is not None)
    seed = next(v for v in (args.dataset_seed, trained_on.get("dataset_seed"), 0) if v is not None)
    max_rows = args.max_rows if args.max_rows is not None else trained_on.get("max_rows")
    loaded = load_dataset(args.dataset_name, family=args.dataset_family or trained_on.get("dataset_family"),
                          eval_fraction=fraction, seed=seed, max_rows=max_rows)
    if loaded.kind != "preference":
        raise DataError(f"evaluate ranks preference pairs, but {args.dataset_name} ({loaded.family}) holds "
                        "demonstrations (prompt/completion)", path=args.dataset_name)
    parts = {"eval": [loaded.eval], "train": [loaded.train], "all": [loaded.train, loaded.eval]}[split]
    if split == "all":
        why = "the whole file" + ("" if trained_on else " (not the model's training data)")
    else:
        why = (f"the {split} side of the prompt-grouped split (eval_fraction {fraction}, dataset_seed {seed}"
               + (", as in training)" if trained_on else ")"))
    return concatenate_datasets([p for p in parts if p is not None]), why


def evaluate(args: argparse.Namespace) -> dict:
    from ..evaluation.pairwise import pairwise_correct
    from ..reward_model import AVARewardModel, load_reward_model
    from ..training_record import load_training_record

    scorer = load_reward_model(args.model_name_or_path, max_length=args.max_length, batch_size=args.batch_size)
    metrics = {"max_length": scorer.max_length}
    if args.format == "rewardbench":
        from ..data.loading import read_file
        from ..evaluation.rewardbench import rewardbench_metrics, rewardbench_rows

        scoring = args.scoring or scorer.scorings[0]
        if scoring not in scorer.scorings:
            raise ConfigError(f"{args.model_name_or_path} offers scorings {list(scorer.scorings)}, not '{scoring}'")
        rows = rewardbench_rows(read_file(args.dataset_name, args.max_rows))
        chosen, rejected = scorer.pair_scores(rows, progress=True)
        correct = pairwise_correct(chosen[scoring], rejected[scoring])
        return {**metrics, "scoring": scoring, "n": len(rows), **rewardbench_metrics(correct.tolist(), rows["subset"])}
    dataset, metrics["scored"] = _pairs(args, load_training_record(args.model_name_or_path))
    metrics.update(scorer.evaluate_pairs(dataset, progress=True))
    metrics["accuracy"] = metrics[f"accuracy_{scorer.scorings[0]}"]
    if "chosen_gold_rewards" in dataset.column_names and isinstance(scorer, AVARewardModel):
        from ..evaluation.gold import gold_metrics

        metrics.update(gold_metrics(scorer, dataset))
    return metrics


def main(argv: list[str]) -> int:
    metrics = evaluate(parse_args(argv))
    print(json.dumps(metrics, sort_keys=True))
    return 0
