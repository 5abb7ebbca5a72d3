"""AVA objectives as pure functions of tensors (Cai et al., AAAI 2025, arXiv 2411.09341).

Everything here works on per-action tensors of shape [batch, T] aligned on *action positions*: column i is
the transition (state y_{1:i}, action y_{i+1}); see docs/method.md for how the model fills them:

- ``q_values[b, i]``        Q(y_{1:i}, y_{i+1}) of the taken token (Eq. 12)
- ``reward_mean[b, i]``     mu of q_phi(R | y_{1:i+1}), from the hidden state that has seen y_{i+1}
- ``reward_log_std[b, i]``  log sigma of the same Gaussian
- ``reward_weights[b, i]``  w_i (Eq. 11), already rescaled; ones when reward weights are off
- ``mask[b, i]``            True where the action is a response token (padding and prompt excluded)

The functions return objectives to *maximise* split into their terms; the trainer minimises ``-objective``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError

REDUCTIONS = ("mean", "sum")
CER_FORMS = ("sigmoid", "logsigmoid")
WEIGHT_TARGETS = ("mean", "mean_std")


def kl_to_standard_normal(reward_mean: torch.Tensor, reward_log_std: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) per element: the prior term of Eq. 13."""
    return 0.5 * (torch.exp(2 * reward_log_std) + reward_mean**2 - 1.0) - reward_log_std


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, exp(log_std)^2) per element."""
    return -0.5 * ((x - mean) * torch.exp(-log_std)) ** 2 - log_std - 0.5 * math.log(2 * math.pi)


def td_error(q_values: torch.Tensor, mask: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 14: delta_i = Q(y_{1:i}, y_{i+1}) - gamma * Q(y_{1:i+1}, y_{i+2}).

    Defined only where both actions are valid, so the terminal transition (the last response token) has none.
    Returns (td [B, T], td_mask [B, T]); td is zero where td_mask is False.
    """
    next_q = F.pad(q_values[:, 1:], (0, 1))
    td_mask = mask & F.pad(mask[:, 1:], (0, 1), value=False)
    td = torch.where(td_mask, q_values - gamma * next_q, torch.zeros_like(q_values))
    return td, td_mask


def reduce_positions(values: torch.Tensor, mask: torch.Tensor, reduction: str) -> torch.Tensor:
    """Per-sequence reduction over valid positions: token mean (default) or sum. Returns [B]."""
    total = torch.where(mask, values, torch.zeros_like(values)).sum(-1)
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / mask.sum(-1).clamp(min=1)
    raise ConfigError(f"unknown reduction '{reduction}'; expected one of {REDUCTIONS}")


@dataclass
class SequenceTerms:
    """The three per-sequence terms of Eq. 13, each of shape [B] (already reduced over positions)."""

    q_term: torch.Tensor  # sum/mean of Q(y_{1:t}, y_{t+1})
    kl_term: torch.Tensor  # sum/mean of KL(q_phi || p)
    td_term: torch.Tensor  # sum/mean of log q_phi(delta_t)
    td_error: torch.Tensor  # mean |delta_t| per sequence, for logging


