"""Per-token readings of reward models against independent references: a Bradley-Terry model's prefix differences
against scoring every prefix as its own sequence, DPO's implicit reward against per-prefix log-probabilities, the
stories260K gold task against its table, the oracle probe against a least-squares fit, and the CER target switch
against the trainer's loss."""

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification

from avalign import AVAConfig, AVARewardModel, TQRModel
from avalign.evaluation.dense import dense_metrics, spearman
from avalign.reward_model import BTRewardModel, DPOImplicitRewardModel
from avalign.trainers import AVATrainer

from conftest import SHARED_DATA, tiny_backbone


@pytest.fixture(scope="module")
def features(synthetic, tokenizer):
    rows = synthetic[1].select(range(5))
    return [{"prompt_ids": tokenizer(p)["input_ids"],
             "completion_ids": tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]}
            for p, c in zip(rows["prompt"], rows["chosen"])]


def test_bt_prefix_differences_score_every_prefix_as_its_own_sequence(tokenizer, features, tmp_path):
    tiny_backbone("gpt2", tokenizer, seed=2).save_pretrained(tmp_path)
    torch.manual_seed(0)
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=1)
    torch.nn.init.normal_(classifier.score.weight)
    model = BTRewardModel(classifier, tokenizer)
    rows = model.prefix_rewards(features)  # one padded batch
    for row, feature in zip(rows, features):
        sequence = feature["prompt_ids"] + feature["completion_ids"]
        start = len(feature["prompt_ids"])
        with torch.no_grad():  # the classifier's own score of each prefix, scored alone
            scores = [classifier(input_ids=torch.tensor([sequence[:end]])).logits[0, 0].item()
                      for end in range(start, len(sequence) + 1)]
        assert row.tolist() == pytest.approx(np.diff(scores).tolist(), abs=1e-5)
        assert row.sum().item() == pytest.approx(scores[-1] - scores[0], abs=1e-5)


def test_dpo_implicit_reward_is_beta_times_the_log_ratio_per_token(tokenizer, features):
    policy, reference = tiny_backbone("gpt2", tokenizer, seed=3), tiny_backbone("gpt2", tokenizer, seed=4)
    model = DPOImplicitRewardModel(policy, reference, tokenizer, beta=0.3)
    rows = model.token_readings(features)["implicit"]
    for row, feature in zip(rows, features):
        sequence = feature["prompt_ids"] + feature["completion_ids"]
        expected = []
        for position in range(len(feature["prompt_ids"]), len(sequence)):
            prefix = torch.tensor([sequence[:position]])
            with torch.no_grad():
                log_p = policy(input_ids=prefix).logits[0, -1].log_softmax(-1)[sequence[position]]
                log_ref = reference(input_ids=prefix).logits[0, -1].log_softmax(-1)[sequence[position]]
            expected.append(0.3 * (log_p - log_ref).item())
        assert row.tolist() == pytest.approx(expected, abs=1e-5)


def test_dense_metrics_drop_eos_and_match_numpy():
    gold = Dataset.from_dict({"chosen_gold_rewards": [[1.0, -2.0, 0.5]], "rejected_gold_rewards": [[0.0, 3.0]]})
    readings = {"r": [np.array([2.0, -1.0, 0.0, 9.9]), np.array([0.5, 4.0, -9.9])]}  # last entries: EOS
    metrics = dense_metrics(readings, gold)["r"]
    learned, target = [2.0, -1.0, 0.0, 0.5, 4.0], [1.0, -2.0, 0.5, 0.0, 3.0]
    assert metrics["tokens"] == 5
    assert metrics["pearson"] == pytest.approx(np.corrcoef(learned, target)[0, 1])
    ranks = lambda v: np.argsort(np.argsort(v))
    assert spearman(learned, target) == pytest.approx(np.corrcoef(ranks(learned), ranks(target))[0, 1])


