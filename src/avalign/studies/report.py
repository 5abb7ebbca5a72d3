"""results.md and plots of the reward-modeling study, from results.json alone (so a report can be redrawn)."""

from __future__ import annotations

import json
import platform
from dataclasses import fields
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..evaluation.pairwise import paired_difference
from . import pyplot
from .objectives import LABELS, NATIVE_SCORING, OBJECTIVES

if TYPE_CHECKING:  # annotations only: reward_modeling imports this module
    from .reward_modeling import StudyConfig


def native_scoring(config: StudyConfig, objective: str) -> str:
    """The score a method was trained to rank by: its TRL baseline's, or AVAConfig's resolved ``scoring``."""
    from ..trainers import AVAConfig

    trainer_objective, options = config.method(objective)[:2]
    if trainer_objective in NATIVE_SCORING or trainer_objective == "probe":
        return NATIVE_SCORING.get(trainer_objective, "last")
    defaults = {f.name: f.default for f in fields(AVAConfig) if f.name in ("scoring", "cer_target")}
    return options.get("scoring") or options.get("cer_target") or defaults["scoring"] or defaults["cer_target"]


def _label(objective: str) -> str:
    return LABELS.get(objective, objective)


def _correct(cell: dict, scoring: str) -> np.ndarray:
    return np.frombuffer(cell["correct"][scoring].encode(), dtype=np.uint8) - ord("0")


def summarize(config: StudyConfig, results: dict) -> dict:
    """Per (dataset, backbone) column and objective: accuracies per seed under each scoring, mean and std, the
    paired difference to BT (each under its native scoring) with a two-level bootstrap interval, gold metrics."""
    by_column: dict[str, dict[str, dict[int, dict]]] = defaultdict(lambda: defaultdict(dict))
    folded: dict[str, bool] = {}  # k-fold columns evaluate each seed on its own pairs; others share one set
    specs = {spec.name: spec for spec in config.datasets}
    for key, cell in results["cells"].items():
        dataset, backbone, objective, seed = key.split("|")
        by_column[f"{dataset} ({backbone})"][objective][int(seed)] = cell
        folded[f"{dataset} ({backbone})"] = dataset not in specs or bool(specs[dataset].folds)
    summary: dict = {}
    for column, objectives in by_column.items():
        bt = objectives.get("bt", {})

        def interval(cells: dict, seeds: list[int], differences: list) -> tuple[float, float, float]:
            """paired_difference, resampling the shared evaluation pairs jointly (by prompt, where the cells
            record the prompts) when the column's seeds share them."""
            if folded[column]:
                return paired_difference(differences)
            groups = cells[seeds[0]].get("eval_prompt_groups")
            return paired_difference(differences, shared=True, clusters=groups)

        for objective, cells in objectives.items():
            seeds = sorted(cells)
            entry: dict = {"seeds": seeds, "native": native_scoring(config, objective)}
            for scoring in cells[seeds[0]]["correct"]:
                values = [cells[s][f"accuracy_{scoring}"] for s in seeds]
                entry[scoring] = {"per_seed": values, "mean": statistics.mean(values),
                                  "std": statistics.stdev(values) if len(values) > 1 else 0.0}
                entry[scoring]["ci95"] = interval(cells, seeds, [_correct(cells[s], scoring) for s in seeds])[1:]
            shared = [s for s in seeds if s in bt]
            if objective != "bt" and shared and entry["native"] in entry:
                entry["vs_bt"] = interval(
                    cells, shared, [_correct(cells[s], entry["native"]).astype(float) - _correct(bt[s], "last")
                                    for s in shared])
                entry["vs_bt_seeds"] = shared
            for metric in ("gold_reward_pearson", "gold_weighted_reward_pearson", "gold_accuracy"):
                if metric in cells[seeds[0]]:
                    entry[metric] = statistics.mean(cells[s][metric] for s in seeds)
            if "dense" in cells[seeds[0]]:
                entry["dense"] = {reading: {measure: seed_interval([cells[s]["dense"][reading][measure] for s in seeds])
                                            for measure in ("pearson", "spearman")}
                                  for reading in cells[seeds[0]]["dense"]}
            entry["train_seconds"] = statistics.mean(cells[s]["train_seconds"] for s in seeds)
            summary.setdefault(column, {})[objective] = entry
    return summary


