"""Deterministic train/eval splits grouped by prompt, so that no prompt is on both sides.

Each row's group key is its normalised prompt (lowercased, whitespace collapsed). For a multi-turn dialogue (an
HH-RLHF transcript or a message list) the key is the normalised *first user turn*: HH-RLHF holds several branches of
one conversation, and splitting by the full prompt would put the same opening on both sides. The bucket of a key is
sha256(seed, key) mapped to [0, 1); keys with bucket < eval_fraction go to eval. The split therefore depends only
on (seed, eval_fraction) and the prompts, not on row order or on which other rows exist.

K-fold evaluation uses the same buckets: fold f of k holds the keys with bucket in [f/k, (f+1)/k), so over the k
folds every row is evaluated exactly once and no prompt group is ever on both sides.
"""

from __future__ import annotations

import hashlib

from avalign.data.cleaning import CleaningReport
from avalign.data.formats import ASSISTANT, HUMAN, Record, Text, text_of
from avalign.errors import ConfigError, DataError

EVAL_OVERLAP = "prompt also in the evaluation split"


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def group_key(prompt: Text) -> str:
    """The normalised prompt, or the normalised first user turn of a dialogue."""
    if isinstance(prompt, list):
        users = [message["content"] for message in prompt if message["role"] == "user"]
        return normalise(users[0] if users else text_of(prompt))
    if prompt.startswith(HUMAN):
        return normalise(prompt[len(HUMAN):].split(ASSISTANT, 1)[0].split(HUMAN, 1)[0])
    return normalise(prompt)


def bucket(key: str, seed: int) -> float:
    # surrogatepass: a JSON file may hold an unpaired surrogate escape; hashing must not fail on it.
    digest = hashlib.sha256(f"{seed}\0{key}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def check_fraction(eval_fraction: float) -> None:
    if not 0.0 <= eval_fraction < 1.0:
        raise ConfigError(f"eval_fraction must be in [0, 1), got {eval_fraction}")


def fold_range(fold: int, num_folds: int) -> tuple[float, float]:
    """The bucket interval of evaluation fold ``fold`` (0-based) of ``num_folds``."""
    if num_folds < 2 or not 0 <= fold < num_folds:
        raise ConfigError(f"need num_folds >= 2 and 0 <= fold < num_folds, got fold {fold} of {num_folds}")
    return fold / num_folds, (fold + 1) / num_folds


def split_by_prompt(rows: list[Record], eval_fraction: float, seed: int = 0,
                    eval_range: tuple[float, float] | None = None) -> tuple[list[Record], list[Record]]:
    """(train, eval): rows whose prompt's bucket is below ``eval_fraction`` (or in ``eval_range``, a k-fold fold)
    go to eval, in their original order."""
    check_fraction(eval_fraction)
    low, high = eval_range if eval_range is not None else (0.0, eval_fraction)
    train, evaluation = [], []
    for record in rows:
        (evaluation if low <= bucket(group_key(record.data["prompt"]), seed) < high else train).append(record)
    return train, evaluation


def remove_eval_prompts(train: list[Record], evaluation: list[Record], report: CleaningReport,
                        refusal: str | None = None) -> list[Record]:
    """Training rows whose group key is also in a separate evaluation split, dropped and counted.

    With ``refusal`` set (a family whose rows must never share prompts with the evaluation split), any overlap
    raises DataError with that message instead.
    """
    eval_keys = {group_key(record.data["prompt"]) for record in evaluation}
    kept = [record for record in train if group_key(record.data["prompt"]) not in eval_keys]
    overlap = len(train) - len(kept)
    if overlap and refusal:
        raise DataError(f"{refusal} ({overlap} of {len(train)} training rows share a prompt with it)",
                        path=evaluation[0].path)
    report.drop(EVAL_OVERLAP, overlap)
    return kept
