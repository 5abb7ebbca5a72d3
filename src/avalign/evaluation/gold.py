"""Agreement of learned per-token rewards with the synthetic task's gold per-token rewards."""

from __future__ import annotations

from datasets import Dataset

from .pairwise import pearson


def gold_reward_correlation(scorer, dataset: Dataset) -> dict[str, float]:
    """Pearson correlation, over every response word of chosen and rejected responses, between the gold reward
    and the learned reward mean (unweighted mu, and weighted w * mu). The EOS token has no gold reward."""
    learned, weighted, gold = [], [], []
    for column in ("chosen", "rejected"):
        scored = scorer.score(dataset["prompt"], dataset[column])
        for rewards, gold_row in zip(scored, dataset[f"{column}_gold_rewards"]):
            n = min(len(gold_row), len(rewards.reward_mean) - 1)  # drop EOS; truncation may shorten
            learned += rewards.reward_mean[:n]
            weighted += [w * m for w, m in zip(rewards.reward_weights[:n], rewards.reward_mean[:n])]
            gold += list(gold_row[:n])
    return {"gold_reward_pearson": pearson(learned, gold), "gold_weighted_reward_pearson": pearson(weighted, gold)}