def sequence_terms(
    q_values: torch.Tensor,
    reward_mean: torch.Tensor,
    reward_log_std: torch.Tensor,
    reward_weights: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float,
    reduction: str = "mean",
    weights_apply_to: str = "mean",
    td_baseline: torch.Tensor | None = None,
) -> SequenceTerms:
    """Per-sequence pieces of Eq. 13 for one batch of sequences.

    ``td_baseline``: Q values of a reference (the initial model) subtracted before the TD error, so the reward
    explains the change that training makes to Q rather than the LM's own TD errors (``AVAConfig.td_reference``).

    The TD likelihood scores delta_t under the weighted reward distribution N(w_t mu_t, sigma_t^2) (or
    N(w_t mu_t, (w_t sigma_t)^2) with ``weights_apply_to="mean_std"``). The KL is on the unweighted posterior,
    whose prior is N(0, 1). KL covers every response position; the TD term every non-terminal one.
    """
    if weights_apply_to not in WEIGHT_TARGETS:
        raise ConfigError(f"unknown weights_apply_to '{weights_apply_to}'; expected one of {WEIGHT_TARGETS}")
    td, td_mask = td_error(q_values if td_baseline is None else q_values - td_baseline, mask, gamma)
    weighted_mean = reward_weights * reward_mean
    weighted_log_std = reward_log_std
    if weights_apply_to == "mean_std":
        weighted_log_std = reward_log_std + torch.log(reward_weights.clamp(min=1e-12))
    td_log_lik = gaussian_log_prob(td, weighted_mean, weighted_log_std)
    kl = kl_to_standard_normal(reward_mean, reward_log_std)
    return SequenceTerms(
        q_term=reduce_positions(q_values, mask, reduction),
        kl_term=reduce_positions(kl, mask, reduction),
        td_term=reduce_positions(td_log_lik, td_mask, reduction),
        td_error=reduce_positions(td.abs(), td_mask, "mean"),
    )


@dataclass
class AVAObjective:
    """An objective to maximise, with its terms (batch means) for logging. ``loss`` is ``-objective``."""

    objective: torch.Tensor
    terms: dict[str, torch.Tensor]

    @property
    def loss(self) -> torch.Tensor:
        return -self.objective


def ava_d_objective(
    terms: SequenceTerms, *, beta: float, lam: float, use_irl: bool = True
) -> AVAObjective:
    """Eq. 13 (AVA-d), over demonstrations: beta * Q - KL(q_phi || p) + lambda * log q_phi(delta).

    ``use_irl=False`` (ablation "w/o irl") keeps only the beta * Q term.
    """
    q_part = beta * terms.q_term
    irl_part = (lam * terms.td_term - terms.kl_term) if use_irl else torch.zeros_like(q_part)
    objective = (q_part + irl_part).mean()
    return AVAObjective(
        objective,
        {"q": terms.q_term.mean(), "kl": terms.kl_term.mean(), "td_log_lik": terms.td_term.mean()},
    )


# Gauss-Hermite rule (32 nodes) for expectations under a Gaussian: E[f(x)], x ~ N(m, v), is
# sum_i weight_i f(m + sqrt(2 v) node_i) / sqrt(pi); exact for polynomials of degree < 64.
_HERMITE_NODES, _HERMITE_WEIGHTS = (torch.from_numpy(a) for a in np.polynomial.hermite.hermgauss(32))


