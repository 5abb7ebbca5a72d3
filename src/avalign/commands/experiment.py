"""`avalign experiment <study> --config experiments/<study>/<preset>.yaml`: a study, resumable; writes results.json,
results.md and plots. Studies: reward-modeling (objectives x datasets x backbones x seeds, the paper's Table 1) and
policy (best-of-N, PPO, direct optimisation and demonstrations as win / tie / lose rates, Tables 2-5) and
uncertainty (calibration of sigma, best-of-N and PPO over-optimisation against BT ensembles)."""

from __future__ import annotations

import argparse
import sys

from ..errors import ConfigError
from .parsing import ArgumentParser

STUDIES = ("reward-modeling", "policy", "uncertainty")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(prog="avalign experiment", description=__doc__)
    parser.add_argument("study", choices=STUDIES, help="Which study to run.")
    parser.add_argument("--config", required=True, help="The study's YAML file (presets in experiments/).")
    parser.add_argument("--output_dir", default=None, help="Override the config's output_dir.")
    parser.add_argument("--workers", type=int, default=None, help="Parallel processes (override the config).")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="Override the config's seeds.")
    parser.add_argument("--report_only", action="store_true", help="Redraw results.md and plots from results.json.")
    return parser.parse_args(argv)


def _study(name: str):
    """(config class, run_study, write_report) of a study."""
    if name == "uncertainty":
        from ..studies.uncertainty import UncertaintyConfig, run_study
        from ..studies.uncertainty_report import write_report

        return UncertaintyConfig, run_study, write_report
    if name == "policy":
        from ..studies.policy import PolicyStudyConfig, run_study, write_report

        return PolicyStudyConfig, run_study, write_report
    from ..studies.report import write_report
    from ..studies.reward_modeling import StudyConfig, run_study

    return StudyConfig, run_study, write_report


def main(argv: list[str]) -> int:
    import json
    from pathlib import Path

    args = parse_args(argv)
    config_class, run_study, write_report = _study(args.study)
    config = config_class.from_yaml(args.config, output_dir=args.output_dir, workers=args.workers, seeds=args.seeds)
    command = "avalign experiment " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["experiment"] else argv)
    if args.report_only:
        path = Path(config.output_dir) / "results.json"
        if not path.exists():
            raise ConfigError(f"--report_only: no {path} yet")
        write_report(config, json.loads(path.read_text()), Path(config.output_dir), command)
    else:
        run_study(config, command=command)
    print((Path(config.output_dir) / "results.md").read_text())
    return 0