def seed_interval(values: list[float]) -> dict:
    """Mean over seeds with a 95% Student-t interval (nan-free values; a single seed gets no interval)."""
    from scipy.stats import t

    mean = statistics.mean(values)
    if len(values) < 2:
        return {"per_seed": values, "mean": mean, "ci95": [float("nan"), float("nan")]}
    half = t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return {"per_seed": values, "mean": mean, "ci95": [mean - half, mean + half]}


def _pct(mean: float, std: float | None = None) -> str:
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


def _table(summary: dict, cell_text, rows: list[str], bold_best: bool = False, best_of=None,
           header: str = "objective") -> list[str]:
    columns = list(summary)
    lines = [f"| {header} | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    best = {c: max((best_of(summary[c][o]) for o in rows if o in summary[c]), default=None) for c in columns} if bold_best else {}
    for objective in rows:
        texts = []
        for column in columns:
            entry = summary[column].get(objective)
            text = cell_text(entry) if entry is not None else "not run"
            if bold_best and entry is not None and best_of(entry) == best[column]:
                text = f"**{text}**"
            texts.append(text)
        lines.append(f"| {_label(objective)} | " + " | ".join(texts) + " |")
    return lines


def write_report(config: StudyConfig, results: dict, out: Path, command: str | None = None) -> None:
    summary = summarize(config, results)
    results["summary"] = summary
    (out / "results.json").write_text(json.dumps(results, indent=1))
    everything = [o for o in [*OBJECTIVES, *config.variants] if any(o in summary[c] for c in summary)]
    # methods with a pairwise accuracy of their own (the oracle probe has none)
    rows = [o for o in everything if all(e[o]["native"] in e[o] for e in summary.values() if o in e)]
    native = lambda e: e[e["native"]]["mean"]
    command = command or f"avalign experiment reward-modeling --config <{config.name}.yaml>"
    t = config.training
    lines = [
        f"# Reward-modeling study: {config.name}", "",
        f"Command: `{command}`", "",
        f"Machine: {platform.machine()}, Python {sys.version.split()[0]}. Seeds {config.seeds}; each cell "
        f"{t.max_steps} steps of {t.batch_size} pairs, lr {t.learning_rate}, warmup {t.warmup_ratio}, max_length "
        f"{t.max_length}. A seed gives every objective the same initial backbone, tokens and data order.", "",
        "## Pairwise accuracy on held-out pairs (%, mean ± std over seeds; ties count as wrong)", "",
        "Each method under its native score: BT's output, the Preference Transformer's weighted return (sum), "
        "and for AVA the score it was trained to rank by (`scoring`: the return under the current defaults, the last "
        "token's reward under the settings before December 2026). Best mean per column in bold.", "",
        *_table(summary, lambda e: _pct(e[e["native"]]["mean"], e[e["native"]]["std"]), rows, True, native), "",
        "## Paired difference to BT (accuracy points, 95% two-level bootstrap interval over seeds and pairs)", "",
        *_table(summary, lambda e: (f"{100 * e['vs_bt'][0]:+.1f} [{100 * e['vs_bt'][1]:+.1f}, {100 * e['vs_bt'][2]:+.1f}]"
                                    if "vs_bt" in e else "n/a"), [o for o in rows if o != "bt"]), "",
        "## Last-token vs summed reward (%, mean ± std over seeds)", "",
        *_table(summary, lambda e: (f"last {_pct(e['last']['mean'], e['last']['std'])} / "
                                    f"sum {_pct(e['sum']['mean'], e['sum']['std'])}" if "sum" in e and "last" in e
                                    else "n/a"),
                [o for o in rows if config.method(o)[0] not in ("bt", "dpo")]), "",
    ]
    gold = [o for o in rows if any("gold_reward_pearson" in summary[c].get(o, {}) for c in summary)]
    if gold:
        lines += ["## Synthetic task: learned per-token reward means vs gold per-token rewards (Pearson, mean over seeds)", "",
                  *_table({c: v for c, v in summary.items() if any("gold_reward_pearson" in e for e in v.values())},
                          lambda e: f"{e['gold_reward_pearson']:.3f} (w·mu {e['gold_weighted_reward_pearson']:.3f})"
                          if "gold_reward_pearson" in e else "n/a", gold), ""]
    dense = [o for o in everything if any("dense" in summary[c].get(o, {}) for c in summary)]
    if dense:
        lines += dense_section(summary, dense)
    lines += ["## Training time per cell (s, mean over seeds)", "",
              *_table(summary, lambda e: f"{e['train_seconds']:.0f}", rows), "",
              "## Data and preparation", ""]
    for unit, prep in sorted(results.get("prep", {}).items()):
        pre = prep.get("pretrain")
        lines.append(f"- `{unit}`: {prep['train_pairs']} train / {prep['eval_pairs']} eval pairs; {prep['data']}; "
                     f"{prep['tokenize_pairs']}"
                     + (f"; LM pretraining loss {pre['first_loss']:.2f} -> {pre['last_loss']:.2f}" if pre else "")
                     + (f"; AfD pairs {prep['afd']['pairs']} (dropped {prep['afd']['dropped'] or 'none'})" if "afd" in prep else ""))
    for name, why in results.get("skipped_datasets", {}).items():
        lines.append(f"- dataset `{name}` skipped: {why}")
    lines += ["", "Plots: `accuracy.png` (accuracy per objective with 95% intervals), `curves-<dataset>.png` "
              "(training loss, mean over seeds)."]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    _plots(summary, results, out, rows, [b.name for b in config.backbones])
    if dense:
        _dense_plots(results, out, dense)


def _plots(summary: dict, results: dict, out: Path, rows: list[str], backbones: list[str]) -> None:
    plt = pyplot(out)
    if plt is None:
        return

    columns = list(summary)
    fig, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 0.35 * len(rows) + 1.5), squeeze=False)
    for ax, column in zip(axes[0], columns):
        present = [o for o in rows if o in summary[column]][::-1]
        means = [100 * summary[column][o][summary[column][o]["native"]]["mean"] for o in present]
        cis = [summary[column][o][summary[column][o]["native"]]["ci95"] for o in present]
        errors = [[m - 100 * lo for m, (lo, _) in zip(means, cis)], [100 * hi - m for m, (_, hi) in zip(means, cis)]]
        ax.barh([_label(o) for o in present], means, xerr=errors, color="tab:blue", alpha=0.7, capsize=2)
        ax.axvline(50, color="grey", lw=0.8, ls="--")
        ax.set_xlim(max(0, 100 * min(lo for lo, _ in cis) - 5), min(100, 100 * max(hi for _, hi in cis) + 5))
        ax.set_title(column, fontsize=9)
        ax.set_xlabel("pairwise accuracy (%)")
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=110)
    plt.close(fig)

    curves: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for key, cell in results["cells"].items():
        dataset, backbone, objective, _ = key.split("|")
        curves[f"{dataset}-{backbone}"][objective].append(cell["curve"])
    for name, by_objective in curves.items():
        present = [o for o in rows if o in by_objective]
        ncols = 4
        nrows = (len(present) + ncols - 1) // ncols
        fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.4 * nrows), squeeze=False)
        for ax, objective in zip(axes.flat, present):
            runs = by_objective[objective]
            length = min(len(run) for run in runs)
            steps = [point[0] for point in runs[0][:length]]
            losses = np.array([[point[1] for point in run[:length]] for run in runs])
            ax.plot(steps, losses.mean(0))
            ax.fill_between(steps, losses.min(0), losses.max(0), alpha=0.25)
            ax.set_title(_label(objective), fontsize=9)
            ax.set_xlabel("step", fontsize=8)
        for ax in list(axes.flat)[len(present):]:
            ax.axis("off")
        fig.suptitle(f"training loss, {name} (mean, min-max over seeds)", fontsize=10)
        fig.tight_layout()
        fig.savefig(out / f"curves-{name}.png", dpi=100)
        plt.close(fig)
    if len(backbones) > 1:
        _scaling_plot(plt, summary, out, rows, backbones)


