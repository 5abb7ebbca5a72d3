"""PPO: the maths against independent references (a float64 GAE loop, hand-derived clipped losses), the rollout's
log-probs against generate's, and end to end on the synthetic task: the gold reward of fresh samples rises, AVA
rewards (dense and pessimistic) give finite statistics, and the CLI saves a loadable policy."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, GenerationConfig

from avalign import AVAConfig, AVATrainer, TQRConfig, TQRModel
from avalign.cli import main as cli_main
from avalign.commands.parsing import dataclass_parser, parse_dataclasses
from avalign.commands.ppo import PPOArguments, main as ppo_main, reward_sources
from avalign.errors import ConfigError, TrainingDivergedError
from avalign.rl.ppo import (PPOConfig, PPOTrainer, clipped_policy_loss, clipped_value_loss, gae, kl_penalized_rewards,
                            mask_early_eos, pad_left, position_ids, response_mask)
from avalign.reward_model import AVARewardModel, BTRewardModel, EnsembleRewardModel
from avalign.rl.rewards import GoldRewards, RewardModelRewards

from conftest import last_json_line, tiny_backbone


def small_config(**overrides) -> PPOConfig:
    values = dict(learning_rate=1e-3, batch_size=16, mini_batch_size=8, ppo_epochs=2, max_new_tokens=6,
                  total_episodes=32, disable_tqdm=True, seed=0)
    values.update(overrides)
    return PPOConfig(**values)


def test_gae_matches_a_float64_loop_over_each_episode():
    """A_t = sum_l (gamma lam)^l delta_{t+l} over the episode's own tokens, V = 0 after its last one."""
    torch.manual_seed(0)
    rewards, values = torch.randn(3, 5), torch.randn(3, 5)
    lengths = [5, 3, 1]
    mask = (torch.arange(5)[None, :] < torch.tensor(lengths)[:, None]).float()
    gamma, lam = 0.9, 0.8
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    for row, n in enumerate(lengths):
        r, v = rewards[row, :n].double().tolist(), values[row, :n].double().tolist() + [0.0]
        deltas = [r[t] + gamma * v[t + 1] - v[t] for t in range(n)]
        expected = [sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t)) for t in range(n)]
        assert advantages[row, :n].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-6)
        assert returns[row, :n].tolist() == pytest.approx([a + b for a, b in zip(expected, v)], rel=1e-5, abs=1e-6)
        assert advantages[row, n:].abs().sum() == 0 and returns[row, n:].abs().sum() == 0


def test_clipped_policy_loss_on_hand_derived_cases():
    """eps = 0.2, one token each; loss = max(-A rho, -A clip(rho, 0.8, 1.2)):
    A=+1, rho=1.5: max(-1.5, -1.2) = -1.2 (clipped);  A=-1, rho=0.5: max(0.5, 0.8) = 0.8 (clipped);
    A=+1, rho=0.9: -0.9 (inside the range);            A=-1, rho=1.5: max(1.5, 1.2) = 1.5 (not clipped: pessimistic).
    """
    ratios, advantages = torch.tensor([[1.5, 0.5, 0.9, 1.5]]), torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    old = torch.zeros(1, 4)
    per_token = [-1.2, 0.8, -0.9, 1.5]
    for column, expected in enumerate(per_token):
        mask = torch.zeros(1, 4)
        mask[0, column] = 1
        loss, clipfrac, approxkl = clipped_policy_loss(ratios.log(), old, advantages, mask, 0.2)
        assert loss.item() == pytest.approx(expected)
        assert clipfrac.item() == (1.0 if column < 2 else 0.0)
        assert approxkl.item() == pytest.approx(0.5 * math.log(ratios[0, column].item()) ** 2)
    loss, clipfrac, _ = clipped_policy_loss(ratios.log(), old, advantages, torch.ones(1, 4), 0.2)
    assert loss.item() == pytest.approx(sum(per_token) / 4) and clipfrac.item() == 0.5


def test_clipped_value_loss_on_hand_derived_cases():
    """c = 0.2, old V = 0: V=1, G=1: clipped V = 0.2, max(0, 0.64) = 0.64 -> 0.32 (clipped);
    V=0.1, G=1: inside the range, 0.81 -> 0.405;  V=1, G=-1: max(4, 1.44) = 4 -> 2 (unclipped is worse)."""
    values, returns, old = torch.tensor([[1.0, 0.1, 1.0]]), torch.tensor([[1.0, 1.0, -1.0]]), torch.zeros(1, 3)
    for column, (expected, clipped) in enumerate([(0.32, 1.0), (0.405, 0.0), (2.0, 0.0)]):
        mask = torch.zeros(1, 3)
        mask[0, column] = 1
        loss, clipfrac = clipped_value_loss(values, old, returns, mask, 0.2)
        assert loss.item() == pytest.approx(expected) and clipfrac.item() == clipped


