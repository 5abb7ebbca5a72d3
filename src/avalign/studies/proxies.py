"""The uncertainty study's proxies: the Bradley-Terry ensembles it trains and the rewards its PPO runs optimise.

Shared by the study (uncertainty) and its report, which both import it and not each other."""

from __future__ import annotations

import numpy as np

MEMBERS = 5  # ensemble size (Coste et al. use 5)
# ensemble -> its training cost in BT budgets: 5 BT models of the full budget each, and of a fifth of it each
ENSEMBLES = {"bt-ens": MEMBERS, "bt-ens-small": 1}


def ensemble_members(ensemble: str) -> list[str]:
    """The trained models of an ensemble: BT itself and four more seeds, or five models of a fifth of the steps."""
    if ensemble == "bt-ens":
        return ["bt", *[f"bt-m{m}" for m in range(1, MEMBERS)]]
    return [f"bt-small-m{m}" for m in range(MEMBERS)]
# PPO reward -> (model, placement, pessimism): "kappa" and "k" are the values chosen on the development datasets
PPO_REWARDS = {
    "bt": ("bt", "sum", None),  # the score less the prompt's, on the last token
    "bt-prefix": ("bt", "dense", None),  # prefix differences (RED)
    "bt-ens-mean": ("bt-ens", "mean", None),
    "bt-ens-worst": ("bt-ens", "worst", None),
    "bt-ens-lcb": ("bt-ens", "lcb", "k"),
    "preftrans": ("preftrans", "dense", None),
    "preftrans-sum": ("preftrans", "sum", None),
    "ava-p": ("ava-p", "dense", None),
    "ava-p-sum": ("ava-p", "sum", None),
    "ava-p-pess": ("ava-p", "dense", "kappa"),
    "dpo": ("dpo", "dense", None),  # DPO's implicit reward per token (RTO)
    "dpo-sum": ("dpo", "sum", None),
}


def bon_kl(size: int) -> float:
    """KL(best-of-N || base policy) = log N - (N - 1) / N (Stiennon et al. 2020; Gao et al. 2022's x axis)."""
    return float(np.log(size) - (size - 1) / size)
