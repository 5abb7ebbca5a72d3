"""The policy study (`avalign experiment policy`) end to end on a tiny synthetic config: judge scores are the gold
returns of the saved samples, the tables are the win rates of those scores, resuming skips finished cells and
reproduces a removed one, and a missing dataset is reported."""

import json

import numpy as np
import pytest
import yaml

from avalign.cli import main
from avalign.errors import ConfigError
from avalign.studies.policy import BON, PPO, TRAINED, PolicyStudyConfig

from conftest import reference_gold_return

SEEDS = (0, 1)


def write_config(tmp_path, **changes):
    config = {
        "name": "test", "output_dir": str(tmp_path / "study"), "seeds": list(SEEDS), "workers": 0,
        "backbone": {"name": "tiny", "hidden_size": 16, "layers": 1, "heads": 2,
                     "pretrain": {"max_steps": 2, "batch_size": 8}},
        "training": {"max_steps": 2, "learning_rate": 0.02, "batch_size": 4, "max_length": 48, "eval_batch_size": 16,
                     "logging_steps": 1},  # a large rate, so that two steps make the systems differ
        "generation": {"max_new_tokens": 4, "batch_size": 8},
        "bon_n": [1, 2, 4],
        "ppo": {"batch_size": 4, "mini_batch_size": 2, "ppo_epochs": 1, "total_episodes": 8, "learning_rate": 1e-3},
        "datasets": [{"name": "synthetic", "synthetic_train_size": 24, "synthetic_eval_size": 12, "eval_prompts": 6},
                     {"name": "absent", "path": str(tmp_path / "no-such-file.jsonl"),
                      "judge": {"paths": [], "backbone": {"name": "judge"}}}],
        **changes,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def scores(values):
    return np.array([-np.inf if v is None else v for v in values])


def test_policy_study_tables_come_from_the_judged_samples_and_resume(tmp_path, synthetic):
    path = write_config(tmp_path)
    assert main(["experiment", "policy", "--config", path]) == 0
    out = tmp_path / "study"
    results = json.loads((out / "results.json").read_text())
    systems = ["sft", *TRAINED, *BON, *PPO]
    assert sorted(results["cells"]) == sorted(f"synthetic|{s}|{seed}" for s in systems for seed in SEEDS)
    assert results["skipped_datasets"] == {"absent": f"{tmp_path / 'no-such-file.jsonl'} not found"}
    cells, task = results["cells"], synthetic[2]  # the fixture's task is the study's (task seed 0)

    # judge scores are the gold returns of the completions each cell wrote
    (unit,) = (out / "cache").glob("synthetic-seed1-*")
    for system in ("sft", "ava-p", "ppo-ava-p", "afd-dpo"):
        rows = read_jsonl(out / "work" / f"synthetic-{system}-1" / "samples.jsonl")
        assert len(rows) == 6
        gold = [reference_gold_return(task, r["prompt"], r["completion"]) for r in rows]
        assert cells[f"synthetic|{system}|1"]["judge_scores"] == pytest.approx(gold)
    candidates = read_jsonl(unit / "candidates.jsonl")  # 6 prompts x 4 candidates
    gold = [reference_gold_return(task, r["prompt"], r["completion"]) for r in candidates]
    assert np.ravel(cells["synthetic|sft|1"]["candidate_scores"]) == pytest.approx(gold)

    # Table 4 (AVA-p vs DPO) and Table 2 (best-of-4 with AVA-p vs plain sampling), recomputed from those scores
    summary = results["summary"]["synthetic"]["tables"]
    ava, dpo = ([scores(cells[f"synthetic|{s}|{seed}"]["judge_scores"]) for seed in SEEDS] for s in ("ava-p", "dpo"))
    assert summary["4"]["dpo"]["win_pct"] == pytest.approx(100 * np.mean([(a > b).mean() for a, b in zip(ava, dpo)]))
    assert summary["4"]["dpo"]["lose_pct"] == pytest.approx(100 * np.mean([(a < b).mean() for a, b in zip(ava, dpo)]))
    wins = []
    for seed in SEEDS:
        candidate_gold = scores(np.ravel(cells[f"synthetic|sft|{seed}"]["candidate_scores"])).reshape(6, 4)
        proxy = scores(np.ravel(cells[f"synthetic|bon-ava-p|{seed}"]["proxy_scores"])).reshape(6, 4)
        picked = candidate_gold[np.arange(6), [int(np.flatnonzero(row == row.max())[0]) for row in proxy]]
        wins.append((picked > candidate_gold[:, 0]).mean())
        assert cells[f"synthetic|bon-ava-p|{seed}"]["picks"]["1"] == [0] * 6
    assert summary["2"]["sample"]["win_pct"] == pytest.approx(100 * np.mean(wins))
    table = (out / "results.md").read_text()
    assert "## Table 5: Learning from demonstrations" in table and "| vs AfD + DPO |" in table
    assert "dataset `absent` skipped" in table and "Over-optimisation on synthetic" in table
    assert (out / "win-rates.png").stat().st_size > 0 and (out / "overoptimisation-synthetic.png").stat().st_size > 0
    curve = results["summary"]["synthetic"]["ppo_curves"]["ppo-ava-p-kappa1"]
    assert [point[0] for point in curve] == [1, 2]  # two updates of 4 episodes, [step, proxy, gold, KL] each

    # resuming: finished cells are not run again; removed ones (round 1 and round 2) come back identical
    removed = {key: cells.pop(key) for key in ("synthetic|dpo|0", "synthetic|ppo-bt|1")}
    (out / "results.json").write_text(json.dumps(results))
    kept_log = out / "work" / "synthetic-ava-p-0" / "log.txt"
    kept_mtime = kept_log.stat().st_mtime_ns
    assert main(["experiment", "policy", "--config", path]) == 0
    again = json.loads((out / "results.json").read_text())["cells"]
    assert kept_log.stat().st_mtime_ns == kept_mtime
    for key, cell in removed.items():
        assert again[key]["judge_scores"] == cell["judge_scores"]
    assert again["synthetic|ppo-bt|1"]["curve"] == removed["synthetic|ppo-bt|1"]["curve"]


@pytest.mark.parametrize("change, message", [
    ({"datasets": [{"name": "real", "path": "pairs.jsonl"}]}, "needs a judge"),
    ({"datasets": [{"name": "real", "path": "p.jsonl", "overoptimisation": True,
                    "judge": {"paths": [], "backbone": {"name": "j"}}}]}, "gold reward"),
    ({"ppo": {"seed": 3}}, "ppo.seed is set by the study"),
    ({"tables": [2, 6]}, "no table"),
    ({"generation": {"max_new_tokens": 40}}, "exceed training.max_length"),
])
def test_config_errors_name_the_field(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        PolicyStudyConfig.from_yaml(write_config(tmp_path, **change))
