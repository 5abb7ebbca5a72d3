"""Summary, results.md and plots of the policy study, from results.json alone (so a report can be redrawn)."""

from __future__ import annotations

import json
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .. import pyplot
from ..report import _table
from .config import (
    BON,
    LABELS,
    OVEROPTIMISATION,
    POLICIES,
    PPO,
    REWARD_MODELS,
    TABLES,
    TRAINED,
    PolicyDatasetSpec,
    PolicyStudyConfig,
    _cell_key,
    _judge_key,
)
from .judging import _loaded


def system_scores(results: dict, dataset: str, system: str, seed: int) -> np.ndarray | None:
    """Judge scores of a system's evaluation samples, one per prompt (None when its cells are missing): ``sample`` is
    the SFT policy's first candidate, a best-of-N system the candidate it picks at the largest N."""
    cells = results["cells"]
    samples = cells.get(f"{dataset}|sft|{seed}")
    if system == "sample" or system in BON:
        if samples is None or (system in BON and f"{dataset}|{system}|{seed}" not in cells):
            return None
        candidates = _loaded(samples["candidate_scores"])
        if system == "sample":
            return candidates[:, 0]
        picks = cells[f"{dataset}|{system}|{seed}"]["picks"]
        return candidates[np.arange(len(candidates)), picks[str(max(map(int, picks)))]]
    cell = cells.get(f"{dataset}|{system}|{seed}")
    return None if cell is None else _loaded(cell["judge_scores"])


def compare(results: dict, dataset: str, a: str, b: str, seeds: list[int]) -> dict | None:
    """Win / tie / lose (%) of a against b, mean over seeds, and (win - lose) with its 95% two-level bootstrap
    interval over seeds and prompts (``paired_difference``); None when no seed has both."""
    from ...evaluation.judges import outcome
    from ...evaluation.pairwise import paired_difference

    outcomes = {}
    for seed in seeds:
        scores_a, scores_b = system_scores(results, dataset, a, seed), system_scores(results, dataset, b, seed)
        if scores_a is not None and scores_b is not None:
            outcomes[seed] = np.array([outcome(x, y) for x, y in zip(scores_a, scores_b)])
    if not outcomes:
        return None
    estimate, low, high = paired_difference(list(outcomes.values()))
    mean = lambda value: 100 * statistics.mean(float((o == value).mean()) for o in outcomes.values())
    return {"seeds": list(outcomes), "prompts": len(next(iter(outcomes.values()))), "win_pct": mean(1),
            "tie_pct": mean(0), "lose_pct": mean(-1), "win_minus_lose_pct": 100 * estimate,
            "win_minus_lose_pct_ci95": [100 * low, 100 * high]}


def summarize(config: PolicyStudyConfig, results: dict) -> dict:
    """Per dataset: the tables, each system's mean judge score, the reward models' held-out accuracy, and the
    over-optimisation curves (PPO: proxy, gold/judge, KL per update; best-of-N: per N), all over seeds."""
    summary = {}
    for spec in config.datasets:
        if spec.name in results.get("skipped_datasets", {}):
            continue
        entry: dict[str, Any] = {"judge": "gold return" if spec.judge is None else "judge reward model", "tables": {},
                                 "overoptimisation": config.overoptimisation_for(spec)}
        for table in config.tables_for(spec):
            _, ava, baselines = TABLES[table]
            entry["tables"][str(table)] = {b: compare(results, spec.name, ava, b, config.seeds) for b in baselines}
        entry["systems"], entry["reward_models"], entry["ppo_curves"], entry["bon_curves"] = {}, {}, {}, {}
        for system in ["sft", "sample", *POLICIES, *BON, *PPO]:
            per_seed = [s for s in (system_scores(results, spec.name, system, seed) for seed in config.seeds)
                        if s is not None]
            if per_seed:  # empty completions (-inf under a reward-model judge) are counted, not averaged
                means = [float(s[np.isfinite(s)].mean()) for s in per_seed if np.isfinite(s).any()]
                entry["systems"][system] = {"mean_score": statistics.mean(means) if means else None,
                                            "empty": int(sum((~np.isfinite(s)).sum() for s in per_seed)),
                                            "seeds": len(per_seed)}
        for system in ("sft", *TRAINED, *BON, *PPO):
            keys = [_cell_key(spec, system, seed) for seed in config.seeds]
            cells = [results["cells"][key] for key in keys if key in results["cells"]]
            if not cells:
                continue
            if "accuracy" in cells[0]:
                entry["reward_models"][system] = {"accuracy": statistics.mean(c["accuracy"] for c in cells),
                                                  "per_seed": [c["accuracy"] for c in cells]}
            if system in OVEROPTIMISATION and system in PPO and entry["overoptimisation"]:  # [step, proxy, gold, KL]
                length = min(len(c["curve"]) for c in cells)
                entry["ppo_curves"][system] = np.mean([c["curve"][:length] for c in cells], axis=0).tolist()
            if system in BON:
                entry["bon_curves"][system] = _bon_curve(results, spec.name, system, config)
        summary[spec.name] = entry
    return summary


