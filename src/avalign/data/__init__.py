"""Datasets: loaders for the paper's families and TRL formats, cleaning, splits, the synthetic task, tokenisation."""
