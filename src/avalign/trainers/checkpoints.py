"""Which checkpoint a run resumes from. The Trainer writes trainer_state.json last in a checkpoint, so a checkpoint
without it was interrupted while saving (kill -9, a full disk) and cannot be resumed from."""

from __future__ import annotations

import os
import re

from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..errors import ConfigError

_STEP = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def resumable_checkpoint(path: str) -> str:
    """``path`` when it is a complete checkpoint; for a run's output directory, its newest complete checkpoint,
    skipping (with a message) the incomplete ones after it. A ConfigError when there is none."""
    if _STEP.match(os.path.basename(os.path.normpath(path))):
        if not os.path.isfile(os.path.join(path, TRAINER_STATE_NAME)):
            raise ConfigError(f"checkpoint {path} is incomplete (no {TRAINER_STATE_NAME}: its save was interrupted); "
                              f"resume from {os.path.dirname(os.path.normpath(path))} to take the newest complete one")
        return path
    if not os.path.isdir(path):
        raise ConfigError(f"resume_from_checkpoint {path}: no such directory")
    steps = sorted((int(m.group(1)), name) for name in os.listdir(path) if (m := _STEP.match(name)))
    for _, name in reversed(steps):
        checkpoint = os.path.join(path, name)
        if os.path.isfile(os.path.join(checkpoint, TRAINER_STATE_NAME)):
            return checkpoint
        print(f"[avalign] skipping {checkpoint}: incomplete (no {TRAINER_STATE_NAME}; its save was interrupted)")
    raise ConfigError(f"resume_from_checkpoint {path}: no complete {PREFIX_CHECKPOINT_DIR}-N directory in it")
