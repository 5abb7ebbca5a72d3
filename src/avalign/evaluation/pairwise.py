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