def _scaling_plot(plt, summary: dict, out: Path, rows: list[str], backbones: list[str]) -> None:
    """Accuracy against backbone (in config order) per dataset, one line per objective (the paper's Fig. 2)."""
    datasets = sorted({column.rsplit(" (", 1)[0] for column in summary})
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for objective in rows:
            points = [(i, summary[f"{dataset} ({b})"][objective]) for i, b in enumerate(backbones)
                      if objective in summary.get(f"{dataset} ({b})", {})]
            if points:
                ax.errorbar([i for i, _ in points], [100 * e[e["native"]]["mean"] for _, e in points],
                            yerr=[100 * e[e["native"]]["std"] for _, e in points], marker="o", capsize=3,
                            label=_label(objective))
        ax.set_xticks(range(len(backbones)), backbones, fontsize=8)
        ax.set_title(dataset, fontsize=9)
        ax.set_ylabel("pairwise accuracy (%)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=110)
    plt.close(fig)


def dense_section(summary: dict, methods: list[str]) -> list[str]:
    """The dense-reward tables: per gold-task column, each method's readings against the gold token rewards."""
    lines = ["## Dense rewards: per-token readings vs gold per-token rewards", "",
             "Pearson and Spearman correlation over every response token of the evaluation pairs (EOS left out), "
             "mean over seeds with a 95% Student-t interval over seeds; pair accuracy (%) under the method's native "
             "score with its two-level bootstrap interval. Readings: `token_reward` is the library's token reward "
             "(`avalign.reward_model.token_rewards`, w_t mu_t), `mu` the unweighted reward mean, "
             "`prefix_difference` a Bradley-Terry model's score of every prefix, differenced, `implicit` DPO's "
             "beta * (log pi - log pi_ref), `probe` the gold-supervised oracle.", ""]
    interval = lambda v: f"{v['mean']:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]"
    for column, entries in summary.items():
        present = [o for o in methods if "dense" in entries.get(o, {})]
        if not present:
            continue
        lines += [f"### {column}", "", "| method | reading | Pearson | Spearman | pair accuracy (%) |",
                  "|---|---|---|---|---|"]
        for objective in present:
            entry = entries[objective]
            accuracy = "n/a"
            if entry["native"] in entry:
                native = entry[entry["native"]]
                accuracy = f"{100 * native['mean']:.1f} [{100 * native['ci95'][0]:.1f}, {100 * native['ci95'][1]:.1f}]"
            for reading, values in entry["dense"].items():
                lines.append(f"| {_label(objective)} | {reading} | {interval(values['pearson'])} | "
                             f"{interval(values['spearman'])} | {accuracy} |")
        lines.append("")
    lines += ["Plots: `dense-scatter-<column>.png` (learned vs gold token rewards, seed 0, the first reading of each "
              "method) and `dense-tokens-<column>.png` (one evaluation response token by token, gold vs learned).", ""]
    return lines


def _dense_plots(results: dict, out: Path, methods: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_column: dict[str, dict[str, dict]] = defaultdict(dict)
    for key, cell in results["cells"].items():
        dataset, backbone, objective, seed = key.split("|")
        if "dense" in cell and (objective not in by_column[f"{dataset}-{backbone}"] or seed == "0"):
            by_column[f"{dataset}-{backbone}"][objective] = cell["dense"]
    for column, cells in by_column.items():
        present = [o for o in methods if o in cells]
        if not present:
            continue
        fig, axes = plt.subplots(1, len(present), figsize=(2.8 * len(present), 2.9), squeeze=False)
        for ax, objective in zip(axes[0], present):
            reading, values = next(iter(cells[objective].items()))
            points = np.array(values["points"])
            ax.scatter(points[:, 1], points[:, 0], s=3, alpha=0.3)
            ax.set_title(f"{_label(objective)}\n{reading}: r = {values['pearson']:.2f}", fontsize=8)
            ax.set_xlabel("gold token reward", fontsize=8)
        axes[0][0].set_ylabel("learned token reward", fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"dense-scatter-{column}.png", dpi=100)
        plt.close(fig)

        fig, axes = plt.subplots(len(present), 1, figsize=(8, 1.3 * len(present) + 0.6), squeeze=False, sharex=True)
        for ax, objective in zip(axes[:, 0], present):
            reading, values = next(iter(cells[objective].items()))
            example = values["examples"][0]
            gold, learned = np.array(example["gold"]), np.array(example["learned"])
            scale = np.abs(gold).max() / max(np.abs(learned).max(), 1e-9)  # learned rescaled to the gold's range
            positions = np.arange(len(gold))
            ax.bar(positions - 0.2, gold, width=0.4, label="gold", color="tab:grey")
            ax.bar(positions + 0.2, learned * scale, width=0.4, label=f"{reading} (x{scale:.2g})", color="tab:blue")
            ax.axhline(0, color="black", lw=0.5)
            ax.set_title(_label(objective), fontsize=8, loc="left")
            ax.legend(fontsize=6, loc="upper right")
        axes[-1, 0].set_xlabel("response token")
        fig.tight_layout()
        fig.savefig(out / f"dense-tokens-{column}.png", dpi=100)
        plt.close(fig)
