"""Trainers on top of transformers.Trainer."""

from .ava_config import AVAConfig
from .ava_trainer import AVATrainer

__all__ = ["AVAConfig", "AVATrainer"]