def _bon_curve(results: dict, dataset: str, system: str, config: PolicyStudyConfig) -> dict:
    """For each N: the mean proxy score and the mean judge score of the best-of-N pick, mean over seeds."""
    proxy, judged = {n: [] for n in config.bon_n}, {n: [] for n in config.bon_n}
    finite_mean = lambda values: float(values[np.isfinite(values)].mean())
    for seed in config.seeds:
        cell, samples = (results["cells"].get(f"{dataset}|{s}|{seed}") for s in (system, "sft"))
        if cell is None or samples is None:
            continue
        candidates, scores = _loaded(samples["candidate_scores"]), _loaded(cell["proxy_scores"])
        for n in config.bon_n:
            picks, rows = np.array(cell["picks"][str(n)]), np.arange(len(candidates))
            proxy[n].append(finite_mean(scores[rows, picks]))
            judged[n].append(finite_mean(candidates[rows, picks]))
    return {"n": config.bon_n, "proxy": [statistics.mean(proxy[n]) for n in config.bon_n if proxy[n]],
            "judge": [statistics.mean(judged[n]) for n in config.bon_n if judged[n]]}


def _label(system: str) -> str:
    return LABELS.get(system, system)


def _mean_text(entry: dict) -> str:
    if entry["mean_score"] is None:
        return f"all {entry['empty']} empty"
    return f"{entry['mean_score']:.3f}" + (f" ({entry['empty']} empty)" if entry["empty"] else "")


def _win_text(entry: dict) -> str:
    low, high = entry["win_minus_lose_pct_ci95"]
    return (f"{entry['win_pct']:.1f} / {entry['tie_pct']:.1f} / {entry['lose_pct']:.1f} "
            f"({entry['win_minus_lose_pct']:+.1f} [{low:+.1f}, {high:+.1f}])")


