"""Evaluation: pairwise accuracy and correlation with gold rewards."""
