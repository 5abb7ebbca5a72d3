"""`avalign evaluate`: pairwise accuracy of a trained TQR model; the last stdout line is one JSON object."""

from __future__ import annotations

import argparse
import json

from ..errors import DataError


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="avalign evaluate", description=__doc__)
    parser.add_argument("--model_name_or_path", required=True, help="A directory written by `avalign train`.")
    parser.add_argument("--dataset_name", default="synthetic", help="Hub id, local file, or 'synthetic'.")
    parser.add_argument("--dataset_family", default=None, help="Parser for the dataset (default: detected).")
    parser.add_argument("--split", default="eval", choices=["eval", "train", "all"],
                        help="Which side of the prompt-grouped split to score (same seed/fraction as training).")
    parser.add_argument("--eval_fraction", type=float, default=0.1)
    parser.add_argument("--dataset_seed", type=int, default=0)
    parser.add_argument("--max_rows", type=int, default=None)
    parser.add_argument("--max_length", type=int, default=None, help="Truncate as in training (default: no limit).")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--synthetic_eval_size", type=int, default=500)
    return parser.parse_args(argv)


def evaluate(args: argparse.Namespace) -> dict:
    from datasets import concatenate_datasets

    from ..data.synthetic import synthetic_datasets
    from ..evaluation.gold import gold_metrics
    from ..reward_model import AVARewardModel

    scorer = AVARewardModel.from_pretrained(args.model_name_or_path, max_length=args.max_length, batch_size=args.batch_size)
    metrics: dict = {}
    if args.dataset_name == "synthetic":
        _, dataset, _ = synthetic_datasets("preference", 0, args.synthetic_eval_size)
    else:
        from ..data import load_dataset

        loaded = load_dataset(args.dataset_name, family=args.dataset_family, eval_fraction=args.eval_fraction,
                              seed=args.dataset_seed, max_rows=args.max_rows)
        parts = {"eval": [loaded.eval], "train": [loaded.train], "all": [loaded.train, loaded.eval]}[args.split]
        dataset = concatenate_datasets([p for p in parts if p is not None])
        if loaded.kind != "preference":
            raise DataError(f"evaluate ranks preference pairs, but {args.dataset_name} ({loaded.family}) holds "
                            "demonstrations (prompt/completion)", path=args.dataset_name)
    metrics.update(scorer.evaluate_pairs(dataset, progress=True))
    metrics["accuracy"] = metrics["accuracy_last"]
    if "chosen_gold_rewards" in dataset.column_names:
        metrics.update(gold_metrics(scorer, dataset))
    return metrics


def main(argv: list[str]) -> int:
    metrics = evaluate(parse_args(argv))
    print(json.dumps(metrics, sort_keys=True))
    return 0
