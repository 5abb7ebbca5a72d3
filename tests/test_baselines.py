"""TRL baselines through `avalign train --objective bt|dpo|sft`, and Bradley-Terry scoring."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification
from trl import DPOConfig

from avalign.cli import main
from avalign.reward_model import AVARewardModel, BTRewardModel, load_reward_model
from avalign.trainers import AVAConfig
from avalign.trainers.baselines import trl_config

from conftest import last_json_line


def test_trl_config_carries_the_shared_training_arguments(tmp_path):
    args = AVAConfig(output_dir=str(tmp_path), objective="dpo", learning_rate=3e-4, max_steps=7, seed=11,
                     per_device_train_batch_size=5, warmup_steps=2, max_length=99, dpo_beta=0.3, use_cpu=True)
    config = trl_config(args)
    assert isinstance(config, DPOConfig)
    assert (config.learning_rate, config.max_steps, config.seed, config.per_device_train_batch_size,
            config.warmup_steps, config.max_length, config.beta) == (3e-4, 7, 11, 5, 2, 99, 0.3)


def test_trl_objectives_are_refused_by_the_ava_trainer(tmp_path, tokenizer):
    from avalign.errors import ConfigError
    from avalign.trainers import AVATrainer
    from conftest import tiny_backbone
    from avalign.modeling import TQRModel

    with pytest.raises(ConfigError, match="TRL baseline"):
        AVATrainer(TQRModel(tiny_backbone("gpt2", tokenizer)), AVAConfig(output_dir=str(tmp_path), objective="bt"),
                   processing_class=tokenizer)


@pytest.mark.parametrize("objective", ["bt", "dpo", "sft"])
def test_train_baseline_from_the_cli(objective, tmp_path, capsys):
    out = tmp_path / objective
    assert main(["train", "--objective", objective, "--output_dir", str(out), "--max_steps", "3",
                 "--synthetic_train_size", "48", "--synthetic_eval_size", "24", "--eval_strategy", "no",
                 "--disable_tqdm", "true", "--use_cpu", "true"]) == 0
    metrics = last_json_line(capsys.readouterr().out)
    assert metrics["train_loss"] == metrics["train_loss"]  # finite, not NaN
    assert (out / "config.json").exists()
    if objective == "bt":
        assert metrics["eval_n"] == 24
        assert main(["evaluate", "--model_name_or_path", str(out), "--synthetic_eval_size", "24"]) == 0
        assert last_json_line(capsys.readouterr().out)["accuracy"] == pytest.approx(metrics["eval_accuracy"])


def test_bt_scores_are_the_classifier_output_at_eos(tmp_path, synthetic, tokenizer):
    """Independent reference: build prompt + response + EOS by hand and run the classifier on each row alone."""
    from conftest import tiny_backbone

    tiny_backbone("gpt2", tokenizer).save_pretrained(tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    scorer = BTRewardModel(model, tokenizer, batch_size=3)
    _, pairs, _ = synthetic
    prompts, responses = pairs["prompt"][:5], pairs["chosen"][:5]
    scores = scorer.sequence_scores(prompts, responses)["last"]
    for prompt, response, score in zip(prompts, responses, scores):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] + tokenizer(
            response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        with torch.no_grad():
            expected = model(input_ids=torch.tensor([ids])).logits[0, 0].item()
        assert score == pytest.approx(expected, abs=1e-5)
    chosen, rejected = scorer.pair_scores(pairs.select(range(5)))
    assert chosen["last"] == pytest.approx(scores, abs=1e-5)


def test_load_reward_model_picks_the_class(tmp_path, capsys):
    for objective in ("bt", "ava-p"):
        assert main(["train", "--objective", objective, "--output_dir", str(tmp_path / objective), "--max_steps", "1",
                     "--synthetic_train_size", "16", "--synthetic_eval_size", "8", "--eval_strategy", "no",
                     "--disable_tqdm", "true", "--use_cpu", "true"]) == 0
    assert isinstance(load_reward_model(str(tmp_path / "bt")), BTRewardModel)
    assert isinstance(load_reward_model(str(tmp_path / "ava-p")), AVARewardModel)


def test_pairs_given_as_token_ids_score_as_the_same_pairs_given_as_text(tmp_path, synthetic, tokenizer):
    """Callers that tokenised once (the reward-modeling study) get the scores the text path gives."""
    from conftest import tiny_backbone
    from avalign.data.tokenize import tokenize_dataset
    from avalign.modeling import TQRModel

    tiny_backbone("gpt2", tokenizer).save_pretrained(tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=1)
    pairs = synthetic[1].select(range(12)).select_columns(["prompt", "chosen", "rejected"])
    for scorer in (BTRewardModel(model, tokenizer, max_length=12, batch_size=5),
                   AVARewardModel(TQRModel(tiny_backbone("gpt2", tokenizer)), tokenizer, max_length=12, batch_size=5)):
        ids, report = tokenize_dataset(pairs, tokenizer, max_length=12)
        assert report.prompt_truncated + report.response_truncated > 0  # truncation is exercised
        assert scorer.pair_scores(ids) == scorer.pair_scores(pairs)
