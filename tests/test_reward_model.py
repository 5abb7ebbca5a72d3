"""Pessimistic AVA scores and reward-model ensembles against independent references: the model's own means, sigmas
and weights for kappa, numpy and each member's own scores for ensembles."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from avalign.data.synthetic import SyntheticTask, SyntheticTaskConfig
from avalign.errors import ConfigError
from avalign.modeling import TQRConfig, TQRModel
from avalign.reward_model import (
    ENSEMBLES, AVARewardModel, BTRewardModel, EnsembleRewardModel, aggregate_scores, load_reward_models,
)

from avalign.rl.rewards import RewardModelFunction

from conftest import tiny_backbone


def numpy_aggregate(scores: np.ndarray, ensemble: str, k: float) -> np.ndarray:
    if ensemble == "mean":
        return scores.mean(0)
    if ensemble == "worst":
        return scores.min(0)
    return scores.mean(0) - k * scores.std(0)  # numpy's default: the population std (ddof 0)


@pytest.mark.parametrize("ensemble", ENSEMBLES)
@pytest.mark.parametrize("k", [0.0, 1.0, 2.5])
def test_aggregate_scores_equal_numpy(ensemble, k):
    scores = np.random.default_rng(0).normal(size=(4, 7))
    aggregated = aggregate_scores(torch.tensor(scores), ensemble, k)
    assert aggregated.shape == (7,)
    np.testing.assert_allclose(aggregated.numpy(), numpy_aggregate(scores, ensemble, k), rtol=0, atol=1e-12)


def test_aggregate_scores_refuse_unknown_ensembles_and_negative_k():
    with pytest.raises(ConfigError, match="unknown ensemble 'median'"):
        aggregate_scores(torch.zeros(2, 3), "median")
    with pytest.raises(ConfigError, match="k must be >= 0"):
        aggregate_scores(torch.zeros(2, 3), "lcb", -0.5)


@pytest.fixture(scope="module")
def tqr_model(tokenizer):
    """A TQR model with a random reward head: means, sigmas and weights all vary by token."""
    torch.manual_seed(1)
    model = TQRModel(tiny_backbone("gpt2", tokenizer, seed=1), TQRConfig(scoring="sum"))
    torch.nn.init.normal_(model.reward_head.weight)
    torch.nn.init.normal_(model.reward_head.bias)
    return model


@pytest.fixture(scope="module")
def rows(synthetic):
    return synthetic[1].select(range(7)).select_columns(["prompt", "chosen", "rejected"])


def test_kappa_lowers_sum_by_kappa_sigmas_and_last_by_the_last_sigma(tqr_model, tokenizer, rows):
    mean_model = AVARewardModel(tqr_model, tokenizer, batch_size=3)
    kappa = 0.7
    pessimistic = AVARewardModel(tqr_model, tokenizer, batch_size=3, kappa=kappa)
    reference = mean_model.score(rows["prompt"], rows["chosen"])
    scored = pessimistic.score(rows["prompt"], rows["chosen"])
    sequence = pessimistic.sequence_scores(rows["prompt"], rows["chosen"])
    for ref, low, low_sum, low_last in zip(reference, scored, sequence["sum"], sequence["last"]):
        weighted = [w * m for w, m in zip(ref.reward_weights, ref.reward_mean)]
        # kappa 0: today's scores, the Eq. 19 sum of weighted means and the last weighted mean
        assert ref.sum == pytest.approx(sum(weighted), abs=1e-5)
        assert ref.last == pytest.approx(weighted[-1], abs=1e-6)
        assert min(ref.reward_std) > 0
        expected_sum = sum(weighted) - kappa * sum(ref.reward_std)
        assert low.sum == low_sum == pytest.approx(expected_sum, abs=1e-5)
        assert low.last == low_last == pytest.approx(weighted[-1] - kappa * ref.reward_std[-1], abs=1e-5)
        assert low.token_rewards == pytest.approx([x - kappa * s for x, s in zip(weighted, ref.reward_std)], abs=1e-5)
    # pairs (what `evaluate` and `normalize_on_pairs` read) score the same way, each side on its own
    chosen, rejected = pessimistic.pair_scores(rows)
    for side, scores in (("chosen", chosen), ("rejected", rejected)):
        reference = mean_model.score(rows["prompt"], rows[side])
        assert scores["sum"] == pytest.approx([r.sum - kappa * sum(r.reward_std) for r in reference], abs=1e-5)
        assert scores["last"] == pytest.approx([r.last - kappa * r.reward_std[-1] for r in reference], abs=1e-5)
    with pytest.raises(ConfigError, match="kappa must be >= 0"):
        AVARewardModel(tqr_model, tokenizer, kappa=-0.1)


def bt_model(tokenizer, seed):
    config = tiny_backbone("gpt2", tokenizer, seed=seed).config
    config.num_labels = 1
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(config)


@pytest.fixture(scope="module")
def bt_dirs(tokenizer, tmp_path_factory):
    """Three saved Bradley-Terry models with different random heads."""
    paths = []
    for seed in (11, 12, 13):
        path = tmp_path_factory.mktemp(f"bt{seed}")
        bt_model(tokenizer, seed).save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("ensemble,k", [("mean", 1.0), ("worst", 1.0), ("lcb", 0.5)])
def test_an_ensemble_scores_the_aggregate_of_its_members_own_scores(ensemble, k, bt_dirs, rows):
    model = load_reward_models(bt_dirs, ensemble, k, batch_size=4)
    assert isinstance(model, EnsembleRewardModel) and model.scorings == (ensemble,)
    members = [BTRewardModel.from_pretrained(path) for path in bt_dirs]
    own = np.array([m.sequence_scores(rows["prompt"], rows["chosen"])["last"] for m in members])
    assert np.ptp(own, axis=0).min() > 0  # the members disagree on every response
    np.testing.assert_allclose(model.member_scores(rows["prompt"], rows["chosen"]).numpy(), own, atol=1e-6)
    assert model.sequence_scores(rows["prompt"], rows["chosen"])[ensemble] == pytest.approx(
        numpy_aggregate(own, ensemble, k), abs=1e-6)
    chosen, rejected = model.pair_scores(rows)
    own_pairs = [m.pair_scores(rows) for m in members]
    for side, scores in ((0, chosen), (1, rejected)):
        expected = numpy_aggregate(np.array([pair[side]["last"] for pair in own_pairs]), ensemble, k)
        assert scores[ensemble] == pytest.approx(expected, abs=1e-6)
    metrics = model.evaluate_pairs(rows)
    expected_accuracy = np.mean(np.array(chosen[ensemble]) > np.array(rejected[ensemble]))
    assert metrics["n"] == 7 and metrics[f"accuracy_{ensemble}"] == pytest.approx(expected_accuracy)


def test_an_ensemble_reads_each_member_under_its_own_scoring_and_kappa(tqr_model, tokenizer, bt_dirs, rows,
                                                                      tmp_path):
    tqr_model.save_pretrained(tmp_path / "ava")  # its own scoring is "sum"
    tokenizer.save_pretrained(tmp_path / "ava")
    model = load_reward_models([str(tmp_path / "ava"), bt_dirs[0]], "mean", kappa=0.3)
    reference = AVARewardModel(tqr_model, tokenizer).score(rows["prompt"], rows["chosen"])
    bt_scores = BTRewardModel.from_pretrained(bt_dirs[0]).sequence_scores(rows["prompt"], rows["chosen"])["last"]
    expected = [[r.sum - 0.3 * sum(r.reward_std) for r in reference], bt_scores]
    np.testing.assert_allclose(model.member_scores(rows["prompt"], rows["chosen"]).numpy(), expected, atol=1e-5)
    # token ids in (PPO's and GRPO's path, ``forward_features``): the same aggregate
    reward_function = RewardModelFunction(model)
    assert reward_function(list(rows["prompt"]), list(rows["chosen"])) == pytest.approx(np.mean(expected, 0), abs=1e-5)


def test_ensemble_members_must_share_a_vocabulary(tokenizer):
    other = SyntheticTask(SyntheticTaskConfig(seed=7)).tokenizer()
    assert other.get_vocab() != tokenizer.get_vocab()
    members = [BTRewardModel(bt_model(tokenizer, 1), tokenizer), BTRewardModel(bt_model(other, 2), other)]
    with pytest.raises(ConfigError, match="one tokenizer vocabulary: b's differs from a's"):
        EnsembleRewardModel(members, "mean", names=["a", "b"])


def test_loading_refuses_what_it_cannot_honour(bt_dirs):
    with pytest.raises(ConfigError, match=r"3 reward models need an ensemble.*\('mean', 'worst', 'lcb'\)"):
        load_reward_models(bt_dirs)
    with pytest.raises(ConfigError, match="ensemble 'worst' needs at least two reward models"):
        load_reward_models(bt_dirs[:1], "worst")
    with pytest.raises(ConfigError, match="unknown ensemble 'median'"):
        load_reward_models(bt_dirs, "median")
    with pytest.raises(ConfigError, match="kappa 0.5 needs an AVA reward model"):  # Bradley-Terry: no sigma
        load_reward_models(bt_dirs, "mean", kappa=0.5)
    with pytest.raises(ConfigError, match="kappa 0.5 needs an AVA reward model"):
        load_reward_models(bt_dirs[0], kappa=0.5)
    assert isinstance(load_reward_models(bt_dirs[0]), BTRewardModel)
