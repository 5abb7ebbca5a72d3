"""`avalign generate`, `bon` and `compare` end to end on tiny saved models and JSONL files."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from avalign.cli import main
from avalign.commands.bon import main as bon_main
from avalign.data import load_dataset
from avalign.modeling import TQRModel
from avalign.errors import ConfigError
from avalign.reward_model import AVARewardModel, BTRewardModel

from conftest import last_json_line, reference_gold_return, tiny_backbone


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("policy")
    TQRModel(tiny_backbone("gpt2", tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_generate_on_synthetic_prompts_records_gold_rewards(policy_dir, synthetic, tmp_path, capsys):
    out = tmp_path / "samples.jsonl"
    assert main(["generate", "--policy", policy_dir, "--prompts", "synthetic", "--synthetic_eval_size", "12",
                 "--max_prompts", "5", "--n", "2", "--max_new_tokens", "6", "--seed", "3", "--output", str(out)]) == 0
    summary = last_json_line(capsys.readouterr().out)
    rows = read_jsonl(out)
    assert summary["rows"] == len(rows) == 10 and summary["prompts"] == 5
    assert [row["sample_index"] for row in rows] == [0, 1] * 5
    assert all(row["policy"] == policy_dir and row["seed"] == 3 for row in rows)
    task = synthetic[2]
    golds = [reference_gold_return(task, row["prompt"], row["completion"]) for row in rows]
    assert [row["gold_reward"] for row in rows] == pytest.approx(golds)
    assert summary["mean_gold_reward"] == pytest.approx(np.mean(golds)) and summary["gold_reward_unknown_words"] == 0


def test_generate_reads_prompt_files_and_dataset_eval_splits(policy_dir, synthetic, tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "bad kid"}, {"prompt": "bad kid"}, {"prompt": "x"}])
    out = tmp_path / "out.jsonl"
    greedy = ["--policy", policy_dir, "--greedy", "--max_new_tokens", "3", "--output", str(out)]
    assert main(["generate", "--prompts", prompts, *greedy]) == 0
    assert [row["prompt"] for row in read_jsonl(out)] == ["bad kid", "x"]  # distinct prompts, in order
    assert "gold_reward" not in read_jsonl(out)[0]  # not the synthetic task's prompts

    pairs = write_jsonl(tmp_path / "pairs.jsonl", synthetic[0].select_columns(["prompt", "chosen", "rejected"]).to_list())
    assert main(["generate", "--prompts", pairs, *greedy]) == 0
    expected = list(dict.fromkeys(load_dataset(pairs).eval["prompt"]))
    assert [row["prompt"] for row in read_jsonl(out)] == expected and expected


@pytest.mark.parametrize("row,field", [({"prompt": 7}, "prompt"), ({"text": "hi"}, "prompt")])
def test_generate_names_the_bad_row(policy_dir, tmp_path, capsys, row, field):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "fine"}, row])
    assert main(["generate", "--policy", policy_dir, "--prompts", prompts, "--output", str(tmp_path / "o.jsonl")]) == 2
    assert f"file {prompts}, row 2, field '{field}'" in capsys.readouterr().err


def test_compare_with_the_gold_judge_reports_unmatched_rows(synthetic, tmp_path, capsys):
    task, pairs = synthetic[2], synthetic[1]
    a = [{"prompt": p, "completion": c, "sample_index": 0} for p, c in zip(pairs["prompt"][:6], pairs["chosen"][:6])]
    b = [{"prompt": p, "completion": c, "sample_index": 0} for p, c in zip(pairs["prompt"][:6], pairs["rejected"][:6])]
    a.append({"prompt": pairs["prompt"][7], "completion": "extra"})  # in A only
    b.insert(0, {"prompt": pairs["prompt"][0], "completion": "other", "sample_index": 1})  # in B only
    code = main(["compare", "--a", write_jsonl(tmp_path / "a.jsonl", a), "--b", write_jsonl(tmp_path / "b.jsonl", b),
                 "--judge", "gold"])
    assert code == 0
    captured = capsys.readouterr()
    result = last_json_line(captured.out)
    outcomes = [np.sign(reference_gold_return(task, x["prompt"], x["completion"])
                        - reference_gold_return(task, x["prompt"], y["completion"])) for x, y in zip(a[:6], b[1:])]
    assert (result["n"], result["unmatched_a"], result["unmatched_b"]) == (6, 1, 1)
    assert result["win_pct"] == pytest.approx(100 * np.mean(np.equal(outcomes, 1)))
    assert result["lose_pct"] == pytest.approx(100 * np.mean(np.equal(outcomes, -1)))
    assert "unmatched rows: 1 in A, 1 in B" in captured.out and "1 rows of" in captured.err


def test_bon_keeps_the_reward_models_best_candidate(policy_dir, tokenizer, synthetic, tmp_path, capsys):
    torch.manual_seed(0)
    reward_model = TQRModel(tiny_backbone("gpt2", tokenizer, seed=1))
    torch.nn.init.normal_(reward_model.reward_head.weight)
    reward_model.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    out = tmp_path / "bon.jsonl"
    assert main(["bon", "--policy", policy_dir, "--reward_model", str(tmp_path / "rm"), "--scoring", "sum", "--n", "3",
                 "--synthetic_eval_size", "8", "--max_prompts", "4", "--max_new_tokens", "5", "--output", str(out)]) == 0
    summary = last_json_line(capsys.readouterr().out)
    rows = read_jsonl(out)
    assert len(rows) == summary["prompts"] == 4 and all(len(row["candidates"]) == 3 for row in rows)
    scorer = AVARewardModel.from_pretrained(str(tmp_path / "rm"))
    for row in rows:
        sums = [r.sum for r in scorer.score([row["prompt"]] * 3, row["candidates"])]
        assert row["candidate_scores"] == pytest.approx(sums, abs=1e-5)
        assert row["proxy_score"] == max(row["candidate_scores"])
        assert row["completion"] == row["candidates"][row["best_index"]]
        assert row["gold_reward"] == pytest.approx(reference_gold_return(synthetic[2], row["prompt"], row["completion"]))
    assert summary["mean_proxy_score"] >= summary["mean_candidate_proxy_score"]


def test_bon_with_an_ensemble_and_kappa_keeps_the_pessimistic_best(policy_dir, tokenizer, synthetic, tmp_path, capsys):
    torch.manual_seed(0)
    ava = TQRModel(tiny_backbone("gpt2", tokenizer, seed=1))
    torch.nn.init.normal_(ava.reward_head.weight)
    ava.save_pretrained(tmp_path / "ava")  # its own scoring: "last"
    bt = tmp_path / "bt"
    tiny_backbone("gpt2", tokenizer, seed=2).save_pretrained(bt)
    torch.manual_seed(2)
    AutoModelForSequenceClassification.from_pretrained(str(bt), num_labels=1).save_pretrained(bt)
    for path in (tmp_path / "ava", bt):
        tokenizer.save_pretrained(path)
    out = tmp_path / "bon.jsonl"
    flags = ["bon", "--policy", policy_dir, "--n", "3", "--synthetic_eval_size", "8", "--max_prompts", "3",
             "--max_new_tokens", "5", "--output", str(out)]
    assert main([*flags, "--reward_model", str(tmp_path / "ava"), str(bt), "--ensemble", "worst",
                 "--kappa", "0.5"]) == 0
    capsys.readouterr()
    rows = read_jsonl(out)
    ava_scorer, bt_scorer = AVARewardModel.from_pretrained(str(tmp_path / "ava")), BTRewardModel.from_pretrained(str(bt))
    for row in rows:
        assert row["scoring"] == "worst" and row["kappa"] == 0.5
        prompts = [row["prompt"]] * 3
        pessimistic = [r.last - 0.5 * r.reward_std[-1] for r in ava_scorer.score(prompts, row["candidates"])]
        bt_scores = bt_scorer.sequence_scores(prompts, row["candidates"])["last"]
        assert row["candidate_scores"] == pytest.approx(np.minimum(pessimistic, bt_scores), abs=1e-5)
        assert row["proxy_score"] == max(row["candidate_scores"])
    # several models need --ensemble, kappa an AVA model, an ensemble two models (one line, exit code 2 in `avalign`)
    for extra, message in [(["--reward_model", str(tmp_path / "ava"), str(bt)], "2 reward models need an ensemble"),
                           (["--reward_model", str(bt), "--kappa", "1"], "kappa 1.0 needs an AVA reward model")]:
        with pytest.raises(ConfigError, match=message):
            bon_main([*flags[1:], *extra])
    assert main([*flags, "--reward_model", str(bt), "--ensemble", "mean"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "avalign bon: error: ensemble 'mean' needs at least two reward models, got 1: ['" + str(bt) + "']")


def test_unknown_words_leave_the_gold_reward_null_and_are_counted(synthetic, capsys):
    from avalign.commands.generate import gold_summary

    task, prompt = synthetic[2], synthetic[1]["prompt"][0]
    known = " ".join(task.words[:3])
    rows = [{"prompt": prompt, "completion": known}, {"prompt": prompt, "completion": f"{known} hello world"}]
    summary = gold_summary(task, rows)
    assert rows[0]["gold_reward"] == pytest.approx(reference_gold_return(task, prompt, known))
    assert rows[1]["gold_reward"] is None and summary["gold_reward_unknown_words"] == 2
    assert summary["mean_gold_reward"] == pytest.approx(rows[0]["gold_reward"])
    assert "2 words in 1 rows are not words of the synthetic task" in capsys.readouterr().err
