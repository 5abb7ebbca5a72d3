"""Gold reward against KL along the PPO runs of a finished policy study: the mean training-batch gold return of the
updates whose KL to the initial policy falls in each bin, per reward model (mean over updates of all seeds). Reward
models that drive the policy to different KLs are compared at equal KL this way.

    python experiments/ppo_kl_frontier.py outputs/experiments/policy-cpu-small-whitened [--dataset synthetic]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

BINS = [0, 1, 2, 4, 6, 8, 12, 16, 24, 32]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study")
    parser.add_argument("--dataset", default="synthetic")
    args = parser.parse_args()
    cells = json.loads((Path(args.study) / "results.json").read_text())["cells"]
    gold_by_bin: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for key, cell in cells.items():
        dataset, system, _ = key.split("|")
        if dataset != args.dataset or not system.startswith("ppo"):
            continue
        for _, _, gold, kl in cell["curve"]:
            index = int(np.searchsorted(BINS, kl, side="right")) - 1
            gold_by_bin[system][index].append(gold)
    columns = [f"{BINS[i]}-{BINS[i + 1]}" for i in range(len(BINS) - 1)]
    print(f"{args.dataset}: mean training-batch gold return per KL bin (updates in the bin)\n")
    print("| PPO reward | " + " | ".join(f"KL {c}" for c in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for system in sorted(gold_by_bin):
        texts = [f"{np.mean(v):.2f} ({len(v)})" if (v := gold_by_bin[system].get(i)) else "" for i in range(len(columns))]
        print(f"| {system} | " + " | ".join(texts) + " |")


if __name__ == "__main__":
    main()