def test_kl_penalty_sits_on_every_response_token_and_only_there():
    token_rewards = torch.tensor([[0.0, 0.0, 2.0, 0.0], [0.5, -1.0, 0.0, 0.0]])
    logprobs = torch.tensor([[-1.0, -2.0, -0.5, -3.0], [-1.0, -1.0, -1.0, -1.0]])
    ref_logprobs = torch.tensor([[-1.5, -1.0, -0.5, -1.0], [-2.0, -0.5, -1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    rewards, kl = kl_penalized_rewards(token_rewards, logprobs, ref_logprobs, mask, kl_coef=0.1)
    assert kl.tolist() == [[0.5, -1.0, 0.0, 0.0], [1.0, -0.5, 0.0, 0.0]]
    assert torch.allclose(rewards, torch.tensor([[-0.05, 0.1, 2.0, 0.0], [0.4, -0.95, 0.0, 0.0]]))


def test_response_mask_ends_at_the_first_eos():
    eos = 2
    responses = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 2, 2, 2]])
    assert response_mask(responses, eos).tolist() == [[True, True, False, False], [True] * 4,
                                                      [True, False, False, False]]


def test_recomputed_logits_equal_generate_ones_under_left_padding(tokenizer):
    """PPO recomputes log-probs with a forward pass; with left-padded prompts it must use generate's positions."""
    policy = tiny_backbone("gpt2", tokenizer, seed=0).eval()
    queries = [tokenizer("bal fes")["input_ids"], tokenizer("bal fes tun lez dab")["input_ids"]]
    input_ids, attention = pad_left(queries, tokenizer.pad_token_id), pad_left([[1] * len(q) for q in queries], 0)
    torch.manual_seed(0)
    out = policy.generate(input_ids=input_ids, attention_mask=attention, generation_config=GenerationConfig(
        do_sample=True, top_k=0, max_new_tokens=4, output_logits=True, return_dict_in_generate=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=-1))
    full_mask = torch.cat([attention, torch.ones(2, 4, dtype=torch.long)], 1)
    with torch.no_grad():
        logits = policy(input_ids=out.sequences, attention_mask=full_mask, position_ids=position_ids(full_mask)).logits
    assert torch.allclose(logits[:, input_ids.shape[1] - 1:-1], torch.stack(out.logits, 1), atol=1e-5)


def test_ppo_on_the_gold_reward_raises_the_gold_reward_of_fresh_samples(synthetic, tokenizer):
    task = synthetic[2]
    gold = GoldRewards(task, tokenizer)
    train_prompts = [row["prompt"] for row in task.demonstration_rows(256, seed=1)]
    eval_queries = [tokenizer(row["prompt"])["input_ids"] for row in task.demonstration_rows(128, seed=2)]
    config = small_config(batch_size=32, ppo_epochs=4, max_new_tokens=8, total_episodes=32 * 10)
    trainer = PPOTrainer(tiny_backbone("gpt2", tokenizer, seed=0), tokenizer, train_prompts, gold, config, gold=gold)

    def gold_returns():
        return torch.stack([r.sum() for r in gold.token_rewards(eval_queries, trainer.sample(eval_queries))])

    before = gold_returns()
    history = trainer.train()
    after = gold_returns()
    standard_error = math.sqrt(before.var() / len(before) + after.var() / len(after))
    assert after.mean() - before.mean() > 3 * standard_error
    assert len(history) == 10 and all(math.isfinite(v) for log in history for v in log.values())
    assert history[-1]["objective/kl"] > 0  # it moved away from the initial policy, and measured it


@pytest.fixture(scope="module")
def ava_dir(synthetic, tokenizer, tmp_path_factory):
    """A tiny AVA reward model, briefly trained on the synthetic pairs and saved with its tokenizer."""
    directory = str(tmp_path_factory.mktemp("ava"))
    args = AVAConfig(output_dir=directory, per_device_train_batch_size=8, learning_rate=1e-2, max_steps=8,
                     save_strategy="no", report_to="none", disable_tqdm=True, max_length=48, use_cpu=True, seed=0)
    trainer = AVATrainer(TQRModel(tiny_backbone("gpt2", tokenizer, seed=4)), args=args, train_dataset=synthetic[0],
                         processing_class=tokenizer)
    trainer.train()
    trainer.save_model(directory)
    return directory


