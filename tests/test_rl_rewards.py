"""Token rewards for RL against independent references: AVARewardModel.score (text in, its own tokenisation and
batching) for AVA models, BTRewardModel.sequence_scores for Bradley-Terry models, the task's gold table for gold
rewards; and AVARewardFunction inside TRL's GRPOTrainer and RLOOTrainer."""

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification

from avalign import AVARewardModel, TQRModel
from avalign.data.synthetic import SyntheticTask, SyntheticTaskConfig
from avalign.errors import ConfigError
from avalign.reward_model import BTRewardModel, EnsembleRewardModel
from avalign.rl.rewards import AVARewardFunction, GoldRewards, RewardModelFunction, RewardModelRewards, place_rewards

from conftest import tiny_backbone


@pytest.fixture(scope="module")
def reward_model(tokenizer):
    """A TQR model whose reward head is random, so means, sigmas and weights all vary by token."""
    torch.manual_seed(1)
    model = TQRModel(tiny_backbone("gpt2", tokenizer, seed=1))
    torch.nn.init.normal_(model.reward_head.weight)
    torch.nn.init.normal_(model.reward_head.bias)
    return AVARewardModel(model, tokenizer, batch_size=3)  # batches of 3: rows cross batch boundaries


@pytest.fixture(scope="module")
def episodes(synthetic, tokenizer):
    """Prompt ids and policy-style responses: finished ones end with EOS, truncated ones (odd rows) do not."""
    rows = synthetic[1].select(range(6))
    prompt_ids = [tokenizer(p)["input_ids"] for p in rows["prompt"]]
    responses = []
    for i, text in enumerate(rows["chosen"]):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        responses.append(ids if i % 2 else ids + [tokenizer.eos_token_id])
    texts = [tokenizer.decode([t for t in r if t != tokenizer.eos_token_id]) for r in responses]
    return rows["prompt"], prompt_ids, responses, texts


def test_dense_rewards_sum_to_the_sum_score_and_sit_on_their_tokens(reward_model, tokenizer, episodes):
    prompts, prompt_ids, responses, texts = episodes
    reference = reward_model.score(prompts, texts)
    dense = RewardModelRewards(reward_model, tokenizer, reward="dense").token_rewards(prompt_ids, responses)
    for rewards, response, ref in zip(dense, responses, reference):
        assert len(rewards) == len(response)
        assert float(rewards.sum()) == pytest.approx(ref.sum, abs=1e-5)
        weighted = [w * m for w, m in zip(ref.reward_weights, ref.reward_mean)]
        if response[-1] == tokenizer.eos_token_id:
            expected = weighted
        else:  # the reward model's appended EOS gives its reward to the last sampled token
            expected = weighted[:-2] + [weighted[-2] + weighted[-1]]
        assert rewards.tolist() == pytest.approx(expected, abs=1e-5)


def test_last_and_sum_put_everything_on_the_final_token(reward_model, tokenizer, episodes):
    prompts, prompt_ids, responses, texts = episodes
    reference = reward_model.score(prompts, texts)
    for reward in ("last", "sum"):
        rows = RewardModelRewards(reward_model, tokenizer, reward=reward).token_rewards(prompt_ids, responses)
        for rewards, ref in zip(rows, reference):
            assert torch.count_nonzero(rewards[:-1]) == 0
            assert float(rewards[-1]) == pytest.approx(getattr(ref, reward), abs=1e-5)


def test_kappa_lowers_each_token_reward_by_kappa_sigma(reward_model, tokenizer, episodes):
    prompts, prompt_ids, responses, texts = episodes
    reference = reward_model.score(prompts, texts)
    kappa = 0.5
    pessimistic = AVARewardModel(reward_model.model, tokenizer, batch_size=3, kappa=kappa)
    mean = RewardModelRewards(reward_model, tokenizer, reward="dense").token_rewards(prompt_ids, responses)
    low = RewardModelRewards(pessimistic, tokenizer, reward="dense").token_rewards(prompt_ids, responses)
    for m, lo, response, ref in zip(mean, low, responses, reference):
        sigma = ref.reward_std if response[-1] == tokenizer.eos_token_id else (
            ref.reward_std[:-2] + [ref.reward_std[-2] + ref.reward_std[-1]])
        assert (m - lo).tolist() == pytest.approx([kappa * s for s in sigma], abs=1e-5)
        assert min(sigma) > 0