def test_cer_target_sum_ranks_the_weighted_returns(tokenizer, synthetic, tmp_path):
    """The trainer's CER term, recomputed from the model outputs: log-sigmoid of the difference of sum_t w_t mu_t
    (cer_target sum) or of the last position's w_t mu_t (last)."""
    torch.manual_seed(0)
    model = TQRModel(tiny_backbone("gpt2", tokenizer))
    torch.nn.init.normal_(model.reward_head.weight, std=0.5)
    for target in ("sum", "last"):
        args = AVAConfig(output_dir=str(tmp_path), cer_target=target, use_cpu=True, report_to="none",
                         max_length=64)
        assert args.scoring == target  # the default score follows the CER target
        trainer = AVATrainer(model, args=args, train_dataset=synthetic[0].select(range(4)), processing_class=tokenizer)
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
        batch.pop("is_preference")
        with torch.no_grad():
            out = model(**batch)
        weighted = torch.where(out.mask, out.reward_weights * out.reward_mean, torch.zeros_like(out.reward_mean))
        if target == "sum":
            returns = weighted.sum(-1)
        else:
            last = out.mask.long().cumsum(-1).argmax(-1)  # the last valid position
            returns = weighted.gather(-1, last[:, None])[:, 0]
        expected = torch.nn.functional.logsigmoid(returns[:4] - returns[4:]).mean()
        objective, _ = trainer._objective(out, is_pair=True)
        assert objective.terms["cer"].item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.skipif(not (SHARED_DATA / "tinyllamas-stories260K").exists(), reason="../shared/data is absent")
def test_stories_gold_rows_follow_the_table_on_the_tokens_training_sees(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from avalign.convert import convert_llama2c
    from avalign.data.stories_gold import StoriesGoldConfig, StoriesGoldTask, stories_gold_rows
    from avalign.data.tokenize import tokenize_dataset

    folder = SHARED_DATA / "tinyllamas-stories260K"
    convert_llama2c(str(folder / "stories260K.bin"), str(folder / "tok512.bin"), str(tmp_path))
    model, tokenizer = AutoModelForCausalLM.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    task = StoriesGoldTask(len(tokenizer), StoriesGoldConfig(seed=5, max_new_tokens=8))
    assert 0.05 < (task.base_reward != 0).mean() < 0.3 and (task.interaction != 0).mean() < 0.05
    rows, report = stories_gold_rows(model, tokenizer, task, 12, seed=1)
    assert report["pairs"] == len(rows) and report["pairs"] + report["empty_response"] + \
        report["identical_responses"] + report["empty_prompt"] == 12
    again, _ = stories_gold_rows(model, tokenizer, task, 12, seed=1)
    assert again == rows  # a deterministic function of the model, the instance and the row seed
    tokenized, _ = tokenize_dataset(Dataset.from_list(rows), tokenizer, max_length=None)
    for row, ids in zip(rows, tokenized):
        for key in ("chosen", "rejected"):
            previous = ids["prompt_ids"][-1]
            expected = []
            for token in ids[f"{key}_ids"][:-1]:  # EOS has no gold reward
                expected.append(task.base_reward[token] + task.interaction[previous, token])
                previous = token
            assert row[f"{key}_gold_rewards"] == pytest.approx(expected)


def test_td_reference_takes_td_errors_of_the_change_in_q(tokenizer, synthetic, tmp_path):
    """With td_reference the TD error is (Q - Q_ref)_t - gamma (Q - Q_ref)_t+1, Q_ref from the model as it was when
    the trainer was built: zero before training, and recomputed by hand after the model's LM head moves."""
    torch.manual_seed(0)
    model = TQRModel(tiny_backbone("gpt2", tokenizer))
    args = AVAConfig(output_dir=str(tmp_path), td_reference=True, gamma=0.9, use_cpu=True, report_to="none",
                     max_length=64)
    trainer = AVATrainer(model, args=args, train_dataset=synthetic[0].select(range(4)), processing_class=tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    batch.pop("is_preference")
    with torch.no_grad():
        assert trainer.compute_loss(model, {**batch, "is_preference": True}) is not None
        assert trainer._metrics["train"]["objective/td_error"][-1] == 0.0  # Q = Q_ref before training
        model.backbone.lm_head.weight.mul_(1.7)  # tied to the embedding: moves the backbone too
        out, ref = model(**batch), trainer.ref_model(**batch)
    change = (out.q_values - ref.q_values)[:4]  # chosen rows
    mask = out.mask[:4]
    per_row = []
    for row in range(4):
        positions = mask[row].nonzero()[:, 0].tolist()
        deltas = [change[row, i] - 0.9 * change[row, i + 1] for i in positions[:-1]]
        per_row.append(torch.stack(deltas).abs().mean())
    objective, _ = trainer._objective(out, True, ref.q_values)
    assert objective.terms["td_error"].item() == pytest.approx(torch.stack(per_row).mean().item(), rel=1e-5)
    assert objective.terms["td_error"].item() > 0
