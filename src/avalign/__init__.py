"""avalign: Approximated Variational Alignment (AVA, Cai et al., AAAI 2025) for Hugging Face language models."""

__version__ = "0.1.0"

from .modeling import TQRConfig, TQRModel, TQROutput  # noqa: E402
from .reward_model import AVARewardModel  # noqa: E402
from .trainers import AVAConfig, AVATrainer  # noqa: E402

__all__ = ["AVAConfig", "AVARewardModel", "AVATrainer", "TQRConfig", "TQRModel", "TQROutput", "__version__"]
