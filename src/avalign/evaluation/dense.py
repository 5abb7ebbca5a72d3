"""Dense rewards against gold per-token rewards: how much of the preference each per-token reading carries.

A *reading* is one way to get a reward per response token from a trained model (``token_readings`` of the reward
model classes): AVA's ``token_reward`` (the library's definition) and ``mu``, a Bradley-Terry model's prefix
differences, DPO's implicit reward; ``probe_readings`` adds an oracle. Every reading is compared with the gold
rewards of the same tokens, pooled over the chosen and rejected responses of the evaluation pairs (EOS, which has
no gold reward, left out).
"""

from __future__ import annotations

import numpy as np
import torch
from datasets import Dataset

from .pairwise import pearson


def spearman(x, y) -> float:
    """Spearman rank correlation (average ranks for ties; nan when either side is constant)."""
    from scipy.stats import rankdata

    return pearson(rankdata(x), rankdata(y))


def _response_features(eval_ids: Dataset) -> list[dict]:
    """Each evaluation pair as two scored rows, chosen then rejected, in pair order."""
    return [{"prompt_ids": row["prompt_ids"], "completion_ids": row[f"{key}_ids"]}
            for row in eval_ids for key in ("chosen", "rejected")]


def _gold_rows(eval_gold: Dataset) -> list[list[float]]:
    return [list(row[f"{key}_gold_rewards"]) for row in eval_gold for key in ("chosen", "rejected")]


def model_readings(scorer, eval_ids: Dataset, batch_size: int = 64) -> dict[str, list[np.ndarray]]:
    """``scorer.token_readings`` over every response of the evaluation pairs (see ``_response_features``)."""
    features = _response_features(eval_ids)
    readings: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(features), batch_size):
        for name, rows in scorer.token_readings(features[start:start + batch_size]).items():
            readings.setdefault(name, []).extend(row.numpy() for row in rows)
    return readings


@torch.no_grad()
def probe_readings(backbone, eval_ids: Dataset, eval_gold: Dataset, *, ridge: float = 1.0, batch_size: int = 64,
                   ) -> dict[str, list[np.ndarray]]:
    """An oracle that sees gold token rewards: a ridge regression from the (frozen) backbone's hidden state of each
    response token (the state that has seen the token, as AVA's reward head reads it) to its gold reward,
    cross-fitted over two halves of the evaluation pairs (each half predicted by the fit on the other). It bounds
    what a linear read-out of the starting backbone explains with that much supervision."""
    from ..data.collator import collate_sequences

    features = _response_features(eval_ids)
    gold = _gold_rows(eval_gold)
    pad = 0
    states = []
    for start in range(0, len(features), batch_size):
        chunk = features[start:start + batch_size]
        batch = collate_sequences(chunk, ("completion",), pad)
        hidden = backbone.base_model(input_ids=batch["input_ids"].to(backbone.device),
                                     attention_mask=batch["attention_mask"].to(backbone.device)).last_hidden_state
        for values, feature in zip(hidden.float().cpu().numpy(), chunk):
            begin = len(feature["prompt_ids"])
            states.append(values[begin:begin + len(feature["completion_ids"])])
    pair = np.repeat(np.arange(len(features) // 2), 2)
    predictions: list[np.ndarray | None] = [None] * len(features)
    for held_out in (0, 1):
        fit_rows = [i for i in range(len(features)) if pair[i] % 2 != held_out]
        x = np.concatenate([states[i][:len(gold[i])] for i in fit_rows])
        y = np.concatenate([gold[i][:len(states[i])] for i in fit_rows])
        mean, scale = x.mean(0), x.std(0) + 1e-6
        design = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
        weights = np.linalg.solve(design.T @ design + ridge * np.eye(design.shape[1]), design.T @ y)
        for i in range(len(features)):
            if pair[i] % 2 == held_out:
                predictions[i] = np.hstack([(states[i] - mean) / scale, np.ones((len(states[i]), 1))]) @ weights
    return {"probe": predictions}


def dense_metrics(readings: dict[str, list[np.ndarray]], eval_gold: Dataset, *, points: int = 2000,
                  examples: int = 4) -> dict:
    """Per reading: Pearson and Spearman correlation with the gold rewards over every response token (EOS left
    out; a truncated response is compared on the tokens it kept), the token count and, when asked for, ``points``
    (learned, gold) pairs for a scatter plot and the first ``examples`` responses token by token."""
    gold = _gold_rows(eval_gold)
    metrics = {}
    for name, rows in readings.items():
        learned, target, shown = [], [], []
        for index, (row, gold_row) in enumerate(zip(rows, gold)):
            n = min(len(gold_row), len(row) - 1)  # the response's last reading is EOS's, which has no gold reward
            learned += [float(v) for v in row[:n]]
            target += gold_row[:n]
            if index < examples:
                shown.append({"learned": [round(float(v), 4) for v in row[:n]], "gold": gold_row[:n]})
        metrics[name] = {"pearson": pearson(learned, target), "spearman": spearman(learned, target),
                         "tokens": len(learned)}
        if points:
            step = max(1, len(learned) // points)
            metrics[name]["points"] = [[round(a, 4), round(b, 4)] for a, b in zip(learned[::step], target[::step])]
        if examples:
            metrics[name]["examples"] = shown
    return metrics
