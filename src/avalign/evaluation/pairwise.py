"""Pairwise accuracy of a reward model, and agreement of per-token rewards with gold ones."""

from __future__ import annotations

import numpy as np


def pairwise_correct(chosen_scores, rejected_scores) -> np.ndarray:
    """Per pair: does the chosen response score strictly higher? Ties count as wrong."""
    return np.asarray(chosen_scores, dtype=float) > np.asarray(rejected_scores, dtype=float)


def pairwise_accuracy(chosen_scores, rejected_scores) -> float:
    """Fraction of pairs where the chosen response scores strictly higher (nan for no pairs)."""
    correct = pairwise_correct(chosen_scores, rejected_scores)
    return float(correct.mean()) if correct.size else float("nan")


def pearson(x, y) -> float:
    """Pearson correlation of two equally long sequences (nan when either is constant)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def bootstrap_interval(values, confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (e.g. per-pair 0/1 correctness)."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def paired_difference(differences: list, confidence: float = 0.95, resamples: int = 2000,
                      seed: int = 0) -> tuple[float, float, float]:
    """Mean paired difference between two methods and its two-level percentile-bootstrap interval.

    ``differences[s]`` holds, for seed (or fold) s, the per-pair differences (e.g. correct_A - correct_B) on that
    seed's evaluation pairs. The estimate is the mean over seeds of the per-seed means. Each bootstrap replicate
    resamples seeds, then pairs within each drawn seed, so the interval carries both the training-seed spread and
    the finite evaluation set."""
    groups = [np.asarray(d, dtype=float) for d in differences]
    if not groups or any(g.size == 0 for g in groups):
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    replicates = np.empty(resamples)
    for b in range(resamples):
        drawn = rng.integers(0, len(groups), size=len(groups))
        replicates[b] = np.mean([groups[s][rng.integers(0, groups[s].size, size=groups[s].size)].mean() for s in drawn])
    tail = (1 - confidence) / 2
    estimate = float(np.mean([g.mean() for g in groups]))
    return estimate, float(np.quantile(replicates, tail)), float(np.quantile(replicates, 1 - tail))
