"""The uncertainty study: its estimators against brute-force references, and one tiny run end to end."""

import itertools
import json

import numpy as np
import pytest
import yaml

from avalign.studies.proxies import bon_kl
from avalign.studies.uncertainty import apply_calibration, bon_curve, calibration, sequence_scores


def test_best_of_n_curve_equals_the_mean_over_every_subset():
    rng = np.random.default_rng(0)
    proxy, gold = rng.normal(size=(3, 7)), rng.normal(size=(3, 7))
    curve = bon_curve(proxy, gold, [1, 2, 3, 7])
    for index, size in enumerate([1, 2, 3, 7]):
        expected_gold, expected_proxy = [], []
        for row in range(3):
            picks = [max(subset, key=lambda i: proxy[row, i]) for subset in itertools.combinations(range(7), size)]
            expected_gold.append(np.mean([gold[row, i] for i in picks]))
            expected_proxy.append(np.mean([proxy[row, i] for i in picks]))
        assert curve["gold"][index] == pytest.approx(np.mean(expected_gold))
        assert curve["proxy"][index] == pytest.approx(np.mean(expected_proxy))
    assert bon_kl(1) == 0 and bon_kl(4) == pytest.approx(np.log(4) - 0.75)


def test_calibration_sees_an_uncertainty_that_tracks_the_error_and_not_one_that_does_not():
    rng = np.random.default_rng(1)
    n = 4000
    mean = rng.normal(size=n)
    sigma = rng.uniform(0.1, 2.0, size=n)
    gold = mean + sigma * rng.normal(size=n)
    prediction = 3.0 * mean - 1.0  # another scale and offset: the affine fit's job
    fit = np.arange(n) % 2 == 0
    good = calibration(prediction, gold, sigma, fit)
    blind = calibration(prediction, gold, rng.uniform(0.1, 2.0, size=n), fit)
    assert good["spearman"] > 0.3 and abs(blind["spearman"]) < 0.05
    assert good["coverage"] == pytest.approx(0.9, abs=0.03)  # scaled on the other half: 90% of held-out errors
    slope, intercept, _ = good["fit"]
    assert slope == pytest.approx(1 / 3, rel=0.1) and intercept == pytest.approx(1 / 3, abs=0.1)
    # on rows whose errors are twice as large at the same sigma, the fitted interval covers fewer
    drifted = apply_calibration(good, prediction[:1000], 2 * gold[:1000] - mean[:1000], sigma[:1000])
    assert drifted["coverage"] < good["coverage"] - 0.1


def test_sequence_scores_of_pessimism_and_ensembles():
    values = {"ava-p": [np.array([1.0, 2.0]), np.array([0.5])], "ava-p/sigma": [np.array([0.5, 1.5]), np.array([4.0])],
              "ava-p/weight": [np.ones(2), np.ones(1)]}
    members = {"bt": [3.0, 1.0], "bt-m1": [1.0, 1.0], "bt-m2": [2.0, 4.0], "bt-m3": [2.0, 1.0], "bt-m4": [2.0, 3.0]}
    members.update({f"bt-small-m{m}": [float(m), 0.0] for m in range(5)})
    values.update({name: [np.array([s]) for s in scores] for name, scores in members.items()})
    # BT's own score, when given, is what it ranks and aggregates by (not the sum of its prefix differences)
    values["bt"], values["bt/score"] = [np.array([0.0, 9.0]), np.array([5.0])], values["bt"]
    scores = sequence_scores(values, kappas=[0.0, 0.5], ks=[1.0])
    assert scores["ava-p@0"].tolist() == [3.0, 0.5] and scores["ava-p@0.5"].tolist() == [2.0, -1.5]
    table = np.array([members[m] for m in ("bt", "bt-m1", "bt-m2", "bt-m3", "bt-m4")])
    assert scores["bt-ens-mean"] == pytest.approx(table.mean(0))
    assert scores["bt-ens-worst"].tolist() == table.min(0).tolist()
    assert scores["bt-ens-lcb@1"] == pytest.approx(table.mean(0) - table.std(0))