def write_report(config: PolicyStudyConfig, results: dict, out: Path, command: str | None = None) -> None:
    summary = summarize(config, results)
    results["summary"] = summary
    (out / "results.json").write_text(json.dumps(results, indent=1))
    columns = {name: f"{name} ({entry['judge']})" for name, entry in summary.items()}
    command = command or f"avalign experiment policy --config <{config.name}.yaml>"
    t, g = config.training, config.generation
    lines = [
        f"# Policy study: {config.name}", "", f"Command: `{command}`", "",
        f"Machine: {platform.machine()}, Python {sys.version.split()[0]}. Seeds {config.seeds}: a seed gives every "
        "system the same initial (SFT) policy, data and sampling seed, so each comparison is paired by prompt. "
        f"Training: {t.max_steps} steps of {t.batch_size}, lr {t.learning_rate}, max_length {t.max_length} "
        f"(SFT and AVA-d: {config.sft or 'the same'}); samples of at most {g.max_new_tokens} tokens at temperature "
        f"{g.temperature}; prompts keep their last {config.prompt_budget} tokens; PPO {config.ppo or 'defaults'}.", "",
        "Each cell: win / tie / lose (%) of the AVA system against the baseline under the judge, mean over seeds, and "
        "(win - lose) with its 95% bootstrap interval over seeds and prompts.", "",
    ]
    for table, (title, ava, baselines) in TABLES.items():
        shown = {columns[d]: {f"vs {_label(b)}": e["tables"][str(table)][b] for b in baselines}
                 for d, e in summary.items() if str(table) in e["tables"]}
        if shown:
            lines += [f"## Table {table}: {title}, {_label(ava)} against each baseline", "",
                      *_table(shown, _win_text, [f"vs {_label(b)}" for b in baselines], header=_label(ava)), ""]
    means = {columns[d]: {_label(s): v for s, v in e["systems"].items()} for d, e in summary.items()}
    systems = [_label(s) for s in ["sft", "sample", *POLICIES, *BON, *PPO]]
    lines += ["## Mean judge score per system (the gold reward on the synthetic task; mean over seeds)", "",
              *_table(means, _mean_text,
                      [s for s in systems if any(s in m for m in means.values())], header="system"), "",
              "## Reward models: pairwise accuracy on the evaluation pairs (%, mean over seeds)", "",
              *_table({columns[d]: {_label(s): v for s, v in e["reward_models"].items()} for d, e in summary.items()},
                      lambda v: f"{100 * v['accuracy']:.1f}", [_label(s) for s in REWARD_MODELS],
                      header="reward model"),
              "", "## Judges", ""]
    for spec in config.datasets:
        if spec.name in summary:
            lines.append(_judge_line(spec, results))
    lines += _overoptimisation_lines(summary)
    lines += ["", "## Data and preparation", ""]
    for unit, prep in sorted(results["prep"].items()):
        if "sft" in prep:
            pre, sft = prep.get("pretrain"), prep["sft"]
            lines.append(f"- `{unit}`: {prep['train_pairs']} train / {prep['eval_pairs']} eval pairs; {prep['data']}; "
                         f"{prep['eval_prompts']} evaluation prompts not among the training prompts; prompts clipped: "
                         f"{prep['train_prompts_clipped']} train, {prep['eval_prompts_clipped']} eval"
                         + (f"; LM pretraining loss {pre['first_loss']:.2f} -> {pre['last_loss']:.2f}" if pre else "")
                         + f"; SFT loss {sft['first_loss']:.2f} -> {sft['last_loss']:.2f}; AfD pairs "
                         f"{prep['afd']['pairs']} (dropped {prep['afd']['dropped'] or 'none'})")
    for name, why in results.get("skipped_datasets", {}).items():
        lines.append(f"- dataset `{name}` skipped: {why}")
    lines += ["", "Plots: `win-rates.png` ((win - lose) per comparison with 95% intervals), "
              "`overoptimisation-<dataset>.png` (judge score against proxy score along PPO and over best-of-N)."]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    _plots(summary, out)


def _judge_line(spec: PolicyDatasetSpec, results: dict) -> str:
    if spec.judge is None:
        return f"- {spec.name}: the synthetic task's gold return (the true reward)."
    judge = results["prep"].get(_judge_key(spec))
    if judge is None:
        return f"- {spec.name}: the judge was not trained."
    low, high = judge["accuracy_ci95"]
    sources = ", ".join(f"{path} ({n})" for path, n in judge["sources"].items())
    return (f"- {spec.name}: a Bradley-Terry judge trained on {judge['train_pairs']} pairs from {sources}; "
            f"rows left out because their prompt is an evaluation prompt: {judge['dropped_eval_prompts']}. Its own "
            f"pairwise accuracy on the {judge['eval_pairs']} evaluation pairs: {100 * judge['accuracy']:.1f}% "
            f"[{100 * low:.1f}, {100 * high:.1f}].")


