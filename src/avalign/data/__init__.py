"""Datasets: loaders for the paper's families and TRL formats, cleaning, splits, the synthetic task, tokenisation."""

from avalign.data.cleaning import CleaningReport
from avalign.data.loading import LoadedData, load_dataset

__all__ = ["CleaningReport", "LoadedData", "load_dataset"]
