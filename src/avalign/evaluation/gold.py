"""Metrics against the synthetic task's gold per-token rewards."""

from __future__ import annotations

from datasets import Dataset

from .pairwise import pairwise_accuracy, pearson


def gold_metrics(scorer, dataset: Dataset) -> dict[str, float]:
    """``gold_accuracy``: how often the gold return orders the pair as labelled (the ceiling for any reward model,
    since labels were drawn Bradley-Terry from gold returns). ``gold_reward_pearson``: Pearson correlation, over
    every response word of chosen and rejected responses, between the gold reward and the learned reward mean
    (unweighted mu; ``gold_weighted_reward_pearson`` uses the library's token reward, ``ResponseRewards.token_rewards``). EOS has no gold reward and is left out."""
    learned, weighted, gold = [], [], []
    for column in ("chosen", "rejected"):
        scored = scorer.score(dataset["prompt"], dataset[column])
        for rewards, gold_row in zip(scored, dataset[f"{column}_gold_rewards"]):
            n = min(len(gold_row), len(rewards.reward_mean) - 1)  # drop EOS; truncation may shorten
            learned += rewards.reward_mean[:n]
            weighted += rewards.token_rewards[:n]
            gold += list(gold_row[:n])
    return {
        "gold_accuracy": pairwise_accuracy(
            [sum(g) for g in dataset["chosen_gold_rewards"]], [sum(g) for g in dataset["rejected_gold_rewards"]]
        ),
        "gold_reward_pearson": pearson(learned, gold),
        "gold_weighted_reward_pearson": pearson(weighted, gold),
    }
