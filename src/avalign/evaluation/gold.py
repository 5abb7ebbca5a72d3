"""Metrics against the gold per-token rewards of a gold task (the synthetic task, the stories260K task)."""

from __future__ import annotations

from datasets import Dataset

from .dense import dense_metrics, model_readings
from .pairwise import pairwise_accuracy


def gold_metrics(scorer, dataset: Dataset, tokenized: Dataset | None = None, plots: bool = False) -> dict:
    """``gold_accuracy``: how often the gold return orders the pair as labelled (the ceiling for any reward model,
    since labels were drawn Bradley-Terry from gold returns). ``dense``: ``evaluation.dense.dense_metrics`` of each of
    the scorer's per-token readings. For AVA models, ``gold_reward_pearson`` (unweighted mu) and
    ``gold_weighted_reward_pearson`` (the library's token reward, w_t mu_t) are its Pearson figures.

    ``tokenized``: the pairs already tokenised as the scorer would (``prompt_ids``/``chosen_ids``/``rejected_ids``);
    otherwise they are tokenised once here. ``plots``: keep the points and examples the study's plots draw."""
    if tokenized is None:
        tokenized = scorer._tokenized(scorer._pairs(dataset))
    readings = model_readings(scorer, tokenized, scorer.batch_size)
    dense = dense_metrics(readings, dataset) if plots else dense_metrics(readings, dataset, points=0, examples=0)
    metrics = {
        "gold_accuracy": pairwise_accuracy(
            [sum(g) for g in dataset["chosen_gold_rewards"]], [sum(g) for g in dataset["rejected_gold_rewards"]]
        ),
        "dense": dense,
    }
    if "mu" in dense:
        metrics.update(gold_reward_pearson=dense["mu"]["pearson"],
                       gold_weighted_reward_pearson=dense["token_reward"]["pearson"])
    return metrics
