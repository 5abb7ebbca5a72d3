"""AVATrainer end to end on tiny models: parameters move, metrics agree, bad input fails clearly, resume is exact."""

import math
import shutil

import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback

from avalign import AVAConfig, AVARewardModel, AVATrainer, TQRConfig, TQRModel
from avalign.data.collator import collate_sequences
from avalign.errors import ConfigError, DataError, TrainingDivergedError

from conftest import tiny_backbone


def config(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=4, per_device_eval_batch_size=8, learning_rate=1e-2,
        max_steps=3, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, max_length=48,
        use_cpu=True, seed=0,
    )
    values.update(overrides)
    return AVAConfig(**values)


def test_collator_exact_tensors():
    features = [{"prompt_ids": [5, 6], "chosen_ids": [7, 2], "rejected_ids": [8, 9, 2]}, {"prompt_ids": [5], "chosen_ids": [2], "rejected_ids": [9, 2]}]
    batch = collate_sequences(features, ("chosen", "rejected"), pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 2, 0], [5, 2, 0, 0, 0], [5, 6, 8, 9, 2], [5, 9, 2, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch["completion_mask"].tolist() == [[0, 0, 1, 1, 0], [0, 1, 0, 0, 0], [0, 0, 1, 1, 1], [0, 1, 1, 0, 0]]
    assert batch["is_preference"] is True
    seq2seq = collate_sequences(features, ("chosen",), pad_token_id=0, is_encoder_decoder=True, decoder_start_token_id=3)
    assert seq2seq["input_ids"].tolist() == [[5, 6], [5, 0]]
    assert seq2seq["decoder_input_ids"].tolist() == [[3, 7, 2], [3, 2, 0]]
    assert seq2seq["completion_mask"].tolist() == [[0, 1, 1], [0, 1, 0]]
    assert seq2seq["is_preference"] is False


# ava-d on one causal and one encoder-decoder backbone keeps the suite short.
@pytest.mark.parametrize("arch,objective", [("gpt2", "ava-p"), ("llama", "ava-p"), ("bart", "ava-p"), ("t5", "ava-p"),
                                            ("gpt2", "ava-d"), ("bart", "ava-d"), ("gpt2", "preftrans")])
def test_training_changes_every_parameter(arch, objective, tokenizer, synthetic, tmp_path):
    args = config(tmp_path, objective=objective)
    model = TQRModel(tiny_backbone(arch, tokenizer), args.tqr_config())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = AVATrainer(model, args=args, train_dataset=synthetic[0], processing_class=tokenizer)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 3 and all(math.isfinite(h["loss"]) for h in logged)
    unchanged = [n for n, p in model.named_parameters() if p.requires_grad and torch.equal(p, before[n])]
    assert unchanged == []


def test_trainer_and_reward_model_accuracies_agree(tokenizer, synthetic, tmp_path):
    """Trainer.evaluate (gathered predictions, Trainer batching) and AVARewardModel (its own batching) agree."""
    model = TQRModel(tiny_backbone("gpt2", tokenizer))
    trainer = AVATrainer(model, args=config(tmp_path, max_steps=5), train_dataset=synthetic[0], eval_dataset=synthetic[1], processing_class=tokenizer)
    trainer.train()
    metrics = trainer.evaluate()
    independent = AVARewardModel(model, tokenizer, max_length=48).evaluate_pairs(synthetic[1])
    assert metrics["eval_n"] == len(synthetic[1]) == independent["n"]
    assert metrics["eval_accuracy_last"] == pytest.approx(independent["accuracy_last"])
    assert metrics["eval_accuracy_sum"] == pytest.approx(independent["accuracy_sum"])
    assert metrics["eval_accuracy"] == metrics[f"eval_accuracy_{trainer.args.scoring}"]  # the score trained to rank


class StopAt(TrainerCallback):
    """Interrupts training after a given step, as a crash or a pre-emption would."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = state.global_step >= self.step


def test_resume_logs_the_same_losses(tokenizer, synthetic, tmp_path, capsys):
    def run(output_dir, stop_at=None, resume=None):
        model = TQRModel(tiny_backbone("gpt2", tokenizer, seed=3))
        args = config(output_dir, max_steps=6, save_strategy="steps", save_steps=3, learning_rate=5e-3)
        callbacks = [StopAt(stop_at)] if stop_at else None
        trainer = AVATrainer(model, args=args, train_dataset=synthetic[0], processing_class=tokenizer, callbacks=callbacks)
        output = trainer.train(resume_from_checkpoint=resume)
        losses = {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}
        return losses, model.state_dict(), output.training_loss

    full, full_weights, full_train_loss = run(tmp_path / "full")
    first, _, _ = run(tmp_path / "stopped", stop_at=3)
    # A checkpoint whose save was killed before trainer_state.json (written last): resume must skip it.
    shutil.copytree(tmp_path / "stopped" / "checkpoint-3", tmp_path / "stopped" / "checkpoint-4")
    (tmp_path / "stopped" / "checkpoint-4" / "trainer_state.json").unlink()
    capsys.readouterr()
    resumed, resumed_weights, resumed_train_loss = run(tmp_path / "stopped", resume=str(tmp_path / "stopped"))
    assert "skipping" in capsys.readouterr().out
    assert sorted(full) == [1, 2, 3, 4, 5, 6] and sorted(first) == [1, 2, 3]
    assert {**first, **resumed} == full  # bitwise: the same losses, step by step
    assert full_weights.keys() == resumed_weights.keys()
    assert all(torch.equal(full_weights[k], resumed_weights[k]) for k in full_weights)  # and the same weights
    assert resumed_train_loss == pytest.approx(full_train_loss, rel=1e-6)  # the mean over all 6 steps, not 3
    with pytest.raises(ConfigError, match="incomplete"):  # named explicitly: refused, not crashed on
        run(tmp_path / "stopped", resume=str(tmp_path / "stopped" / "checkpoint-4"))


def test_nan_loss_stops_with_the_step(tokenizer, synthetic, tmp_path):
    model = TQRModel(tiny_backbone("gpt2", tokenizer))
    with torch.no_grad():
        model.reward_head.bias[0] = float("nan")
    trainer = AVATrainer(model, args=config(tmp_path), train_dataset=synthetic[0], processing_class=tokenizer)
    with pytest.raises(TrainingDivergedError, match="at step 1"):
        trainer.train()


def test_unknown_objective_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="unknown objective 'dpo-ish'.*ava-p"):
        config(tmp_path, objective="dpo-ish")


def test_missing_columns_list_what_was_expected(tokenizer, tmp_path):
    rows = Dataset.from_list([{"question": "a", "answer": "b"}])
    with pytest.raises(DataError, match="prompt/chosen/rejected.*prompt/completion.*answer.*question"):
        AVATrainer(TQRModel(tiny_backbone("gpt2", tokenizer)), args=config(tmp_path), train_dataset=rows, processing_class=tokenizer)


def test_ava_p_refuses_demonstrations(tokenizer, tmp_path):
    rows = Dataset.from_list([{"prompt": "bab", "completion": " dab"}])
    with pytest.raises(DataError, match="ava-p needs preference rows"):
        AVATrainer(TQRModel(tiny_backbone("gpt2", tokenizer)), args=config(tmp_path), train_dataset=rows, processing_class=tokenizer)


def test_empty_response_is_dropped_and_counted_as_by_the_loader(tokenizer, synthetic, tmp_path, capsys):
    rows = synthetic[0].select(range(3)).to_list()
    rows[2]["rejected"] = "   "
    trainer = AVATrainer(TQRModel(tiny_backbone("gpt2", tokenizer)), args=config(tmp_path),
                         train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    assert trainer.tokenize_reports["train"].rows_in == 2
    assert "3 rows in, 2 out; dropped 1: 1 empty response" in capsys.readouterr().out


def test_tokenizer_without_pad_token_gets_one_with_a_warning(synthetic, tmp_path):
    tokenizer = synthetic[2].tokenizer()
    tokenizer.pad_token = None
    with pytest.warns(UserWarning, match="no pad token"):
        trainer = AVATrainer(TQRModel(tiny_backbone("gpt2", synthetic[2].tokenizer())), args=config(tmp_path, max_steps=1), train_dataset=synthetic[0], processing_class=tokenizer)
    assert tokenizer.pad_token == tokenizer.eos_token
    trainer.train()


def test_too_long_rows_are_counted(tokenizer, synthetic, tmp_path):
    args = config(tmp_path, max_length=12, too_long="drop")
    trainer = AVATrainer(TQRModel(tiny_backbone("gpt2", tokenizer)), args=args, train_dataset=synthetic[0], processing_class=tokenizer)
    report = trainer.tokenize_reports["train"]
    assert report.dropped_too_long > 0
    assert report.rows_out == len(trainer.train_dataset) == len(synthetic[0]) - report.dropped_too_long
    for row in trainer.train_dataset:
        assert len(row["prompt_ids"]) + max(len(row["chosen_ids"]), len(row["rejected_ids"])) <= 12


def test_model_options_that_differ_from_the_config_are_reported(tokenizer, synthetic, tmp_path):
    model = TQRModel(tiny_backbone("gpt2", tokenizer), TQRConfig(alpha=3.0))
    with pytest.warns(UserWarning, match=r"'alpha': \(3.0, 1.0\)"):
        AVATrainer(model, args=config(tmp_path), train_dataset=synthetic[0], processing_class=tokenizer)


def test_preference_transformer_return_is_the_attention_weighted_reward_sum(tokenizer, synthetic):
    """The preftrans score, recomputed per sequence on its valid positions only: sum_t w_t r_t with
    w = column mean of softmax(q k^T / sqrt(d)), as in Kim et al. (2023)."""
    args = AVAConfig(output_dir="unused", objective="preftrans", use_cpu=True)
    assert (args.scoring, args.rescale_reward_weights) == ("sum", False)
    torch.manual_seed(4)
    model = TQRModel(tiny_backbone("gpt2", tokenizer), args.tqr_config())
    torch.nn.init.normal_(model.reward_head.weight)
    rows = synthetic[1].select(range(3))
    scores = AVARewardModel(model, tokenizer).score(rows["prompt"], rows["chosen"])
    for row, scored in zip(rows, scores):
        ids = tokenizer(row["prompt"])["input_ids"]
        response = tokenizer(row["chosen"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        sequence = torch.tensor([ids + response])
        hidden = model.sequence_hidden_states(sequence, torch.ones_like(sequence))[0, len(ids):]  # response tokens
        q, k = model.reward_weights.query(hidden), model.reward_weights.key(hidden)
        weights = torch.softmax(q @ k.T / q.shape[-1] ** 0.5, dim=-1).mean(0)
        expected = (weights * model.reward_head(hidden)[:, 0]).sum()
        assert scored.sum == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)


def test_activation_checkpointing_trains_identically_without_deprecation_warnings(tokenizer, synthetic, tmp_path):
    """--gradient_checkpointing / --activation_checkpointing: the backbone recomputes its activations (checked on),
    through the API transformers keeps (no warning that the model 'only defines gradient_checkpointing_enable'),
    with the same losses and parameters as without."""
    import warnings

    runs = {}
    for checkpointing in (False, True):
        model = TQRModel(tiny_backbone("llama", tokenizer))
        trainer = AVATrainer(model, args=config(tmp_path, activation_checkpointing=checkpointing),
                             train_dataset=synthetic[0], processing_class=tokenizer)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.train()
        assert model.is_activation_checkpointing == checkpointing
        deprecated = [str(w.message) for w in caught if "checkpointing" in str(w.message)]
        assert deprecated == []
        runs[checkpointing] = ([h["loss"] for h in trainer.state.log_history if "loss" in h],
                               {n: p.detach().clone() for n, p in model.named_parameters()})
    assert runs[False][0] == pytest.approx(runs[True][0], rel=1e-5)
    for name, value in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][name], value, rtol=1e-4, atol=1e-6)