def test_bradley_terry_rewards_are_its_score_at_the_end_or_its_prefix_differences(tokenizer, episodes):
    prompts, prompt_ids, responses, texts = episodes
    config = tiny_backbone("gpt2", tokenizer, seed=2).config
    config.num_labels = 1
    torch.manual_seed(2)
    bt = BTRewardModel(AutoModelForSequenceClassification.from_config(config), tokenizer)
    # dense (RED): score of each response prefix less the previous one's, computed here one prefix at a time
    dense = RewardModelRewards(bt, tokenizer, reward="dense").token_rewards(prompt_ids, responses)
    summed = RewardModelRewards(bt, tokenizer, reward="sum").token_rewards(prompt_ids, responses)
    for rewards, total, prompt, response in zip(dense, summed, prompt_ids, responses):
        full = response if response[-1] == tokenizer.eos_token_id else response + [tokenizer.eos_token_id]
        with torch.no_grad():
            prefix_scores = [float(bt.model(input_ids=torch.tensor([prompt + full[:t]])).logits[0, 0])
                             for t in range(len(full) + 1)]
        expected = [b - a for a, b in zip(prefix_scores, prefix_scores[1:])]
        if len(full) > len(response):  # the appended EOS's difference goes to the last sampled token
            expected = expected[:-2] + [expected[-2] + expected[-1]]
        assert rewards.tolist() == pytest.approx(expected, abs=1e-4)
        assert float(total[-1]) == pytest.approx(prefix_scores[-1] - prefix_scores[0], abs=1e-4)
    with pytest.raises(ConfigError, match="kappa 1.0 beside a loaded reward model"):  # it would not be applied
        RewardModelRewards(bt, tokenizer, reward="last", kappa=1.0)
    rows = RewardModelRewards(bt, tokenizer, reward="last").token_rewards(prompt_ids, responses)
    expected = bt.sequence_scores(prompts, texts)["last"]
    assert [float(r[-1]) for r in rows] == pytest.approx(expected, abs=1e-5)
    assert all(torch.count_nonzero(r[:-1]) == 0 for r in rows)


def test_dpo_implicit_rewards_per_token_are_beta_times_the_log_ratio(tokenizer, episodes):
    from avalign.reward_model import DPOImplicitRewardModel

    prompts, prompt_ids, responses, texts = episodes
    policy, reference = tiny_backbone("gpt2", tokenizer, seed=5), tiny_backbone("gpt2", tokenizer, seed=6)
    rows = RewardModelRewards(DPOImplicitRewardModel(policy, reference, tokenizer, beta=0.3), tokenizer,
                              reward="dense").token_rewards(prompt_ids, responses)
    for rewards, prompt, response in zip(rows, prompt_ids, responses):
        full = response if response[-1] == tokenizer.eos_token_id else response + [tokenizer.eos_token_id]
        ids = torch.tensor([prompt + full])
        with torch.no_grad():
            ratio = [float(m(input_ids=ids).logits[0, len(prompt) - 1 + t].log_softmax(-1)[full[t]]) for t in
                     range(len(full)) for m in (policy, reference)]
        expected = [0.3 * (ratio[2 * t] - ratio[2 * t + 1]) for t in range(len(full))]
        if len(full) > len(response):
            expected = expected[:-2] + [expected[-2] + expected[-1]]
        assert rewards.tolist() == pytest.approx(expected, abs=1e-4)


def test_an_ensemble_puts_the_aggregate_of_its_members_on_the_last_token(tokenizer, episodes):
    prompts, prompt_ids, responses, texts = episodes
    members = []
    for seed in (21, 22, 23):
        config = tiny_backbone("gpt2", tokenizer, seed=seed).config
        config.num_labels = 1
        torch.manual_seed(seed)
        members.append(BTRewardModel(AutoModelForSequenceClassification.from_config(config), tokenizer, batch_size=4))
    own = torch.tensor([m.sequence_scores(prompts, texts)["last"] for m in members])
    expected = (own.mean(0) - 2.0 * own.var(0, unbiased=False).sqrt()).tolist()  # lcb, k = 2
    ensemble = EnsembleRewardModel(members, "lcb", 2.0)
    for reward in ("dense", "sum"):
        with pytest.raises(ConfigError, match=f"an ensemble gives one score per sequence.*got '{reward}'"):
            RewardModelRewards(ensemble, tokenizer, reward=reward)
    # truncated responses (no EOS) too: the score of the appended EOS lands on the last sampled token
    rows = RewardModelRewards(ensemble, tokenizer, reward="last").token_rewards(prompt_ids, responses)
    assert [len(r) for r in rows] == [len(r) for r in responses]
    assert [float(r[-1]) for r in rows] == pytest.approx(expected, abs=1e-5)
    assert all(torch.count_nonzero(r[:-1]) == 0 for r in rows)
    # as a GRPO/RLOO reward function: the same scores of the texts, logged under the ensemble's name
    function = RewardModelFunction(ensemble)
    assert function.__name__ == "ensemble_lcb"
    assert function(prompts=list(prompts), completions=texts) == pytest.approx(expected, abs=1e-5)