@pytest.mark.parametrize("kappa", [0.0, 1.0])
def test_ppo_with_dense_ava_rewards_logs_finite_statistics(kappa, ava_dir, synthetic, tokenizer):
    task = synthetic[2]
    rewards = RewardModelRewards(ava_dir, tokenizer, reward="dense", kappa=kappa)
    prompts = list(synthetic[0]["prompt"])
    trainer = PPOTrainer(tiny_backbone("gpt2", tokenizer, seed=5), tokenizer, prompts, rewards, small_config(),
                         gold=GoldRewards(task, tokenizer))
    history = trainer.train()
    expected = {"objective/kl", "objective/entropy", "objective/scores", "objective/rlhf_reward", "policy/clipfrac",
                "policy/approxkl", "policy/loss", "val/loss", "val/clipfrac", "gold/reward"}
    assert len(history) == 2 and all(expected <= set(log) for log in history)
    assert all(math.isfinite(v) for log in history for v in log.values())
    assert history[0]["objective/kl"] == 0  # the first rollout comes from the initial policy itself


def test_cli_trains_a_tqr_checkpoint_as_policy_and_saves_it(ava_dir, tmp_path, capsys):
    out = tmp_path / "ppo"
    ppo_main(["--policy", ava_dir, "--reward_model", ava_dir, "--reward", "dense", "--kappa", "0.5",
              "--num_prompts", "32", "--output_dir", str(out), "--learning_rate", "1e-3", "--batch_size", "16",
              "--mini_batch_size", "8", "--total_episodes", "32", "--max_new_tokens", "6", "--disable_tqdm", "true"])
    result = last_json_line(capsys.readouterr().out)
    assert result["output_dir"] == str(out) and math.isfinite(result["gold/reward"])
    assert len((out / "ppo_log.jsonl").read_text().splitlines()) == 2
    assert "reward_model" in (out / "README.md").read_text()
    trained = AutoModelForCausalLM.from_pretrained(str(out))
    initial = AutoModelForCausalLM.from_pretrained(ava_dir)
    assert any(not torch.equal(a, b) for a, b in zip(trained.parameters(), initial.parameters()))


def test_cli_rejects_what_it_cannot_honour(ava_dir, tokenizer, tmp_path):
    with pytest.raises(ConfigError, match="sigma"):
        ppo_main(["--policy", ava_dir, "--reward_model", "gold", "--kappa", "1", "--output_dir", str(tmp_path)])
    with pytest.raises(ConfigError, match="output_dir"):
        ppo_main(["--policy", ava_dir, "--reward_model", "gold"])
    fresh_q = str(tmp_path / "fresh-q")  # its policy is softmax(beta * Q) from a separate head, not the LM head
    TQRModel(tiny_backbone("gpt2", tokenizer), TQRConfig(pretrained_q=False)).save_pretrained(fresh_q)
    tokenizer.save_pretrained(fresh_q)
    with pytest.raises(ConfigError, match="fresh Q head"):
        ppo_main(["--policy", fresh_q, "--reward_model", "gold", "--output_dir", str(tmp_path / "out")])


@pytest.fixture(scope="module")
def bt_dir(tokenizer, tmp_path_factory):
    directory = tmp_path_factory.mktemp("bt")
    tiny_backbone("gpt2", tokenizer, seed=6).save_pretrained(directory)
    torch.manual_seed(6)
    AutoModelForSequenceClassification.from_pretrained(str(directory), num_labels=1).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def test_cli_ensembles_and_kappa_reach_the_reward_source(ava_dir, bt_dir, tokenizer, tmp_path, capsys):
    parser = dataclass_parser((PPOArguments, PPOConfig), prog="avalign ppo")

    def rewards(*flags):
        args, _ = parse_dataclasses(parser, ["--policy", ava_dir, "--output_dir", str(tmp_path), *flags])
        return reward_sources(args, tokenizer, "cpu")[0]

    source = rewards("--reward_model", ava_dir, bt_dir, "--ensemble", "lcb", "--ensemble_k", "2", "--kappa", "0.5",
                     "--reward", "last")
    ensemble = source.reward_model
    assert isinstance(ensemble, EnsembleRewardModel) and (ensemble.ensemble, ensemble.k) == ("lcb", 2.0)
    assert [type(m) for m in ensemble.members] == [AVARewardModel, BTRewardModel]
    assert ensemble.members[0].kappa == 0.5 and source.reward == "last"
    assert rewards("--reward_model", ava_dir, "--kappa", "0.5").reward_model.kappa == 0.5
    config = tmp_path / "ppo.yaml"
    config.write_text("reward_model: gold\n")  # one path in YAML is a string, still the gold reward
    assert isinstance(rewards("--config", str(config)), GoldRewards)
    for flags, message in [
        (["--reward_model", ava_dir, bt_dir, "--reward", "last"], "2 reward models need an ensemble"),
        (["--reward_model", ava_dir, bt_dir, "--ensemble", "worst"], "an ensemble gives one score per sequence"),
        (["--reward_model", bt_dir, "--kappa", "0.5", "--reward", "last"], "kappa 0.5 needs an AVA reward model"),
        (["--reward_model", "gold", "--ensemble", "mean"], "--ensemble combines reward models"),
    ]:
        with pytest.raises(ConfigError, match=message):
            rewards(*flags)
    # through `avalign`: one line and exit code 2
    assert cli_main(["ppo", "--policy", ava_dir, "--reward_model", ava_dir, bt_dir, "--ensemble", "mean",
                     "--output_dir", str(tmp_path)]) == 2
    last_line = capsys.readouterr().err.splitlines()[-1]  # after the loading progress bars
    assert last_line.startswith("avalign ppo: error: an ensemble gives one score per sequence")


