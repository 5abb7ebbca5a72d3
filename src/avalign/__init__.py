"""avalign: Approximated Variational Alignment (AVA, Cai et al., AAAI 2025) for Hugging Face language models."""

__version__ = "0.1.0"
