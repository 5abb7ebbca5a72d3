"""avalign: Approximated Variational Alignment (AVA, Cai et al., AAAI 2025) for Hugging Face language models."""

import importlib

__version__ = "0.1.0"

# Imported on first use, so that `import avalign` (and `avalign --help`) does not import torch and transformers.
_EXPORTS = {
    "AVAConfig": ".trainers",
    "AVARewardModel": ".reward_model",
    "AVATrainer": ".trainers",
    "TQRConfig": ".modeling",
    "TQRModel": ".modeling",
    "TQROutput": ".modeling",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'avalign' has no attribute '{name}'")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
