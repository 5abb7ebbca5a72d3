"""AfD, Alignment from Demonstrations (Sun & van der Schaar 2024): preference pairs built from demonstrations,
the demonstration as chosen and a sample of the initial policy for the same prompt as rejected."""

from __future__ import annotations

from datasets import Dataset

from .cleaning import CleaningReport

EMPTY_SAMPLE = "empty policy sample"


def afd_pairs(demonstrations: Dataset, samples: list[str], report: CleaningReport | None = None) -> Dataset:
    """prompt / chosen (the demonstration) / rejected (the policy's sample). ``demonstrations`` has prompt and
    completion (or chosen) columns. Samples that are empty after strip cannot be a response: dropped and counted."""
    column = "completion" if "completion" in demonstrations.column_names else "chosen"
    rows = [{"prompt": p, "chosen": c, "rejected": s if s.startswith(" ") else " " + s}
            for p, c, s in zip(demonstrations["prompt"], demonstrations[column], samples) if s.strip()]
    if report is not None:
        report.drop(EMPTY_SAMPLE, len(demonstrations) - len(rows))
    return Dataset.from_list(rows)
