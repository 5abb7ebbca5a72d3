"""The objectives against an independent float64 loop over the equations (values and gradients)."""

import math

import pytest
import torch

from avalign.losses import (
    ava_d_objective,
    ava_p_objective,
    cer_term,
    sequence_rewards,
    sequence_terms,
)


def random_sequences(batch=3, length=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, length, dtype=torch.bool)
    for b, (start, end) in enumerate([(0, length), (2, 6), (1, 3)][:batch]):
        mask[b, start:end] = True
    tensors = {
        "q_values": torch.randn(batch, length, generator=g, dtype=torch.float64) - 3,
        "reward_mean": torch.randn(batch, length, generator=g, dtype=torch.float64),
        "reward_log_std": 0.5 * torch.randn(batch, length, generator=g, dtype=torch.float64),
        "reward_weights": torch.rand(batch, length, generator=g, dtype=torch.float64) * 2,
    }
    return {k: v.requires_grad_() for k, v in tensors.items()}, mask


def loop_sequence(q, mu, log_std, w, valid, gamma, reduction, weights_apply_to):
    """Eq. 13 terms of one sequence, written as a plain loop over positions t."""
    positions = [t for t in range(len(valid)) if valid[t]]
    q_sum, kl_sum, td_sum, td_count = 0.0, 0.0, 0.0, 0
    for t in positions:
        q_sum = q_sum + q[t]
        sigma = torch.exp(log_std[t])
        kl_sum = kl_sum + (sigma**2 + mu[t] ** 2 - 1) / 2 - torch.log(sigma)
        if t + 1 < len(valid) and valid[t + 1]:  # no terminal transition
            delta = q[t] - gamma * q[t + 1]
            mean = w[t] * mu[t]
            std = sigma * w[t] if weights_apply_to == "mean_std" else sigma
            td_sum = td_sum + (-((delta - mean) ** 2) / (2 * std**2) - torch.log(std) - math.log(2 * math.pi) / 2)
            td_count += 1
    if reduction == "mean":
        return q_sum / len(positions), kl_sum / len(positions), td_sum / max(td_count, 1)
    return q_sum, kl_sum, td_sum


def loop_last_weighted_reward(mu, w, valid):
    last = max(t for t in range(len(valid)) if valid[t])
    return w[last] * mu[last]


