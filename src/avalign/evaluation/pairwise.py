"""Pairwise accuracy of a reward model, and agreement of per-token rewards with gold ones."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError


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
    """Percentile bootstrap interval of the mean of ``values`` (e.g. per-pair 0/1 correctness), by
    ``scipy.stats.bootstrap``."""
    from scipy.stats import bootstrap

    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return float("nan"), float("nan")
    if values.size == 1 or np.all(values == values[0]):  # every resample has the same mean
        return float(values[0]), float(values[0])
    interval = bootstrap((values,), np.mean, n_resamples=resamples, confidence_level=confidence,
                         method="percentile", rng=np.random.default_rng(seed)).confidence_interval
    return float(interval.low), float(interval.high)


def paired_difference(differences: list, confidence: float = 0.95, resamples: int = 2000, seed: int = 0,
                      shared: bool = False, clusters=None) -> tuple[float, float, float]:
    """Mean paired difference between two methods and its two-level percentile-bootstrap interval.

    ``differences[s]`` holds, for seed (or fold) s, the per-pair differences (e.g. correct_A - correct_B) on that
    seed's evaluation pairs. The estimate is the mean over seeds of the per-seed means. Each bootstrap replicate
    resamples seeds, then pairs, so the interval carries both the training-seed spread and the finite evaluation set.

    ``shared=False``: every seed has its own evaluation pairs (k folds): pairs are resampled within each drawn seed,
    independently. ``shared=True``: every seed scored the same pairs, in the same order: one resample of the pairs
    per replicate serves every drawn seed (the evaluation set's luck is common to all seeds, so independent
    resamples would understate it), and with ``clusters`` (one label per pair, e.g. its prompt) whole clusters are
    resampled, so the several pairs of one prompt move together."""
    groups = [np.asarray(d, dtype=float) for d in differences]
    if not groups or any(g.size == 0 for g in groups):
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    estimate = float(np.mean([g.mean() for g in groups]))
    if shared:
        if len({g.size for g in groups}) > 1:
            raise ConfigError(f"shared evaluation pairs: the seeds have {[g.size for g in groups]} pairs, not one set")
        labels = np.arange(groups[0].size) if clusters is None else np.unique(np.asarray(clusters), return_inverse=True)[1]
        if labels.size != groups[0].size:
            raise ConfigError(f"clusters has {labels.size} labels for {groups[0].size} pairs")
        sums = np.stack([np.bincount(labels, weights=g) for g in groups])  # [seeds, clusters]
        sizes = np.bincount(labels)
        # With equal pair counts, the mean over drawn seeds of their means is a ratio of multiplicity-weighted sums.
        seed_draws = rng.multinomial(len(groups), np.full(len(groups), 1 / len(groups)), size=resamples)
        cluster_draws = rng.multinomial(sizes.size, np.full(sizes.size, 1 / sizes.size), size=resamples)
        replicates = np.einsum("bs,sc,bc->b", seed_draws, sums, cluster_draws) / (
            len(groups) * (cluster_draws @ sizes))
    else:
        replicates = np.empty(resamples)
        for b in range(resamples):
            drawn = rng.integers(0, len(groups), size=len(groups))
            replicates[b] = np.mean([groups[s][rng.integers(0, groups[s].size, size=groups[s].size)].mean()
                                     for s in drawn])
    tail = (1 - confidence) / 2
    return estimate, float(np.quantile(replicates, tail)), float(np.quantile(replicates, 1 - tail))
