"""The uncertainty study's report: calibration tables, best-of-N and PPO over-optimisation tables and plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import pyplot
from .report import seed_interval
from .proxies import ENSEMBLES, PPO_REWARDS, bon_kl

LABELS = {
    "bt": "BT", "bt-ens-mean": "BT ens. x5 (mean)", "bt-ens-worst": "BT ens. x5 (worst)",
    "bt-ens-lcb": "BT ens. x5 (mean - k std)", "bt-ens-small-mean": "BT ens. 5 x 1/5 (mean)",
    "bt-ens-small-worst": "BT ens. 5 x 1/5 (worst)", "bt-ens-small-lcb": "BT ens. 5 x 1/5 (mean - k std)",
    "preftrans": "PrefTrans", "ava-p": "AVA-p (mean)", "ava-p-pess": "AVA-p (w mu - kappa sigma)",
    "dpo": "DPO implicit", "gold": "gold (oracle)", "bt-prefix": "BT prefix differences (dense)",
    "preftrans-sum": "PrefTrans (sum on last token)", "ava-p-sum": "AVA-p (sum on last token)",
    "dpo-sum": "DPO implicit (sum on last token)",
}
UNCERTAINTY_LABELS = {"ava-p": "AVA-p sigma", "bt-ens": "BT ensemble x5 (spread)",
                      "bt-ens-small": "BT ensemble 5 x 1/5 (spread)"}
KL_BINS = ((0, 2), (2, 4), (4, 8), (8, 16), (16, 32), (32, 64), (64, float("inf")))


def _fmt(entry: dict, digits: int = 2) -> str:
    mean, (low, high) = entry["mean"], entry["ci95"]
    if np.isnan(low):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def bon_variants(chosen: dict) -> dict[str, tuple[str, int | str]]:
    """Report row -> (the analysis' curve name, with the chosen kappa and k; training cost in BT budgets)."""
    rows: dict[str, tuple[str, int | str]] = {"bt": ("bt", 1)}
    for ensemble, cost in ENSEMBLES.items():
        rows[f"{ensemble}-mean"] = (f"{ensemble}-mean", cost)
        rows[f"{ensemble}-worst"] = (f"{ensemble}-worst", cost)
        rows[f"{ensemble}-lcb"] = (f"{ensemble}-lcb@{chosen[ensemble + '-lcb']:g}", cost)
    rows.update({"preftrans": ("preftrans", 1), "ava-p": ("ava-p@0", 1),
                 "ava-p-pess": (f"ava-p@{chosen['ava-p']:g}", 1), "dpo": ("dpo", 1), "gold": ("gold", "")})
    return rows


def _by_dataset(config, part: dict, test_only: bool = True) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for key, value in part.items():
        dataset = key.split("|")[0]
        if not test_only or dataset not in config.dev_datasets:
            grouped.setdefault(dataset, []).append(value)
    return grouped


def bon_summary(config, results: dict) -> dict:
    """Per test dataset and row: gold at N=1, the peak (and its N), gold at the largest N, and the loss after the
    peak, each over seeds."""
    rows = bon_variants(results["chosen"])
    summary = {}
    for dataset, units in _by_dataset(config, results["analysis"]).items():
        sizes = units[0]["sizes"]
        table = {}
        for row, (curve, cost) in rows.items():
            golds = np.array([u["bon"][curve]["gold"] for u in units])  # [seeds, sizes]
            peak = golds.max(1)
            table[row] = {"cost": cost, "first": seed_interval(golds[:, 0].tolist()), "peak": seed_interval(peak.tolist()),
                          "peak_n": int(sizes[int(golds.mean(0).argmax())]),
                          "final": seed_interval(golds[:, -1].tolist()),
                          "drop": seed_interval((peak - golds[:, -1]).tolist()),
                          "curve": golds.mean(0).tolist(),
                          "proxy": np.array([u["bon"][curve]["proxy"] for u in units]).mean(0).tolist()}
        summary[dataset] = {"sizes": sizes, "rows": table, "seeds": len(units)}
    return summary


def calibration_summary(config, results: dict) -> dict:
    summary = {}
    for dataset, units in _by_dataset(config, results["analysis"]).items():
        table = {}
        for method in units[0]["calibration"]:
            entry = {}
            for level in ("token", "sequence"):
                cells = [u["calibration"][method][level] for u in units]
                drift = [c["drift"] for c in cells]
                entry[level] = {
                    "spearman": seed_interval([c["spearman"] for c in cells]),
                    "coverage": seed_interval([c["coverage"] for c in cells]),
                    "coverage_picked": seed_interval([d["picked"]["coverage"] for d in drift]),
                    "sigma_ratio": seed_interval([d["picked"]["mean_uncertainty"] / d["plain"]["mean_uncertainty"]
                                                  for d in drift]),
                    "error_ratio": seed_interval([d["picked"]["mean_error"] / d["plain"]["mean_error"] for d in drift]),
                }
            table[method] = entry
        summary[dataset] = table
    return summary


def ppo_summary(config, results: dict) -> dict:
    """Per dataset and reward: final and best gold return, final KL, empty-response share, and the curve."""
    summary: dict = {}
    for key, cell in results["ppo"].items():
        dataset, _, reward, _ = key.split("|")
        summary.setdefault(dataset, {}).setdefault(reward, []).append(np.array(cell["curve"]))
    out = {}
    for dataset, rewards in summary.items():
        table = {}
        for reward, curves in rewards.items():
            tail = max(1, len(curves[0]) // 10)  # the last tenth of the updates
            table[reward] = {
                "first_gold": seed_interval([c[:tail, 1].mean() for c in curves]),
                "final_gold": seed_interval([c[-tail:, 1].mean() for c in curves]),
                "best_gold": seed_interval([c[:, 1].max() for c in curves]),
                "final_kl": seed_interval([c[-tail:, 0].mean() for c in curves]),
                "final_empty": seed_interval([c[-tail:, 3].mean() for c in curves]),
                "curves": [c.tolist() for c in curves],
            }
        out[dataset] = table
    return out


def write_report(config, results: dict, out: Path, command: str | None = None) -> None:
    chosen = results["chosen"]
    bon, calibration, ppo = bon_summary(config, results), calibration_summary(config, results), \
        ppo_summary(config, results)
    results["summary"] = {"bon": bon, "calibration": calibration, "ppo": ppo}
    lines = [f"# Uncertainty study: {config.name}", ""]
    if command:
        lines += ["```bash", command, "```", ""]
    lines += [f"Seeds {config.seeds} (PPO: {config.ppo_seeds or config.seeds}); development datasets (kappa and k chosen there only): "
              f"{config.dev_datasets}; test datasets: "
              f"{[s.name for s in config.datasets if s.name not in config.dev_datasets]}. Best-of-N: "
              f"{config.candidates['n']} samples of the backbone for each of {config.candidates['prompts']} "
              "evaluation prompts per unit. Intervals: 95% Student-t over seeds.", "",
              f"Chosen on the development datasets: kappa = {chosen['ava-p']:g} (grid {config.kappas}); ensemble "
              f"k = {chosen['bt-ens-lcb']:g} (x5), {chosen['bt-ens-small-lcb']:g} (5 x 1/5) (grid "
              f"{config.ensemble_ks}).", ""]
    lines += ["## Calibration", "",
              "Spearman correlation of the uncertainty with |gold - prediction| (after an affine fit of the prediction "
              "to gold on the other half of the evaluation responses); coverage of the 90% interval scaled on that "
              "half; on drifted responses (each prompt's best of n under the method's own mean): coverage, and "
              "uncertainty and error relative to plain samples.", ""]
    for dataset, table in calibration.items():
        lines += [f"### {dataset}", "", "| uncertainty | level | Spearman(sigma, abs error) | coverage (90%) | "
                  "coverage, drifted | sigma drifted / plain | error drifted / plain |", "|---|---|---|---|---|---|---|"]
        for method, entry in table.items():
            for level, e in entry.items():
                lines.append(f"| {UNCERTAINTY_LABELS[method]} | {level} | {_fmt(e['spearman'])} | "
                             f"{_fmt(e['coverage'])} | {_fmt(e['coverage_picked'])} | {_fmt(e['sigma_ratio'])} | "
                             f"{_fmt(e['error_ratio'])} |")
        lines.append("")
    lines += ["## Best-of-N", "", "Expected gold return of the best of N samples (exact over all N-subsets of the "
              "samples); the peak over N and the gold lost from the peak to the largest N. Training cost in "
              "reward-model trainings of the full budget.", ""]
    for dataset, entry in bon.items():
        sizes = entry["sizes"]
        lines += [f"### {dataset} ({entry['seeds']} seeds)", "",
                  f"| proxy | cost | gold, N=1 | peak gold (N) | gold, N={sizes[-1]} | lost after the peak |",
                  "|---|---|---|---|---|---|"]
        for row, e in entry["rows"].items():
            lines.append(f"| {LABELS[row]} | {e['cost']} | {_fmt(e['first'])} | {_fmt(e['peak'])} ({e['peak_n']}) | "
                         f"{_fmt(e['final'])} | {_fmt(e['drop'])} |")
        lines += ["", f"![best-of-N {dataset}](bon-{dataset}.png)", ""]
    if ppo:
        lines += ["## PPO", "", "From the backbone on the training prompts; mean over the last tenth of the updates "
                  "(the first tenth for the start). Empty: share of responses that are EOS alone.", ""]
        for dataset, table in ppo.items():
            lines += [f"### {dataset}", "", "| reward | placement | gold, start | gold, end | best gold | KL, end | "
                      "empty, end |", "|---|---|---|---|---|---|---|"]
            for reward, e in table.items():
                lines.append(f"| {LABELS.get(reward, reward)} | {PPO_REWARDS[reward][1]} | {_fmt(e['first_gold'])} | "
                             f"{_fmt(e['final_gold'])} | {_fmt(e['best_gold'])} | {_fmt(e['final_kl'])} | "
                             f"{_fmt(e['final_empty'])} |")
            lines += ["", "Gold return per KL: mean gold return of the updates whose KL falls in each bin, over seeds (the "
                      "number of updates in parentheses).", "", "| reward | placement | " +
                      " | ".join(f"KL {a:g}-{b:g}" for a, b in KL_BINS) + " |", "|---" * (len(KL_BINS) + 2) + "|"]
            for reward, e in table.items():
                points = np.concatenate([np.array(c)[:, :2] for c in e["curves"]])
                cells = []
                for low, high in KL_BINS:
                    inside = points[(points[:, 0] >= low) & (points[:, 0] < high), 1]
                    cells.append(f"{inside.mean():.2f} ({len(inside)})" if len(inside) else "")
                lines.append(f"| {LABELS.get(reward, reward)} | {PPO_REWARDS[reward][1]} | " + " | ".join(cells) + " |")
            lines += ["", f"![PPO {dataset}](ppo-{dataset}.png)", ""]
    lines += _dev_lines(config, results)
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    _plots(bon, ppo, out)


def _dev_lines(config, results: dict) -> list[str]:
    dev = _by_dataset(config, {k: v for k, v in results["analysis"].items()
                               if k.split("|")[0] in config.dev_datasets}, test_only=False)
    lines = ["## Development datasets: the choice of kappa and k", "",
             "Best-of-N gold return at the largest N, mean over the development units.", "",
             "| proxy | " + " | ".join(dev) + " |", "|---" * (len(dev) + 1) + "|"]
    grids = [("ava-p", config.kappas, "AVA-p, kappa")] + [(f"{e}-lcb", config.ensemble_ks, f"{LABELS[e + '-lcb']}, k")
                                                         for e in ENSEMBLES]
    for name, grid, label in grids:
        for value in grid:
            cells = [f"{np.mean([u['bon'][f'{name}@{value:g}']['gold'][-1] for u in units]):.3f}"
                     for units in dev.values()]
            lines.append(f"| {label} = {value:g} | " + " | ".join(cells) + " |")
    return lines + [""]


def _figure(plt, lines: list[tuple[str, list, list, bool]], xlabel: str, ylabel: str, title: str, path: Path):
    """One over-optimisation plot: (label, x, y, emphasised) per line; the oracle dashed."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.set_prop_cycle(color=plt.cm.tab20.colors)  # a dozen lines: ten default colours would repeat
    for label, x, y, emphasised in lines:
        ax.plot(x, y, "k--" if label == LABELS["gold"] else "-", marker="o", markersize=3, label=label,
                linewidth=2.5 if emphasised else 1.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plots(bon: dict, ppo: dict, out: Path) -> None:
    plt = pyplot(out)
    if plt is None:
        return
    for dataset, entry in bon.items():
        x = np.sqrt([bon_kl(n) for n in entry["sizes"]]).tolist()
        lines = [(LABELS[row], x, e["curve"], row.startswith("ava-p")) for row, e in entry["rows"].items()]
        _figure(plt, lines, f"sqrt(KL(best-of-N || policy))  (N = 1 ... {entry['sizes'][-1]})",
                "gold return of the selected response", f"Best-of-N over-optimisation: {dataset}",
                out / f"bon-{dataset}.png")
    for dataset, table in ppo.items():
        lines = []
        for reward, e in table.items():  # updates of all seeds, sorted by KL and averaged in up to 12 bins
            points = np.concatenate([np.array(c)[:, :2] for c in e["curves"]])
            kl, gold = points[np.argsort(points[:, 0])].T
            bins = np.array_split(np.arange(len(kl)), max(1, min(12, len(kl) // 8)))
            lines.append((LABELS.get(reward, reward), [float(np.sqrt(max(kl[b].mean(), 0))) for b in bins],
                          [float(gold[b].mean()) for b in bins], reward.startswith("ava")))
        _figure(plt, lines, "sqrt(KL(policy || initial))", "gold return (training batches)",
                f"PPO over-optimisation: {dataset}", out / f"ppo-{dataset}.png")