def _overoptimisation_lines(summary: dict) -> list[str]:
    lines = []
    for dataset, entry in summary.items():
        ppo = entry["ppo_curves"]
        if not ppo:
            continue
        lines += ["", f"## Over-optimisation on {dataset} (judge: {entry['judge']}; mean over seeds)", "",
                  "| PPO reward | proxy, first -> last update | judge, first -> last update | KL, last update |",
                  "|---|---|---|---|"]
        for system, curve in ppo.items():
            (_, p0, g0, _), (_, p1, g1, kl) = curve[0], curve[-1]
            lines.append(f"| {_label(system)} | {p0:.2f} -> {p1:.2f} | {g0:.2f} -> {g1:.2f} | {kl:.2f} |")
        lines += ["", "| best-of-N | " + " | ".join(f"N = {n}" for n in next(iter(entry["bon_curves"].values()))["n"])
                  + " |", "|---" * (1 + len(next(iter(entry["bon_curves"].values()))["n"])) + "|"]
        for system, curve in entry["bon_curves"].items():
            lines.append(f"| {_label(system)}: judge (proxy) | "
                         + " | ".join(f"{j:.2f} ({p:.2f})" for j, p in zip(curve["judge"], curve["proxy"])) + " |")
    return lines


def _smoothed(curve: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(proxy, gold, last update of each window): running means over a tenth of the updates, since each update's
    statistics come from one batch of rollouts."""
    window = max(1, len(curve) // 10)
    mean = lambda column: np.convolve(curve[:, column], np.ones(window) / window, mode="valid")
    return mean(1), mean(2), curve[window - 1:, 0].astype(int)


def _plots(summary: dict, out: Path) -> None:
    plt = pyplot(out)
    if plt is None:
        return

    datasets = [d for d, e in summary.items() if any(any(v for v in t.values()) for t in e["tables"].values())]
    if datasets:
        fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4.5), squeeze=False)
        for ax, dataset in zip(axes[0], datasets):
            rows = [(f"T{t}: {_label(TABLES[int(t)][1])} vs {_label(b)}", e) for t, table in
                    summary[dataset]["tables"].items() for b, e in table.items() if e is not None][::-1]
            estimates = [e["win_minus_lose_pct"] for _, e in rows]
            errors = [[m - e["win_minus_lose_pct_ci95"][0] for m, (_, e) in zip(estimates, rows)],
                      [e["win_minus_lose_pct_ci95"][1] - m for m, (_, e) in zip(estimates, rows)]]
            ax.barh([label for label, _ in rows], estimates, xerr=errors, color="tab:blue", alpha=0.7, capsize=2)
            ax.axvline(0, color="grey", lw=0.8, ls="--")
            ax.set_title(f"{dataset} ({summary[dataset]['judge']})", fontsize=9)
            ax.set_xlabel("win - lose (%), 95% interval")
            ax.tick_params(axis="y", labelsize=7)
        fig.tight_layout()
        fig.savefig(out / "win-rates.png", dpi=110)
        plt.close(fig)
    for dataset, entry in summary.items():
        if not entry["ppo_curves"]:
            continue
        # one panel per reward model (each has its own proxy scale): PPO along its updates, best-of-N over N
        curves = [(_label(s), *_smoothed(np.array(c)), "update") for s, c in entry["ppo_curves"].items()]
        curves += [(_label(s), c["proxy"], c["judge"], c["n"], "N") for s, c in entry["bon_curves"].items()]
        ncols = max(len(entry["ppo_curves"]), len(entry["bon_curves"]))
        fig, axes = plt.subplots(2, ncols, figsize=(3.3 * ncols, 6), squeeze=False)
        panels = [*axes[0][:len(entry["ppo_curves"])], *axes[1][:len(entry["bon_curves"])]]
        for ax, (title, proxy, judged, marks, unit) in zip(panels, curves):
            ax.plot(proxy, judged, marker=".", color="tab:blue")
            for index in sorted({0, len(marks) - 1} if unit == "update" else range(len(marks))):
                ax.annotate(f"{unit} {marks[index]}", (proxy[index], judged[index]), fontsize=7)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("proxy reward", fontsize=8)
            ax.set_ylabel(entry["judge"], fontsize=8)
        for ax in [ax for ax in axes.flat if ax not in panels]:
            ax.axis("off")
        fig.suptitle(f"over-optimisation on {dataset}: the judge against the optimised proxy (mean over seeds; PPO: "
                     "running means over a tenth of the updates)",
                     fontsize=10)
        fig.tight_layout()
        fig.savefig(out / f"overoptimisation-{dataset}.png", dpi=110)
        plt.close(fig)