def test_reward_model_and_policy_must_share_a_tokenizer(reward_model):
    other = SyntheticTask(SyntheticTaskConfig(seed=7)).tokenizer()
    with pytest.raises(ConfigError, match="tokenizer"):
        RewardModelRewards(reward_model, other)
    with pytest.raises(ConfigError, match="unknown reward"):
        place_rewards(torch.ones(3), "mean")


def test_gold_rewards_follow_the_task_table(synthetic, tokenizer):
    task = synthetic[2]
    rows = synthetic[1].select(range(4))
    prompt_ids = [tokenizer(p)["input_ids"] for p in rows["prompt"]]
    responses = [tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for c in rows["chosen"]]
    dense = GoldRewards(task, tokenizer).token_rewards(prompt_ids, responses)
    summed = GoldRewards(task, tokenizer, reward="sum").token_rewards(prompt_ids, responses)
    for d, s, gold in zip(dense, summed, rows["chosen_gold_rewards"]):  # gold per word, from the data generator
        assert d.tolist() == pytest.approx(gold + [0.0])
        assert s.tolist() == pytest.approx([0.0] * len(gold) + [sum(gold)])
    # A special token mid-response is off task: the table's minimum, and the next word still follows the last word.
    words = responses[0][:2]
    off = GoldRewards(task, tokenizer).token_rewards(prompt_ids[:1], [[words[0], tokenizer.unk_token_id, words[1]]])[0]
    worst = min(task.base_reward[w] + task.interaction[p, w] for p in range(len(task.words)) for w in range(len(task.words)))
    assert off.tolist() == pytest.approx([rows["chosen_gold_rewards"][0][0], worst, rows["chosen_gold_rewards"][0][1]])
    with pytest.raises(ConfigError, match="word-level tokenizer"):
        GoldRewards(task, SyntheticTask(SyntheticTaskConfig(seed=7)).tokenizer())


class RecordingRewardFunction(AVARewardFunction):
    """Keeps what TRL passed and what the reward function returned."""

    calls: list

    def __call__(self, prompts, completions, **kwargs):
        rewards = super().__call__(prompts, completions, **kwargs)
        self.calls.append((list(prompts), list(completions), rewards))
        return rewards


@pytest.mark.parametrize("trainer_name", ["grpo", "rloo"])
def test_reward_function_inside_trl_equals_independent_scores(trainer_name, reward_model, tokenizer, synthetic,
                                                              tmp_path):
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    config_class, trainer_class = {"grpo": (GRPOConfig, GRPOTrainer), "rloo": (RLOOConfig, RLOOTrainer)}[trainer_name]
    function = RecordingRewardFunction(AVARewardModel(reward_model.model, tokenizer, batch_size=3, kappa=0.5),
                                       scoring="sum")
    function.calls = []
    args = config_class(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4, max_completion_length=6,
        max_steps=2, learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
        bf16=False, disable_tqdm=True, use_vllm=False, seed=0,
    )
    prompts = Dataset.from_dict({"prompt": synthetic[0]["prompt"][:8]})
    policy_dir = str(tmp_path / "policy")  # a path: RLOO builds its reference model from it
    tiny_backbone("gpt2", tokenizer, seed=3).save_pretrained(policy_dir)
    trainer = trainer_class(model=policy_dir, reward_funcs=[function], args=args, train_dataset=prompts,
                            processing_class=tokenizer)
    trainer.train()
    assert len(function.calls) == 2
    logged = [h for h in trainer.state.log_history if "rewards/ava_sum_kappa0.5/mean" in h]
    assert len(logged) == 2
    compared = 0
    for prompts_seen, completions, rewards in function.calls:
        kept = [i for i, c in enumerate(completions) if c.strip()]  # score() refuses empty responses
        reference = reward_model.score([prompts_seen[i] for i in kept], [completions[i] for i in kept])
        expected = [ref.sum - 0.5 * sum(ref.reward_std) for ref in reference]
        assert [rewards[i] for i in kept] == pytest.approx(expected, abs=1e-4)
        compared += len(kept)
    assert compared >= 4
