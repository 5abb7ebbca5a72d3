"""Running the policy study: preparation, round 1 and round 2 cells in a pool, resumed from results.json."""

from __future__ import annotations

import json
from pathlib import Path

from ..reward_modeling import make_pool, run_jobs
from .cells import run_cell
from .config import BON, PPO, TRAINED, PolicyDatasetSpec, PolicyStudyConfig, _cell_key, _judge_key, _unit_key
from .preparation import prepare_judge, prepare_unit
from .report import write_report


def _missing(spec: PolicyDatasetSpec) -> str | None:
    for path in ([spec.path] if spec.path else []) + (spec.judge.paths if spec.judge else []):
        if not Path(path).exists():
            return f"{path} not found"
    return None


def run_study(config: PolicyStudyConfig, progress: bool = True, command: str | None = None) -> dict:
    """Prepare units and judges, run every cell not already in results.json (round 1, then round 2), write
    results.json, results.md and the plots."""
    out = Path(config.output_dir)
    (out / "cache").mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"cells": {}, "prep": {}}
    results["skipped_datasets"] = {spec.name: why for spec in config.datasets if (why := _missing(spec))}
    specs = [spec for spec in config.datasets if spec.name not in results["skipped_datasets"]]

    def save():
        results_path.write_text(json.dumps(results, indent=1))

    def pending(spec, seed, systems):
        done = results["cells"]
        return [s for s in systems if s in config.systems_for(spec) and _cell_key(spec, s, seed) not in done]

    def cells(systems) -> dict:
        jobs = {}
        for spec in specs:
            for seed in config.seeds:
                unit = out / "cache" / _unit_key(config, spec, seed)
                for system in pending(spec, seed, systems):
                    work_dir = out / "work" / f"{spec.name}-{system}-{seed}"
                    jobs[_cell_key(spec, system, seed)] = (run_cell, str(work_dir / "log.txt"), config, spec, system,
                                                           seed, str(unit), str(work_dir))
        return jobs

    with make_pool(config.workers) as pool:
        jobs = {}
        for spec in specs:
            directory = out / "cache" / _judge_key(spec) if spec.judge else None
            if directory is not None and not (directory / "judge.json").exists():
                jobs[directory.name] = (prepare_judge, str(directory / "log.txt"), spec, str(directory))
            for seed in config.seeds:
                directory = out / "cache" / _unit_key(config, spec, seed)
                if not (directory / "prep.json").exists() and pending(spec, seed, config.systems_for(spec)):
                    jobs[directory.name] = (prepare_unit, str(directory / "log.txt"), config, spec, seed,
                                            str(directory))
        run_jobs(pool, jobs, results["prep"], save, "preparing", progress)
        run_jobs(pool, cells(["sft", *TRAINED]), results["cells"], save, "cells (round 1)", progress)
        run_jobs(pool, cells([*BON, *PPO]), results["cells"], save, "cells (round 2)", progress)
    write_report(config, results, out, command)
    return results