def test_td_baseline_enters_the_td_error_only():
    """AVAConfig.td_reference: the reference's Q values b_t are taken off Q before the TD error,
    delta_t = (q_t - b_t) - gamma (q_{t+1} - b_{t+1}); the Q and KL terms keep the model's own values."""
    x, mask = random_sequences()
    baseline = torch.randn(mask.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    terms = sequence_terms(**x, mask=mask, gamma=0.9, td_baseline=baseline)
    for b in range(mask.shape[0]):
        mu, log_std, w = (x[k][b] for k in ("reward_mean", "reward_log_std", "reward_weights"))
        q, kl, _ = loop_sequence(x["q_values"][b], mu, log_std, w, mask[b].tolist(), 0.9, "mean", "mean")
        _, _, td = loop_sequence(x["q_values"][b] - baseline[b], mu, log_std, w, mask[b].tolist(), 0.9, "mean", "mean")
        for got, want in ((terms.q_term[b], q), (terms.kl_term[b], kl), (terms.td_term[b], td)):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("weights_apply_to", ["mean", "mean_std"])
def test_ava_d_matches_loop(reduction, weights_apply_to):
    x, mask = random_sequences()
    beta, gamma, lam = 0.7, 0.9, 1.3
    terms = sequence_terms(**x, mask=mask, gamma=gamma, reduction=reduction, weights_apply_to=weights_apply_to)
    objective = ava_d_objective(terms, beta=beta, lam=lam).objective
    expected = 0.0
    for b in range(mask.shape[0]):
        q, kl, td = loop_sequence(*(x[k][b] for k in x), mask[b].tolist(), gamma, reduction, weights_apply_to)
        expected = expected + beta * q - kl + lam * td
    expected = expected / mask.shape[0]
    torch.testing.assert_close(objective, expected, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(objective, list(x.values()))
    expected_grads = torch.autograd.grad(expected, list(x.values()))
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cer_form", ["sigmoid", "logsigmoid"])
def test_ava_p_matches_loop(cer_form):
    chosen, mask_c = random_sequences(seed=1)
    rejected, mask_r = random_sequences(seed=2)
    mask_r = mask_r.roll(1, dims=0)
    beta, gamma, lam, cer_coef = 1.5, 0.95, 0.5, 2.0
    opts = dict(gamma=gamma, reduction="mean", weights_apply_to="mean")
    ct, rt = sequence_terms(**chosen, mask=mask_c, **opts), sequence_terms(**rejected, mask=mask_r, **opts)
    last_c = sequence_rewards(chosen["reward_mean"], chosen["reward_weights"], mask_c)["last"]
    last_r = sequence_rewards(rejected["reward_mean"], rejected["reward_weights"], mask_r)["last"]
    objective = ava_p_objective(ct, rt, last_c, last_r, beta=beta, lam=lam, cer_coef=cer_coef, cer_form=cer_form).objective
    expected = 0.0
    for b in range(3):
        qc, klc, tdc = loop_sequence(*(chosen[k][b] for k in chosen), mask_c[b].tolist(), gamma, "mean", "mean")
        qr, klr, tdr = loop_sequence(*(rejected[k][b] for k in rejected), mask_r[b].tolist(), gamma, "mean", "mean")
        margin = loop_last_weighted_reward(chosen["reward_mean"][b], chosen["reward_weights"][b], mask_c[b].tolist()) - (
            loop_last_weighted_reward(rejected["reward_mean"][b], rejected["reward_weights"][b], mask_r[b].tolist())
        )
        cer = 1 / (1 + torch.exp(-margin))
        cer = cer if cer_form == "sigmoid" else torch.log(cer)
        expected = expected + beta * qc - beta * qr - klc - klr + lam * (tdc + tdr) + cer_coef * cer
    expected = expected / 3
    torch.testing.assert_close(objective, expected, rtol=1e-12, atol=1e-12)
    inputs = list(chosen.values()) + list(rejected.values())
    for got, want in zip(torch.autograd.grad(objective, inputs), torch.autograd.grad(expected, inputs)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_sequence_rewards_sum_and_last():
    mu = torch.tensor([[1.0, 2.0, 3.0, 0.0], [5.0, 6.0, 0.0, 0.0]])
    w = torch.tensor([[1.0, 0.5, 2.0, 9.0], [1.0, 1.0, 9.0, 9.0]])
    mask = torch.tensor([[False, True, True, False], [True, True, False, False]])
    scores = sequence_rewards(mu, w, mask)
    torch.testing.assert_close(scores["sum"], torch.tensor([0.5 * 2 + 2 * 3, 5.0 + 6.0]))
    torch.testing.assert_close(scores["last"], torch.tensor([6.0, 6.0]))


def ablation_parts(**switches):
    chosen, mask_c = random_sequences(seed=3)
    rejected, mask_r = random_sequences(seed=4)
    opts = dict(gamma=0.9, reduction="mean", weights_apply_to="mean")
    ct, rt = sequence_terms(**chosen, mask=mask_c, **opts), sequence_terms(**rejected, mask=mask_r, **opts)
    last_c = sequence_rewards(chosen["reward_mean"], chosen["reward_weights"], mask_c)["last"]
    last_r = sequence_rewards(rejected["reward_mean"], rejected["reward_weights"], mask_r)["last"]
    out = ava_p_objective(ct, rt, last_c, last_r, beta=2.0, lam=0.5, cer_coef=3.0, **switches)
    parts = {
        "neg": -(2.0 * rt.q_term).mean(),
        "irl": (0.5 * (ct.td_term + rt.td_term) - ct.kl_term - rt.kl_term).mean(),
        "cer": 3.0 * cer_term(last_c, last_r).mean(),
    }
    return out.objective.detach(), {k: v.detach() for k, v in parts.items()}


@pytest.mark.parametrize("switch,part", [("use_negative", "neg"), ("use_irl", "irl"), ("use_cer", "cer")])
def test_each_ablation_removes_exactly_its_term(switch, part):
    full, parts = ablation_parts()
    ablated, _ = ablation_parts(**{switch: False})
    torch.testing.assert_close(full - ablated, parts[part], rtol=1e-12, atol=1e-12)
    assert parts[part].abs() > 1e-3  # the term is not trivially zero, so the check has teeth


def test_ava_d_without_irl_is_the_q_term():
    x, mask = random_sequences()
    terms = sequence_terms(**x, mask=mask, gamma=1.0)
    out = ava_d_objective(terms, beta=0.3, lam=1.0, use_irl=False)
    torch.testing.assert_close(out.objective, 0.3 * terms.q_term.mean())


def test_bootstrap_interval_matches_the_binomial_spread():
    """For n Bernoulli(p) outcomes the 95% interval of the mean is about p +- 1.96 sqrt(p(1-p)/n)."""
    import numpy as np

    from avalign.evaluation.pairwise import bootstrap_interval

    outcomes = np.r_[np.ones(700), np.zeros(300)]
    low, high = bootstrap_interval(outcomes, resamples=4000)
    half_width = 1.96 * (0.7 * 0.3 / 1000) ** 0.5
    assert low == pytest.approx(0.7 - half_width, abs=0.006) and high == pytest.approx(0.7 + half_width, abs=0.006)
    assert bootstrap_interval(np.ones(50)) == (1.0, 1.0)


def test_pairwise_accuracy_counts_ties_as_wrong():
    from avalign.evaluation.pairwise import pairwise_accuracy

    assert pairwise_accuracy([1.0, 2.0, 3.0, 0.5], [0.0, 2.0, 4.0, 0.4]) == 0.5  # win, tie, loss, win
    assert math.isnan(pairwise_accuracy([], []))


@pytest.mark.parametrize("form", ["logsigmoid", "sigmoid"])
def test_expected_cer_is_the_posterior_average_of_the_printed_one(form):
    """cer_expected: E over R+ - R- ~ N(margin, variance) of the CER, against scipy's adaptive quadrature."""
    from scipy import integrate, stats

    chosen = torch.tensor([0.3, -1.2, 2.0, 0.0], dtype=torch.float64)
    rejected = torch.tensor([0.1, 0.5, -1.0, 0.0], dtype=torch.float64)
    variance = torch.tensor([0.0, 0.7, 4.0, 2.5], dtype=torch.float64)
    link = (lambda x: -math.log1p(math.exp(-x))) if form == "logsigmoid" else (lambda x: 1 / (1 + math.exp(-x)))
    got = cer_term(chosen, rejected, form, variance)
    for value, c, r, v in zip(got.tolist(), chosen.tolist(), rejected.tolist(), variance.tolist()):
        if v == 0:
            expected = link(c - r)
        else:
            expected = integrate.quad(lambda x: link(x) * stats.norm.pdf(x, c - r, math.sqrt(v)), -60, 60)[0]
        assert value == pytest.approx(expected, abs=1e-6)
    assert got[0] == cer_term(chosen, rejected, form)[0]  # no variance: the printed term


def test_reward_variances_of_both_scores():
    from avalign.losses import reward_variances

    tensors, mask = random_sequences()
    got = reward_variances(tensors["reward_log_std"], tensors["reward_weights"], mask)
    for b in range(mask.shape[0]):
        positions = mask[b].nonzero().flatten().tolist()
        terms = [(tensors["reward_weights"][b, i] * tensors["reward_log_std"][b, i].exp()) ** 2 for i in positions]
        assert got["sum"][b].item() == pytest.approx(sum(t.item() for t in terms))
        assert got["last"][b].item() == pytest.approx(terms[-1].item())
