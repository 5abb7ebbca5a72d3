"""Value tests of the core against independent references written from the definitions (issue 16, point 9): the
reward weights as the Preference Transformer defines them, computed by a plain loop, and AVATrainer's loss composed
by hand in float64 from the model's outputs. Each reference follows the paper and docs/method.md, not the code."""

import math

import pytest
import torch

from avalign import AVAConfig, AVATrainer, TQRModel

from conftest import tiny_backbone


def randomised(model: TQRModel, seed: int = 0) -> TQRModel:
    """The heads away from their zero/near-uniform start, so that every term carries a distinct value."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # small reward head: sigma near 1, so that no single term dwarfs the others
        for parameters, scale in ((model.reward_head.parameters(), 0.05), (model.reward_weights.parameters(), 0.5)):
            for parameter in parameters:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    return model


def reference_reward_weights(hidden, mask, query, key, rescale):
    """Eq. 11 as in the Preference Transformer, by loops in float64: one single-head attention layer over the valid
    positions only, not causal (every valid query sees every valid key), scores q_i . k_j / sqrt(d); w_j is the
    mean over valid queries i of softmax_j. Rescaled: times the number of valid positions. Zero elsewhere."""
    batch, length, width = len(hidden), len(hidden[0]), len(hidden[0][0])
    weights = [[0.0] * length for _ in range(batch)]
    for b in range(batch):
        valid = [t for t in range(length) if mask[b][t]]
        project = lambda layer, t: [sum(layer.weight[o][i] * hidden[b][t][i] for i in range(width)) + layer.bias[o]
                                    for o in range(width)]
        q = {t: project(query, t) for t in valid}
        k = {t: project(key, t) for t in valid}
        for i in valid:
            scores = {j: sum(a * c for a, c in zip(q[i], k[j])) / math.sqrt(width) for j in valid}
            top = max(scores.values())
            total = sum(math.exp(s - top) for s in scores.values())
            for j in valid:
                weights[b][j] += math.exp(scores[j] - top) / total / len(valid)
        if rescale:
            for j in valid:
                weights[b][j] *= len(valid)
    return weights


@pytest.mark.parametrize("rescale, dtype, chunk_rows", [(True, torch.float32, None), (False, torch.float32, None),
                                                      (True, torch.float64, None), (False, torch.float64, 2)])
def test_reward_weights_and_means_follow_the_definition(tokenizer, rescale, dtype, chunk_rows):
    """A float64 model keeps float64 weights (to float64 rounding), whole or in chunks of query rows."""
    from avalign.modeling import TQRConfig

    model = TQRModel(tiny_backbone("gpt2", tokenizer).to(dtype), TQRConfig(rescale_reward_weights=rescale))
    model = randomised(model).eval()
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11], [5, 12, 13, 14, pad, pad, pad]])
    attention = (ids != pad).long()
    completion = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0, 0]])  # prompt and padding are not actions
    if chunk_rows:
        model.reward_weights.chunk_elements = chunk_rows * ids[:, 1:].numel()  # chunk_rows query rows per chunk
    with torch.no_grad():
        out = model(ids, attention, completion, with_q=False)
        hidden = model.sequence_hidden_states(ids, attention).double()
    # Column i is the transition (x_0..x_i, x_{i+1}): its reward and its weight are read from h_{i+1}.
    next_hidden, mask = hidden[:, 1:].tolist(), (completion[:, 1:] * attention[:, 1:]).bool().tolist()
    as_lists = lambda layer: type("Linear", (), {"weight": layer.weight.double().tolist(),
                                                 "bias": layer.bias.double().tolist()})
    expected = reference_reward_weights(next_hidden, mask, as_lists(model.reward_weights.query),
                                        as_lists(model.reward_weights.key), rescale)
    assert out.reward_weights.dtype == dtype
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-13}
    torch.testing.assert_close(out.reward_weights.double(), torch.tensor(expected, dtype=torch.float64), **tolerance)
    assert out.mask.tolist() == mask
    head = model.reward_head
    for b, row in enumerate(mask):
        for t, valid in enumerate(row):
            if valid:
                mu = sum(w * h for w, h in zip(head.weight[0].tolist(), next_hidden[b][t])) + head.bias[0].item()
                assert out.reward_mean[b, t].item() == pytest.approx(mu, rel=1e-4, abs=1e-5)


def reference_ava_p_loss(out, beta, lam, gamma, cer_coef, reduction, weights_apply_to, cer_target):
    """-(Eq. 17 + cer_coef * log CER of Eq. 18), averaged over pairs, from the model outputs in float64. Per
    sequence over its response positions t (in order): Q term sum_t Q_t; KL term sum_t KL(N(mu_t, s_t^2) || N(0,1));
    TD term sum over consecutive valid t of log N(Q_t - gamma Q_{t+1}; w_t mu_t, s_t^2), with the std w_t s_t under
    mean_std; each divided by its number of positions under the mean reduction. CER reads the weighted reward mean
    of the last response position (cer_target last) or the sum of w_t mu_t over the response (sum). Rows: chosen
    first, then rejected."""
    rows = {name: getattr(out, name).double().tolist() for name in ("q_values", "reward_mean", "reward_log_std",
                                                                      "reward_weights", "mask")}
    reduce = (lambda values: sum(values) / len(values)) if reduction == "mean" else sum

    def sequence(b):
        valid = [t for t, ok in enumerate(rows["mask"][b]) if ok]
        q, mu, log_s, w = (rows[n][b] for n in ("q_values", "reward_mean", "reward_log_std", "reward_weights"))
        kl = [0.5 * (math.exp(2 * log_s[t]) + mu[t] ** 2 - 1) - log_s[t] for t in valid]
        td = []
        for t in valid:
            if t + 1 in valid:
                std = math.exp(log_s[t]) * (w[t] if weights_apply_to == "mean_std" else 1.0)
                delta = q[t] - gamma * q[t + 1]
                td.append(-0.5 * ((delta - w[t] * mu[t]) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi))
        last = valid[-1]
        expected_reward = w[last] * mu[last] if cer_target == "last" else sum(w[t] * mu[t] for t in valid)
        return reduce([q[t] for t in valid]), reduce(kl), reduce(td), expected_reward

    half = len(rows["mask"]) // 2
    objectives = []
    for b in range(half):
        (q_c, kl_c, td_c, last_c), (q_r, kl_r, td_r, last_r) = sequence(b), sequence(b + half)
        margin = last_c - last_r
        cer = -math.log1p(math.exp(-margin)) if margin > 0 else margin - math.log1p(math.exp(margin))
        objectives.append(beta * (q_c - q_r) + lam * (td_c + td_r) - (kl_c + kl_r) + cer_coef * cer)
    return -sum(objectives) / half


@pytest.mark.parametrize("reduction, weights_apply_to, cer_target",
                         [("mean", "mean", "last"), ("sum", "mean_std", "sum"), ("mean", "mean_std", "sum")])
def test_trainer_loss_is_the_ava_p_objective(tmp_path, synthetic, tokenizer, reduction, weights_apply_to, cer_target):
    options = dict(beta=0.7, lam=1.3, gamma=0.9, cer_coef=2.0, cer_target=cer_target)
    args = AVAConfig(output_dir=str(tmp_path), max_length=48, per_device_train_batch_size=4, report_to="none",
                     use_cpu=True, reduction=reduction, weights_apply_to=weights_apply_to, cer_form="logsigmoid",
                     **options)
    model = randomised(TQRModel(tiny_backbone("gpt2", tokenizer), args.tqr_config()))
    trainer = AVATrainer(model, args=args, train_dataset=synthetic[0].select(range(8)), processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    model.train()
    loss, (out, _) = trainer.compute_loss(model, batch, return_outputs=True)
    assert loss.item() == pytest.approx(reference_ava_p_loss(out, reduction=reduction,
                                                             weights_apply_to=weights_apply_to, **options), rel=1e-5)


# -- what mutation testing of losses.py found unchecked (docs/reliability.md) -----------------------------------------
def test_logged_terms_are_the_batch_means_of_each_term():
    from avalign.losses import ava_d_objective, ava_p_objective, cer_term, sequence_terms

    from test_losses import loop_sequence, random_sequences

    chosen, mask_c = random_sequences(seed=5)
    rejected, mask_r = random_sequences(seed=6)
    mask_r = mask_r.roll(1, dims=0)
    opts = dict(gamma=0.9, reduction="mean", weights_apply_to="mean")
    loops = {side: [loop_sequence(*(x[k][b] for k in x), m[b].tolist(), 0.9, "mean", "mean") for b in range(3)]
             for side, x, m in (("c", chosen, mask_c), ("r", rejected, mask_r))}
    mean = lambda values: sum(float(v.detach()) for v in values) / len(values)
    ct, rt = sequence_terms(**chosen, mask=mask_c, **opts), sequence_terms(**rejected, mask=mask_r, **opts)
    last_c, last_r = torch.tensor([0.3, -1.0, 2.0]), torch.tensor([0.1, 0.5, -0.5])
    out = ava_p_objective(ct, rt, last_c, last_r, beta=1.0, lam=1.0, cer_form="logsigmoid")
    expected = {
        "q_chosen": mean([q for q, _, _ in loops["c"]]), "q_rejected": mean([q for q, _, _ in loops["r"]]),
        "kl": mean([kl for _, kl, _ in loops["c"] + loops["r"]]), "td_log_lik": mean([td for _, _, td in loops["c"] + loops["r"]]),
        "cer": float(torch.nn.functional.logsigmoid(last_c - last_r).mean()),
    }
    assert {k: float(v.detach()) for k, v in out.terms.items()} == pytest.approx(expected, rel=1e-9)
    # cer_coef defaults to 1: the default objective is the one with the CER term counted once.
    once = ava_p_objective(ct, rt, last_c, last_r, beta=1.0, lam=1.0, cer_coef=1.0, cer_form="logsigmoid")
    assert float(out.objective.detach()) == pytest.approx(float(once.objective.detach()), rel=1e-12)
    assert float(cer_term(last_c, last_r, "logsigmoid").mean()) == pytest.approx(expected["cer"])
    d = ava_d_objective(ct, beta=1.0, lam=1.0)
    assert {k: float(v.detach()) for k, v in d.terms.items()} == pytest.approx(
        {"q": expected["q_chosen"], "kl": mean([kl for _, kl, _ in loops["c"]]),
         "td_log_lik": mean([td for _, _, td in loops["c"]])}, rel=1e-9)


def test_unknown_loss_options_are_refused_by_name():
    from avalign.errors import ConfigError
    from avalign.losses import cer_term, reduce_positions, sequence_terms

    from test_losses import random_sequences

    x, mask = random_sequences()
    with pytest.raises(ConfigError, match="unknown reduction 'max'"):
        reduce_positions(x["q_values"], mask, "max")
    with pytest.raises(ConfigError, match="unknown weights_apply_to 'std'"):
        sequence_terms(**x, mask=mask, gamma=1.0, weights_apply_to="std")
    with pytest.raises(ConfigError, match="unknown cer_form 'tanh'"):
        cer_term(torch.zeros(1), torch.zeros(1), "tanh")


def test_last_score_of_a_response_that_starts_and_ends_at_the_first_column():
    from avalign.losses import sequence_rewards

    mu, w = torch.tensor([[2.0, 3.0, 5.0], [2.0, 3.0, 5.0]]), torch.tensor([[0.5, 1.0, 1.0], [0.5, 1.0, 1.0]])
    mask = torch.tensor([[True, False, False], [False, True, False]])
    assert sequence_rewards(mu, w, mask)["last"].tolist() == [1.0, 3.0]


def test_preference_transformer_objective_is_the_bradley_terry_log_likelihood():
    from avalign.losses import preference_transformer_objective

    chosen, rejected = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64), torch.tensor([0.0, 1.0, 2.5], dtype=torch.float64)
    expected = sum(-math.log1p(math.exp(-(c - r))) for c, r in zip(chosen.tolist(), rejected.tolist())) / 3
    out = preference_transformer_objective(chosen, rejected)
    assert float(out.objective) == pytest.approx(expected, rel=1e-12) and float(out.loss) == pytest.approx(-expected)
    assert float(out.terms["bt_log_lik"]) == pytest.approx(expected, rel=1e-12)
