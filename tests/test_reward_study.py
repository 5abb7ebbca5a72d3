"""The reward-modeling study: k-fold splits, paired statistics, RewardBench scoring, AfD pairs, LM pretraining,
and the experiment runner end to end (resumable)."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import SHARED_DATA
from avalign.data.cleaning import CleaningReport
from avalign.data.formats import Record
from avalign.data.splits import group_key, split_by_prompt, fold_range
from avalign.errors import ConfigError
from avalign.evaluation.pairwise import bootstrap_interval, paired_difference
from avalign.evaluation.rewardbench import EXAMPLE_COUNTS, rewardbench_metrics, rewardbench_rows


def test_k_folds_partition_the_rows_by_prompt_group():
    rows = [Record("f", i, {"prompt": f"Question {i % 37}?", "chosen": " a", "rejected": " b"}) for i in range(300)]
    folds = [split_by_prompt(rows, 0.0, seed=3, eval_range=fold_range(f, 4)) for f in range(4)]
    evaluated = [record.row for _, evaluation in folds for record in evaluation]
    assert sorted(evaluated) == list(range(300))  # every row evaluated exactly once
    for train, evaluation in folds:
        assert len(train) + len(evaluation) == 300
        assert not {group_key(r.data["prompt"]) for r in train} & {group_key(r.data["prompt"]) for r in evaluation}


def test_fold_range_rejects_bad_folds():
    from avalign.errors import ConfigError

    with pytest.raises(ConfigError):
        fold_range(4, 4)


def test_paired_difference_estimate_and_interval():
    rng = np.random.default_rng(0)
    seeds = [rng.integers(-1, 2, size=n).astype(float) for n in (80, 120, 100)]
    estimate, low, high = paired_difference(seeds)
    assert estimate == pytest.approx(np.mean([s.mean() for s in seeds]))
    assert low < estimate < high
    assert paired_difference([np.full(50, 0.25)] * 3) == pytest.approx((0.25, 0.25, 0.25))
    # a larger evaluation set per seed narrows the interval
    _, narrow_low, narrow_high = paired_difference([np.tile(s, 10) for s in seeds])
    assert narrow_high - narrow_low < high - low


def test_shared_pairs_are_resampled_jointly_across_seeds():
    """Seeds that score the same pairs share the evaluation set's luck: with identical seeds the interval is the
    single-level bootstrap of one seed (scipy's), not the narrower one of independent resamples."""
    rng = np.random.default_rng(1)
    pairs = rng.integers(0, 2, size=200).astype(float)
    seeds = [pairs] * 4
    _, low, high = paired_difference(seeds, shared=True, resamples=4000)
    single_low, single_high = bootstrap_interval(pairs, resamples=4000)
    assert (low, high) == pytest.approx((single_low, single_high), abs=0.012)
    _, independent_low, independent_high = paired_difference(seeds, resamples=4000)
    assert high - low > 1.5 * (independent_high - independent_low)  # about 2x: independent resamples average out


def test_clusters_resample_the_pairs_of_one_prompt_together():
    """Five pairs per prompt, all alike: the clustered interval is the one of the 60 prompts, not of 300 pairs."""
    rng = np.random.default_rng(2)
    per_prompt = rng.integers(0, 2, size=60).astype(float)
    pairs, prompts = np.repeat(per_prompt, 5), np.repeat(np.arange(60), 5)
    _, low, high = paired_difference([pairs] * 3, shared=True, clusters=prompts, resamples=4000)
    prompt_low, prompt_high = bootstrap_interval(per_prompt, resamples=4000)
    assert (low, high) == pytest.approx((prompt_low, prompt_high), abs=0.02)
    _, pair_low, pair_high = paired_difference([pairs] * 3, shared=True, resamples=4000)
    assert high - low > 1.8 * (pair_high - pair_low)
    with pytest.raises(ConfigError, match="not one set"):
        paired_difference([pairs, pairs[:-1]], shared=True)


def test_rewardbench_section_weighting_by_hand():
    subsets = ["math-prm"] * 2 + ["hep-go"] * 4 + ["alpacaeval-easy"] * 2 + ["my-subset"] * 3
    correct = [1, 1] + [1, 0, 0, 0] + [0, 1] + [1, 1, 1]
    metrics = rewardbench_metrics(correct, subsets)
    assert metrics["subsets"] == {"alpacaeval-easy": 0.5, "hep-go": 0.25, "math-prm": 1.0, "my-subset": 1.0}
    reasoning = (1.0 * 984 + 0.25 * 164) / (984 + 164)  # math-prm counts 984, as in RewardBench
    assert metrics["sections"] == pytest.approx({"Chat": 0.5, "Reasoning": reasoning})
    assert metrics["score"] == pytest.approx((0.5 + reasoning) / 2)
    assert metrics["unweighted_subsets"] == ["my-subset"] and EXAMPLE_COUNTS["math-prm"] == 984


def test_rewardbench_rows_name_the_bad_field():
    from avalign.errors import DataError

    with pytest.raises(DataError, match=r"row 2.*subset"):
        rewardbench_rows([Record("rb.jsonl", 1, {"prompt": "p", "chosen": "c", "rejected": "r", "subset": "s"}),
                          Record("rb.jsonl", 2, {"prompt": "p", "chosen": "c", "rejected": "r"})])


def test_afd_pairs_count_empty_samples():
    from datasets import Dataset

    from avalign.data.afd import afd_pairs

    demos = Dataset.from_dict({"prompt": ["a", "b", "c"], "completion": [" x", " y", " z"]})
    report = CleaningReport()
    pairs = afd_pairs(demos, ["one", "  ", " three"], report)
    assert pairs["rejected"] == [" one", " three"] and pairs["chosen"] == [" x", " z"]
    assert report.dropped == {"empty policy sample": 1}


def test_pretraining_lowers_the_lm_loss(tmp_path, tokenizer, synthetic):
    import torch

    from conftest import tiny_backbone
    from avalign.pretrain import pretrain_causal_lm

    texts = [p + c for p, c in zip(synthetic[0]["prompt"], synthetic[0]["chosen"])]
    model = tiny_backbone("gpt2", tokenizer)
    batch = tokenizer(texts[:16], return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        before = model(**batch, labels=labels).loss.item()
    report = pretrain_causal_lm(model, tokenizer, texts, output_dir=str(tmp_path), max_steps=30, batch_size=8,
                                learning_rate=3e-3)
    with torch.no_grad():
        after = model(**batch, labels=labels).loss.item()
    assert after < before and report["last_loss"] < report["first_loss"]
    assert (tmp_path / "config.json").exists() and (tmp_path / "tokenizer.json").exists()


def study_config(tmp_path, datasets):
    config = {
        "name": "test", "output_dir": str(tmp_path / "study"), "seeds": [0, 1], "workers": 0,
        "objectives": ["bt", "ava-p", "afd-ava-p"],
        "training": {"max_steps": 3, "batch_size": 4, "max_length": 48, "eval_batch_size": 16, "logging_steps": 1},
        "afd": {"max_new_tokens": 6, "temperature": 1.0},
        "backbones": [{"name": "tiny", "hidden_size": 16, "layers": 1, "heads": 2, "vocab_size": 300,
                       "pretrain": {"max_steps": 2, "batch_size": 8}}],
        "datasets": datasets,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_experiment_runs_resumes_and_reports(tmp_path, capsys):
    from avalign.cli import main

    path = study_config(tmp_path, [{"name": "synthetic", "synthetic_train_size": 24, "synthetic_eval_size": 12},
                                   {"name": "absent", "path": str(tmp_path / "no-such-file.jsonl")}])
    assert main(["experiment", "reward-modeling", "--config", str(path)]) == 0
    out = tmp_path / "study"
    results = json.loads((out / "results.json").read_text())
    assert sorted(results["cells"]) == sorted(f"synthetic|tiny|{o}|{s}" for o in ("bt", "ava-p", "afd-ava-p")
                                              for s in (0, 1))
    assert results["skipped_datasets"] == {"absent": f"{tmp_path / 'no-such-file.jsonl'} not found"}
    for cell in results["cells"].values():
        assert cell["n"] == 12 and len(cell["correct"]["last"]) == 12
        assert cell["accuracy_last"] == pytest.approx(cell["correct"]["last"].count("1") / 12)
    table = (out / "results.md").read_text()
    assert "| AVA-p |" in table and "Paired difference to BT" in table and "skipped" in table
    assert (out / "accuracy.png").stat().st_size > 0 and (out / "curves-synthetic-tiny.png").exists()
    summary = results["summary"]["synthetic (tiny)"]["ava-p"]
    assert summary["last"]["per_seed"] == [results["cells"][f"synthetic|tiny|ava-p|{s}"]["accuracy_last"] for s in (0, 1)]

    # resuming: finished cells are kept as they are, a removed one is run again and comes back identical
    removed = results["cells"].pop("synthetic|tiny|bt|1")
    (out / "results.json").write_text(json.dumps(results))
    kept = results["cells"]["synthetic|tiny|ava-p|0"]
    assert main(["experiment", "reward-modeling", "--config", str(path)]) == 0
    again = json.loads((out / "results.json").read_text())["cells"]
    assert again["synthetic|tiny|ava-p|0"] == kept
    assert again["synthetic|tiny|bt|1"]["correct"] == removed["correct"]


def test_afd_objective_added_later_keeps_the_prepared_unit(tmp_path):
    """A unit prepared without AfD pairs gets only them added: its pretrained backbone is not trained again."""
    from avalign.studies.reward_modeling import StudyConfig, run_study, unit_path

    path = study_config(tmp_path, [{"name": "synthetic", "synthetic_train_size": 24, "synthetic_eval_size": 12}])
    raw = yaml.safe_load(path.read_text())
    raw.update(seeds=[0], objectives=["bt"])
    path.write_text(yaml.safe_dump(raw))
    first = run_study(StudyConfig.from_yaml(str(path)), progress=False)
    (unit,) = (tmp_path / "study" / "cache").iterdir()
    assert not (unit / "train_afd").exists()
    weights = Path(unit_path(unit, json.loads((unit / "prep.json").read_text())["backbone_path"])) / "model.safetensors"
    written = weights.stat().st_mtime_ns

    raw["objectives"] = ["bt", "afd-ava-p"]
    path.write_text(yaml.safe_dump(raw))
    second = run_study(StudyConfig.from_yaml(str(path)), progress=False)
    assert weights.stat().st_mtime_ns == written and (unit / "train_afd").exists()
    prep = json.loads((unit / "prep.json").read_text())
    assert prep["pretrain"] == first["prep"][unit.name]["pretrain"] and prep["afd"]["pairs"] > 0
    assert second["cells"]["synthetic|tiny|bt|0"] == first["cells"]["synthetic|tiny|bt|0"]
    assert second["cells"]["synthetic|tiny|afd-ava-p|0"]["n"] == 12


@pytest.mark.skipif(not (SHARED_DATA / "summarize-from-feedback").exists(), reason="../shared/data is absent")
def test_experiment_k_fold_scores_every_pair_once(tmp_path):
    from avalign.studies.reward_modeling import StudyConfig, run_study

    path = study_config(tmp_path, [{"name": "tldr", "path": str(SHARED_DATA / "summarize-from-feedback/batch13.jsonl"),
                                    "folds": 2, "max_rows": 40, "objectives": ["bt"]}])
    results = run_study(StudyConfig.from_yaml(str(path)), progress=False)
    sizes = [results["prep"][unit]["eval_pairs"] + results["prep"][unit]["train_pairs"] for unit in results["prep"]]
    evaluated = sum(results["cells"][f"tldr|tiny|bt|{s}"]["n"] for s in (0, 1))
    assert sizes[0] == sizes[1] == evaluated  # the two folds' evaluation sets cover all pairs once


def test_variants_extend_an_objective_and_bad_ones_are_named(tmp_path):
    from avalign.errors import ConfigError
    from avalign.studies.reward_modeling import StudyConfig

    path = study_config(tmp_path, [{"name": "synthetic"}])
    raw = yaml.safe_load(path.read_text())
    raw["variants"] = {"ava-p-lam": {"objective": "ava-p-no-cer", "lam": 0.1}}
    raw["objectives"] = ["bt", "ava-p-lam"]
    path.write_text(yaml.safe_dump(raw))
    config = StudyConfig.from_yaml(str(path))
    assert config.method("ava-p-lam") == ("ava-p", {"use_cer": False, "lam": 0.1}, "pairs")
    raw["variants"] = {"x": {"objective": "ppo"}}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="variant 'x'"):
        StudyConfig.from_yaml(str(path))


def test_dense_reward_stage_scores_every_method_against_gold(tmp_path):
    """Each method's per-token readings are compared with the gold rewards of the same evaluation tokens; the
    report carries the dense table and its plots."""
    from avalign.studies.reward_modeling import StudyConfig, run_study

    path = study_config(tmp_path, [{"name": "synthetic", "synthetic_train_size": 24, "synthetic_eval_size": 12}])
    raw = yaml.safe_load(path.read_text())
    raw.update(seeds=[0, 1], objectives=["bt", "ava-p", "dpo", "oracle-probe"])
    path.write_text(yaml.safe_dump(raw))
    results = run_study(StudyConfig.from_yaml(str(path)), progress=False)
    readings = {"bt": ["prefix_difference"], "ava-p": ["token_reward", "mu"], "dpo": ["implicit"],
                "oracle-probe": ["probe"]}
    from avalign.data.synthetic import synthetic_datasets

    _, evaluation, _ = synthetic_datasets("preference", 24, 12)
    words = sum(len(g) for key in ("chosen", "rejected") for g in evaluation[f"{key}_gold_rewards"])
    for objective, names in readings.items():
        dense = results["cells"][f"synthetic|tiny|{objective}|0"]["dense"]
        assert list(dense) == names
        for values in dense.values():
            assert values["tokens"] == words  # every response word of the 12 pairs, EOS left out
            assert -1 <= values["pearson"] <= 1 and -1 <= values["spearman"] <= 1
    # The stored points pair each reading with the gold reward of the same token: their gold side is the evaluation
    # pairs' gold rewards in order (chosen, then rejected, per pair), and numpy's correlation over them is the figure.
    cell = results["cells"]["synthetic|tiny|ava-p|0"]
    in_order = [g for row in evaluation for key in ("chosen", "rejected") for g in row[f"{key}_gold_rewards"]]
    for reading, figure in (("mu", "gold_reward_pearson"), ("token_reward", "gold_weighted_reward_pearson")):
        points = np.array(cell["dense"][reading]["points"])
        assert points[:, 1] == pytest.approx(in_order, abs=1e-4)
        assert cell[figure] == pytest.approx(np.corrcoef(points[:, 0], points[:, 1])[0, 1], abs=1e-3)
    table = (tmp_path / "study" / "results.md").read_text()
    assert "| Oracle: linear probe on gold | probe |" in table and "| DPO (implicit reward) | implicit |" in table
    assert (tmp_path / "study" / "dense-scatter-synthetic-tiny.png").exists()
    assert (tmp_path / "study" / "dense-tokens-synthetic-tiny.png").exists()
