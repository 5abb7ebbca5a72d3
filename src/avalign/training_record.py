"""What a saved model was trained on, beside its weights (avalign_training.json): the truncation (max_length) that
scoring reuses by default, and for CLI runs the data file and split, so that `avalign evaluate` scores the held-out
split only when given the training file itself. Written for AVA and TRL baseline models alike."""

from __future__ import annotations

import json
import os

TRAINING_RECORD_NAME = "avalign_training.json"


def save_training_record(directory: str, **values) -> None:
    """Merge ``values`` into ``directory``'s record."""
    record = {**load_training_record(directory), **values}
    with open(os.path.join(directory, TRAINING_RECORD_NAME), "w") as handle:
        json.dump(record, handle, indent=2, sort_keys=True)


def load_training_record(path: str) -> dict:
    """The record of a saved model ({} for a hub id or a directory without one)."""
    file = os.path.join(path, TRAINING_RECORD_NAME)
    if not os.path.isfile(file):
        return {}
    with open(file) as handle:
        return json.load(handle)
