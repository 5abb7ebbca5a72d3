"""The CLI end to end on the synthetic task: train, then evaluate prints one JSON object last."""

import pytest
import torch
from safetensors.torch import load_file

from avalign.cli import main

from conftest import last_json_line, tiny_backbone


def test_train_then_evaluate(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--output_dir", str(out), "--max_steps", "4", "--synthetic_train_size", "64",
                 "--synthetic_eval_size", "40", "--disable_tqdm", "true", "--use_cpu", "true"])
    assert code == 0
    trained = last_json_line(capsys.readouterr().out)
    assert trained["eval_n"] == 40 and 0 <= trained["eval_accuracy"] <= 1
    assert -1 <= trained["gold_reward_pearson"] <= 1 and trained["gold_accuracy"] > 0.5
    assert (out / "tqr_config.json").exists() and (out / "config.json").exists()
    card = (out / "README.md").read_text()
    assert "ava-p" in card and "- steps: 4" in card and "`cer_form`" in card

    assert main(["evaluate", "--model_name_or_path", str(out), "--synthetic_eval_size", "40"]) == 0
    evaluated = last_json_line(capsys.readouterr().out)
    assert evaluated["n"] == 40
    assert evaluated["accuracy"] == pytest.approx(trained["eval_accuracy"])
    assert evaluated["gold_reward_pearson"] == pytest.approx(trained["gold_reward_pearson"])


def test_config_file_and_flags(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(f"objective: ava-d\nmax_steps: 2\noutput_dir: {tmp_path / 'd'}\nsynthetic_train_size: 32\n"
                      "synthetic_eval_size: 16\ndisable_tqdm: true\nuse_cpu: true\n")
    assert main(["train", "--config", str(config), "--beta", "0.5"]) == 0
    assert last_json_line(capsys.readouterr().out)["eval_n"] == 16


def test_unknown_command_and_objective(capsys):
    assert main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err
    assert main(["train", "--objective", "ppo"]) == 2
    assert "invalid choice: 'ppo'" in capsys.readouterr().err


FAMILY_FILES = [
    ("hh-rlhf/helpful-base-test.jsonl.gz", "ava-p"),
    ("summarize-from-feedback/batch13.jsonl", "ava-p"),
    ("summarize-from-feedback/cnndm0.jsonl", "ava-p"),
    ("gsm8k/example_model_solutions.jsonl", "ava-p"),
    ("alpaca_eval/gpt4_model_outputs.json", "ava-d"),
    ("gsm8k/train.jsonl", "ava-d"),
    ("self-instruct/seed_tasks.jsonl", "ava-d"),
]


@pytest.mark.parametrize("path,objective", FAMILY_FILES)
def test_every_family_trains_and_evaluates_from_its_file(path, objective, tmp_path, capsys):
    from conftest import SHARED_DATA

    if not SHARED_DATA.exists():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    data = str(SHARED_DATA / path)
    common = ["--dataset_name", data, "--max_rows", "60"]
    code = main(["train", "--objective", objective, *common, "--max_steps", "1", "--tokenizer_vocab_size", "300",
                 "--output_dir", str(tmp_path), "--disable_tqdm", "true", "--max_length", "96", "--use_cpu", "true",
                 "--per_device_train_batch_size", "2"])
    assert code == 0
    trained = last_json_line(capsys.readouterr().out)
    assert trained["train_runtime_s"] > 0
    if objective == "ava-p":
        assert main(["evaluate", "--model_name_or_path", str(tmp_path), *common, "--max_length", "96"]) == 0
        evaluated = last_json_line(capsys.readouterr().out)
        assert evaluated["n"] == trained["eval_n"]
        assert evaluated["accuracy"] == pytest.approx(trained["eval_accuracy"])


def test_project_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    """Any command: a DataError or ConfigError becomes 'avalign <command>: error: ...' and exit code 2."""
    assert main(["evaluate", "--model_name_or_path", str(tmp_path), "--dataset_name", str(tmp_path / "none.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("avalign evaluate: error:") and "Traceback" not in err
    assert main(["train", "--dataset_name", str(tmp_path / "missing.jsonl"), "--output_dir", str(tmp_path)]) == 2
    assert "avalign train: error: file" in capsys.readouterr().err


def test_fresh_heads_on_a_loaded_backbone_follow_the_seed(tmp_path, synthetic, capsys):
    """--model_name_or_path with a plain backbone: the new heads are initialised under --seed, whatever the random
    state before (two runs of the same command used to start from different reward weights). Learning rate 0, so
    the saved heads are the initial ones."""
    tiny_backbone("gpt2", synthetic[2].tokenizer()).save_pretrained(tmp_path / "base")
    synthetic[2].tokenizer().save_pretrained(tmp_path / "base")

    def heads(seed, earlier_state):
        torch.manual_seed(earlier_state)
        out = tmp_path / f"seed{seed}-state{earlier_state}"
        assert main(["train", "--model_name_or_path", str(tmp_path / "base"), "--output_dir", str(out), "--seed",
                     str(seed), "--max_steps", "1", "--learning_rate", "0", "--synthetic_train_size", "16",
                     "--synthetic_eval_size", "8", "--disable_tqdm", "true", "--use_cpu", "true"]) == 0
        capsys.readouterr()
        return load_file(out / "tqr_heads.safetensors")

    same_seed, other_state, other_seed = heads(0, 1), heads(0, 2), heads(1, 1)
    assert same_seed.keys() == other_state.keys() and "reward_weights.query.weight" in same_seed
    assert all(torch.equal(same_seed[k], other_state[k]) for k in same_seed)
    assert not torch.equal(same_seed["reward_weights.query.weight"], other_seed["reward_weights.query.weight"])
