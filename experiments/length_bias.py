"""Length bias of a finished reward-modeling study: for every objective and scoring, the fraction of evaluation pairs
(with responses of different token lengths) in which the model prefers the shorter response; and, per dataset, how
often the labelled chosen response is the longer one. Reads results.json and the cached evaluation splits.

    python experiments/length_bias.py outputs/experiments/reward-modeling-cpu-small
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from datasets import load_from_disk
from transformers import AutoTokenizer


def response_lengths(unit: Path) -> tuple[np.ndarray, np.ndarray]:
    tokenizer, pairs = AutoTokenizer.from_pretrained(unit / "tokenizer"), load_from_disk(str(unit / "eval"))
    count = lambda texts: np.array([len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]])
    return count(pairs["chosen"]), count(pairs["rejected"])


def main(study: str) -> None:
    out = Path(study)
    results = json.loads((out / "results.json").read_text())
    units = {d.name.rsplit("-", 1)[0]: d for d in (out / "cache").iterdir()}
    lengths: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    shorter = defaultdict(list)
    for key, cell in results["cells"].items():
        dataset, backbone, objective, seed = key.split("|")
        unit = f"{dataset}-{backbone}-seed{seed}"
        if unit not in lengths:
            lengths[unit] = response_lengths(units[unit])
        chosen, rejected = lengths[unit]
        differ = chosen != rejected
        for scoring, bits in cell["correct"].items():
            prefers_chosen = (np.frombuffer(bits.encode(), np.uint8) - ord("0")).astype(bool)
            prefers_shorter = np.where(chosen < rejected, prefers_chosen, ~prefers_chosen)[differ]
            shorter[(dataset, objective, scoring)].append(prefers_shorter.mean())
    for dataset in sorted({key[0] for key in shorter}):
        chosen = np.concatenate([c for u, (c, _) in lengths.items() if u.startswith(dataset + "-")])
        rejected = np.concatenate([r for u, (_, r) in lengths.items() if u.startswith(dataset + "-")])
        print(f"{dataset}: chosen longer in {np.mean(chosen > rejected):.2f} of pairs, shorter in "
              f"{np.mean(chosen < rejected):.2f} (all seeds' evaluation pairs)")
        for (_, objective, scoring), values in sorted(item for item in shorter.items() if item[0][0] == dataset):
            print(f"   {objective:24s} {scoring:4s} prefers the shorter response in {np.mean(values):.2f} of pairs")


if __name__ == "__main__":
    main(sys.argv[1])