class NaNRewards:
    def token_rewards(self, prompt_ids, response_ids):
        return [torch.full((len(r),), float("nan")) for r in response_ids]


def test_nan_rewards_stop_training_with_the_step(synthetic, tokenizer):
    trainer = PPOTrainer(tiny_backbone("gpt2", tokenizer), tokenizer, list(synthetic[0]["prompt"]), NaNRewards(),
                         small_config())
    with pytest.raises(TrainingDivergedError, match="step 1"):
        trainer.train()


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="mini_batch_size"):
        PPOConfig(batch_size=16, mini_batch_size=5)
    with pytest.raises(ConfigError, match="temperature"):
        PPOConfig(temperature=0)


class EmptyIsBest:
    """A reward model that scores an empty response (EOS alone) 5 and everything else 0: the HH collapse in
    miniature, an extrapolation no reward model trained on non-empty responses can be trusted with."""

    def __init__(self, eos_token_id):
        self.eos = eos_token_id

    def token_rewards(self, prompt_ids, response_ids):
        return [torch.tensor([5.0 if r == [self.eos] else 0.0] + [0.0] * (len(r) - 1)) for r in response_ids]


def test_min_new_tokens_keeps_ppo_off_the_empty_response_and_its_log_probs_are_generates(synthetic, tokenizer):
    prompts = [row["prompt"] for row in synthetic[2].demonstration_rows(64, seed=1)]
    runs = {}
    for min_new_tokens in (0, 1):
        config = small_config(batch_size=32, ppo_epochs=4, learning_rate=3e-3, max_new_tokens=4, kl_coef=0.0,
                              total_episodes=32 * 8, min_new_tokens=min_new_tokens)
        policy = tiny_backbone("gpt2", tokenizer, seed=0)
        trainer = PPOTrainer(policy, tokenizer, prompts, EmptyIsBest(tokenizer.eos_token_id), config)
        runs[min_new_tokens] = trainer.train()
        assert all(math.isfinite(log["objective/entropy"]) for log in runs[min_new_tokens])
    first, last = runs[0][0]["response/empty"], runs[0][-1]["response/empty"]
    assert last > max(0.25, 2 * first)  # without the constraint PPO finds the empty response
    assert all(log["response/empty"] == 0 for log in runs[1])
    # the rollout's log-probs are those of the distribution generate samples from under min_new_tokens
    queries = [tokenizer(p)["input_ids"] for p in prompts[:4]]
    input_ids, attention = pad_left(queries, tokenizer.pad_token_id), pad_left([[1] * len(q) for q in queries], 0)
    torch.manual_seed(0)
    out = trainer.model.policy.generate(input_ids=input_ids, attention_mask=attention, generation_config=GenerationConfig(
        do_sample=True, top_k=0, max_new_tokens=3, min_new_tokens=2, output_scores=True, return_dict_in_generate=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id))
    full_mask = torch.cat([attention, torch.ones(4, 3, dtype=torch.long)], 1)
    with torch.no_grad():
        logits = trainer.model.policy(input_ids=out.sequences, attention_mask=full_mask,
                                      position_ids=position_ids(full_mask)).logits[:, input_ids.shape[1] - 1:-1]
    masked = mask_early_eos(logits, 2, tokenizer.eos_token_id)
    expected = torch.stack(out.scores, 1).log_softmax(-1)
    finite = torch.isfinite(expected)
    assert torch.equal(finite, masked > torch.finfo(masked.dtype).min)  # EOS impossible exactly where generate says
    assert torch.allclose(masked.log_softmax(-1)[finite], expected[finite], atol=1e-5)


def test_the_saved_policy_samples_without_empty_responses(synthetic, tokenizer, tmp_path):
    prompts = [row["prompt"] for row in synthetic[2].demonstration_rows(8, seed=1)]
    trainer = PPOTrainer(tiny_backbone("gpt2", tokenizer, seed=0), tokenizer, prompts, EmptyIsBest(tokenizer.eos_token_id),
                         small_config(batch_size=4, mini_batch_size=2, total_episodes=4, min_new_tokens=2))
    trainer.train()
    trainer.save(str(tmp_path))
    assert AutoModelForCausalLM.from_pretrained(str(tmp_path)).generation_config.min_new_tokens == 2