def cer_term(chosen_reward: torch.Tensor, rejected_reward: torch.Tensor, form: str = "sigmoid",
             margin_variance: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 18 (CER), per pair: sigma(E[R | y+] - E[R | y-]) as printed, or its log (``form="logsigmoid"``).

    ``margin_variance``: the variance of R+ - R- under the reward posterior q. Then the term is its expectation
    under q, E_q[sigma(R+ - R-)] or E_q[log sigma(R+ - R-)] (the variational reading: the likelihood of the
    preference averaged over the posterior, as the TD term is), so sigma is trained by the preferences too."""
    if form not in CER_FORMS:
        raise ConfigError(f"unknown cer_form '{form}'; expected one of {CER_FORMS}")
    link = torch.sigmoid if form == "sigmoid" else F.logsigmoid
    margin = chosen_reward - rejected_reward
    if margin_variance is None:
        return link(margin)
    nodes = _HERMITE_NODES.to(margin)
    weights = _HERMITE_WEIGHTS.to(margin) / math.sqrt(math.pi)
    points = margin[..., None] + torch.sqrt(2 * margin_variance.clamp(min=0))[..., None] * nodes
    return (link(points) * weights).sum(-1)


def ava_p_objective(
    chosen: SequenceTerms,
    rejected: SequenceTerms,
    chosen_reward: torch.Tensor,
    rejected_reward: torch.Tensor,
    *,
    beta: float,
    lam: float,
    cer_coef: float = 1.0,
    cer_form: str = "sigmoid",
    margin_variance: torch.Tensor | None = None,
    use_negative: bool = True,
    use_irl: bool = True,
    use_cer: bool = True,
) -> AVAObjective:
    """Eq. 17 (AVA-p) plus the CER auxiliary of Eq. 18, over preference pairs.

    beta * Q(y+) - beta * Q(y-) + sum over both sequences of (lambda * log q_phi(delta) - KL(q_phi || p))
    + cer_coef * CER(chosen_reward, rejected_reward): the expected rewards E[R | y] CER ranks, the last step's
    weighted reward means as printed, or the weighted returns (``AVAConfig.cer_target``); with ``margin_variance``
    (``AVAConfig.cer_expected``) CER is its expectation under the reward posterior. Ablations: ``use_negative=False`` ("w/o neg") drops the
    rejected Q term, ``use_irl=False`` ("w/o irl") the KL and TD terms, ``use_cer=False`` ("w/o cer") CER.
    """
    q_part = beta * chosen.q_term - (beta * rejected.q_term if use_negative else 0.0)
    irl_part = torch.zeros_like(q_part)
    if use_irl:
        irl_part = lam * (chosen.td_term + rejected.td_term) - (chosen.kl_term + rejected.kl_term)
    cer = cer_term(chosen_reward, rejected_reward, cer_form, margin_variance)
    cer_part = cer_coef * cer if use_cer else torch.zeros_like(q_part)
    objective = (q_part + irl_part + cer_part).mean()
    terms = {
        "q_chosen": chosen.q_term.mean(),
        "q_rejected": rejected.q_term.mean(),
        "kl": (chosen.kl_term + rejected.kl_term).mean() / 2,
        "td_log_lik": (chosen.td_term + rejected.td_term).mean() / 2,
        "cer": cer.mean(),
    }
    return AVAObjective(objective, terms)


def preference_transformer_objective(chosen_return: torch.Tensor, rejected_return: torch.Tensor) -> AVAObjective:
    """The Preference Transformer baseline (Kim et al., ICLR 2023): the Bradley-Terry log-likelihood of the
    preference under weighted returns sum_t w_t r_t, with w_t the column mean of one non-causal attention layer
    (Eq. 11 here, not rescaled, so the weights sum to 1). Returns are ``sequence_rewards(...)["sum"]``."""
    log_lik = F.logsigmoid(chosen_return - rejected_return)
    return AVAObjective(log_lik.mean(), {"bt_log_lik": log_lik.mean()})


def sequence_rewards(
    reward_mean: torch.Tensor, reward_weights: torch.Tensor, mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Eq. 19 sequence reward ("sum" of weighted reward means over response positions) and the "last" scoring
    (the weighted reward mean at the last response position). Returns {"sum": [B], "last": [B]}."""
    return response_scores(reward_weights * reward_mean, mask)


def reward_variances(reward_log_std: torch.Tensor, reward_weights: torch.Tensor, mask: torch.Tensor,
                     ) -> dict[str, torch.Tensor]:
    """Posterior variances of the two sequence scores, with independent token posteriors N(mu_t, sigma_t^2):
    "sum" = sum_t w_t^2 sigma_t^2 (the weighted return's) and "last" = (w_T sigma_T)^2. Returns {"sum", "last"}."""
    return response_scores((reward_weights * reward_log_std.exp()) ** 2, mask)


def response_scores(token_rewards: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The two sequence scores of per-token rewards [B, T] read where ``mask``: "sum" over the response positions
    and "last", the reward at the last response position. Returns {"sum": [B], "last": [B]}."""
    masked = torch.where(mask, token_rewards, torch.zeros_like(token_rewards))
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    last_index = torch.where(mask, positions, torch.full_like(positions, -1)).amax(-1).clamp(min=0)
    return {"sum": masked.sum(-1), "last": masked.gather(-1, last_index[:, None]).squeeze(-1)}