def test_gold_rewards_of_the_stories_task_read_its_table_over_token_ids():
    from avalign.data.stories_gold import StoriesGoldConfig, StoriesGoldTask
    from avalign.rl.rewards import GoldRewards

    class Tokenizer:
        eos_token_id = 2

        def __len__(self):
            return 16

    task = StoriesGoldTask(16, StoriesGoldConfig(seed=3, base_density=0.5, interaction_density=0.5))
    rewards = GoldRewards(task, Tokenizer()).token_rewards([[5, 7]], [[9, 2, 4, 2]])[0]
    expected = [task.base_reward[9] + task.interaction[7, 9], task.base_reward[2] + task.interaction[9, 2],
                task.base_reward[4] + task.interaction[2, 4], 0.0]  # a mid-response EOS is a token; the final earns 0
    assert rewards.tolist() == pytest.approx(expected)


def test_a_tiny_study_runs_end_to_end_and_chooses_kappa_on_the_development_data_only(tmp_path):
    from avalign.studies.uncertainty import UncertaintyConfig, run_study

    config = {
        "name": "tiny", "output_dir": str(tmp_path / "out"), "seeds": [0], "workers": 0,
        "objectives": ["bt", "preftrans", "ava-p", "dpo"], "dev_datasets": ["dev"],
        "candidates": {"prompts": 3, "n": 8, "max_new_tokens": 6, "batch_size": 8},
        "kappas": [0.0, 0.5], "ensemble_ks": [1.0], "ppo_rewards": ["bt-ens-lcb", "ava-p-pess", "dpo"],
        "ppo": {"batch_size": 4, "mini_batch_size": 2, "ppo_epochs": 1, "total_episodes": 8, "max_new_tokens": 6,
                "max_prompt_length": 32},
        "training": {"max_steps": 5, "batch_size": 8, "max_length": 64, "eval_batch_size": 32, "logging_steps": 5},
        "backbones": [{"name": "tiny", "arch": "gpt2", "hidden_size": 32, "layers": 1, "heads": 2,
                       "pretrain": {"max_steps": 2, "batch_size": 8, "learning_rate": 1e-3}}],
        "datasets": [{"name": "dev", "synthetic_task_seed": 1, "synthetic_train_size": 32, "synthetic_eval_size": 16},
                     {"name": "test", "synthetic_task_seed": 0, "synthetic_train_size": 32,
                      "synthetic_eval_size": 16}],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    results = run_study(UncertaintyConfig.from_yaml(str(path)), progress=False)
    dev = results["analysis"]["dev|tiny|analysis|0"]
    best = max([0.0, 0.5], key=lambda kappa: dev["bon"][f"ava-p@{kappa:g}"]["gold"][-1])
    assert results["chosen"]["ava-p"] == best
    assert sorted(results["ppo"]) == [f"test|tiny|{r}|0" for r in ("ava-p-pess", "bt-ens-lcb", "dpo")]
    assert results["ppo"]["test|tiny|ava-p-pess|0"]["pessimism"] == best
    test = results["analysis"]["test|tiny|analysis|0"]
    assert test["sizes"] == [1, 2, 4, 8] and test["bon"]["gold"]["gold"][0] == pytest.approx(
        test["bon"]["bt"]["gold"][0])  # N = 1 is a plain sample whatever the proxy
    assert set(test["calibration"]) == {"ava-p", "bt-ens", "bt-ens-small"}
    report = (tmp_path / "out" / "results.md").read_text()
    assert "## Calibration" in report and "| AVA-p (w mu - kappa sigma) |" in report
    assert json.loads((tmp_path / "out" / "results.json").read_text())["chosen"] == results["chosen"]
    # resuming: finished cells are kept; a PPO cell run with another kappa than the one chosen now is run again
    results["ppo"]["test|tiny|ava-p-pess|0"]["pessimism"] = 99.0
    (tmp_path / "out" / "results.json").write_text(json.dumps(results))
    again = run_study(UncertaintyConfig.from_yaml(str(path)), progress=False)
    assert again["ppo"]["test|tiny|ava-p-pess|0"]["pessimism"] == best
    assert again["ppo"]["test|tiny|dpo|0"] == results["ppo"]["test|tiny|dpo|0"]
    assert again["analysis"] == results["analysis"]
    # ten BT models: the ensembles of five at the full budget and at a fifth of it
    assert sorted(k for k in results["cells"] if k.startswith("test|tiny|bt")) == sorted(
        ["test|tiny|bt|0"] + [f"test|tiny|bt-m{m}|0" for m in range(1, 5)] + [f"test|tiny|bt-small-m{m}|0" for m in range(5)])
