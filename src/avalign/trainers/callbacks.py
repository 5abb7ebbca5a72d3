"""Callbacks every avalign trainer (AVATrainer and the TRL baselines) runs with."""

from __future__ import annotations

import math

import torch
from transformers import TrainerCallback

from ..errors import TrainingDivergedError


class DivergenceGuard(TrainerCallback):
    """Stops training with a TrainingDivergedError (and the global step) when a logged loss or any weight stops being
    finite, instead of training on and saving NaN weights: the TRL trainers train on through NaN losses, and a
    step can leave NaN weights while the loss the trainer reports is still finite."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        for name, parameter in model.named_parameters() if model is not None else ():
            if not torch.isfinite(parameter.detach()).all():
                raise TrainingDivergedError(
                    f"weight '{name}' is not finite after step {state.global_step}; stopping instead of training on. "
                    "Try a lower learning rate."
                )

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise TrainingDivergedError(f"loss is {loss} at step {state.global_step}; stopping instead of training on. "
                                        "Try a lower learning rate.")
