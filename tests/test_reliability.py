"""Issue 16: bad input gets one clear line and exit code 2; runs that diverge stop with the step; nothing is dropped,
mixed or leaked silently."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from avalign import AVAConfig
from avalign.cli import main
from avalign.commands import evaluate as evaluate_command
from avalign.commands.common import DataArguments
from avalign.commands.parsing import dataclass_parser, parse_dataclasses
from avalign.errors import ConfigError

TINY = ["--synthetic_train_size", "32", "--synthetic_eval_size", "8", "--max_steps", "2", "--disable_tqdm", "true",
        "--report_to", "none", "--save_strategy", "no", "--use_cpu", "true"]


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("avalign ")
    return lines[0]


@pytest.mark.parametrize(
    "extra, named",
    [
        (["--no_such_flag", "1"], "--no_such_flag"),
        (["--learning_rat", "0.001"], "--learning_rat"),  # no abbreviations
        (["--learning_rate", "abc"], "--learning_rate"),
        (["--learning_rate", "-1"], "learning_rate"),
        (["--per_device_train_batch_size", "0"], "per_device_train_batch_size"),
        (["--per_device_eval_batch_size", "0"], "per_device_eval_batch_size"),
        (["--beta", "-1"], "beta"),
        (["--lam", "-5"], "lam"),
        (["--cer_coef", "-3"], "cer_coef"),
        (["--gamma", "7"], "gamma"),
        (["--gamma", "nan"], "gamma"),
        (["--objective", "dpo", "--dpo_beta", "0"], "dpo_beta"),
        (["--alpha", "0"], "alpha"),
        (["--eval_fraction", "1.5"], "eval_fraction"),
        (["--synthetic_train_size", "0"], "synthetic_train_size"),
        (["--model_name_or_path", "/no/such/model"], "/no/such/model"),
        (["--config"], "--config"),
    ],
)
def test_train_flag_errors_are_one_line(tmp_path, capsys, extra, named):
    assert main(["train", "--output_dir", str(tmp_path / "o"), *TINY, *extra]) == 2
    assert named in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "o").exists()  # refused before any work


@pytest.mark.parametrize(
    "text, named",
    [("learning_rat: 0.001\n", "learning_rat"), ("learning_rate: [0.1\nbeta: 1\n", "YAML"),
     ("- a\n- b\n", "mapping"), ("beta: -2\n", "beta"), (None, "No such file")],
)
def test_config_file_errors_are_one_line(tmp_path, capsys, text, named):
    config = tmp_path / "run.yaml"
    if text is not None:
        config.write_text(text)
    assert main(["train", "--config", str(config), "--output_dir", str(tmp_path / "o"), *TINY]) == 2
    assert named in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("argv", [["--model_name", "m"], ["--model_name_or_path", "m", "--batch_size", "0"],
                                  ["--model_name_or_path", "m", "--max_length", "-3"]])
def test_evaluate_flag_errors_are_one_line(capsys, argv):
    assert main(["evaluate", *argv]) == 2
    one_error_line(capsys.readouterr().err)


def test_help_names_the_subcommand(capsys):
    for command in ("train", "ppo", "evaluate"):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: avalign {command} ")


@pytest.mark.parametrize("option, value", [("beta", -1.0), ("lam", -0.1), ("cer_coef", -3.0), ("gamma", 1.5),
                                           ("learning_rate", -1e-3), ("per_device_train_batch_size", 0)])
def test_ava_config_checks_ranges_for_python_callers(tmp_path, option, value):
    with pytest.raises(ConfigError, match=option):
        AVAConfig(output_dir=str(tmp_path), **{option: value})


# -- property: any argument vector ends in parsed options or one ConfigError line, never another exception ----------
FLAG_VALUES = {
    "--learning_rate": ["1e-3", "-1", "0", "abc", "nan", "inf"],
    "--per_device_train_batch_size": ["1", "0", "-2", "x", "3.5"],
    "--beta": ["0", "1", "-1", "inf", ""], "--lam": ["1", "-5"], "--cer_coef": ["5", "-3"],
    "--gamma": ["0.9", "7", "-0.1"], "--alpha": ["1", "0", "-1"], "--max_length": ["64", "0", "1", "None", "-5"],
    "--objective": ["ava-p", "ava-d", "dpo", "ppo", ""], "--reduction": ["mean", "sum", "max"],
    "--weights_apply_to": ["mean", "mean_std", "std"], "--log_std_min": ["-5", "3"], "--eval_fraction": ["0.1", "1", "-0.5"],
    "--use_cer": ["true", "false", "maybe"], "--q_chunk_size": ["8", "0"], "--max_rows": ["10", "0"],
    "--learning_rat": ["0.1"], "--no_such": ["1"], "--config": ["/no/such.yaml"],
}
argument_vectors = st.lists(
    st.sampled_from(sorted(FLAG_VALUES)).flatmap(lambda flag: st.sampled_from(FLAG_VALUES[flag]).map(lambda v: [flag, v])),
    max_size=5,
).map(lambda pairs: [item for pair in pairs for item in pair])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=argument_vectors | st.lists(st.text(max_size=12), max_size=4))
def test_train_arguments_parse_or_fail_in_one_line(tmp_path, argv):
    parser = dataclass_parser((DataArguments, AVAConfig), prog="avalign train")
    try:
        parse_dataclasses(parser, ["--output_dir", str(tmp_path), *argv])
    except ConfigError as error:
        assert "\n" not in str(error) and str(error)


@settings(max_examples=100, deadline=None)
@given(argv=st.lists(st.sampled_from(["--model_name_or_path", "m", "--batch_size", "0", "8", "--max_length", "-1",
                                      "--split", "all", "nope", "--format", "--scoring", "sum", "--max_rows", "x"]),
                     max_size=6) | st.lists(st.text(max_size=10), max_size=4))
def test_evaluate_arguments_parse_or_fail_in_one_line(argv):
    try:
        evaluate_command.parse_args(argv)
    except ConfigError as error:
        assert "\n" not in str(error) and str(error)
    except SystemExit as exit_:  # --help (text lists may spell it)
        assert exit_.code == 0


@pytest.mark.parametrize("objective", ["dpo", "bt", "sft", "ava-p"])
def test_every_objective_stops_when_training_diverges(tmp_path, capsys, objective):
    code = main(["train", "--objective", objective, "--output_dir", str(tmp_path / "o"), *TINY, "--max_steps", "10",
                 "--synthetic_train_size", "160", "--learning_rate", "1e6"])
    line = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bars
    assert code == 2 and line.startswith("avalign train: error:") and "step" in line, line
    assert not (tmp_path / "o" / "model.safetensors").exists()  # no NaN model saved


# -- point 1: lengths and vocabularies are checked against the model; evaluate scores what it says -------------------
def test_trainer_refuses_lengths_and_vocabularies_the_model_cannot_embed(tmp_path, synthetic, tokenizer):
    from avalign import AVATrainer, TQRModel
    from avalign.backbones import build_backbone

    from conftest import tiny_backbone

    train = synthetic[0]
    with pytest.raises(ConfigError, match="256 positions"):  # tiny_backbone embeds 256 positions
        AVATrainer(TQRModel(tiny_backbone("gpt2", tokenizer)), args=AVAConfig(output_dir=str(tmp_path), max_length=512),
                   train_dataset=train, processing_class=tokenizer)
    small = build_backbone("llama", len(tokenizer) - 3, hidden_size=32, num_layers=1, num_heads=2)
    with pytest.raises(ConfigError, match="embedding matrix"):
        AVATrainer(TQRModel(small), args=AVAConfig(output_dir=str(tmp_path), max_length=64), train_dataset=train,
                   processing_class=tokenizer)


def preference_file(path, rows, offset=0):
    import json

    words = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"]
    with open(path, "w") as handle:
        for i in range(offset, offset + rows):
            prompt = " ".join(words[(i + k) % 8] for k in range(3 + i % 4)) + f" question {i}?"
            handle.write(json.dumps({"prompt": prompt, "chosen": f" good answer {words[i % 8]} " * (1 + i % 3),
                                     "rejected": f" bad {words[(i + 3) % 8]}"}) + "\n")


def test_evaluate_scores_a_foreign_file_whole_and_the_training_file_held_out(tmp_path, capsys):
    from avalign.training_record import load_training_record

    from conftest import last_json_line

    train_file, test_file, out = tmp_path / "train.jsonl", tmp_path / "test.jsonl", tmp_path / "m"
    preference_file(train_file, 60)
    preference_file(test_file, 30, offset=100)
    assert main(["train", "--dataset_name", str(train_file), "--max_length", "24", "--max_steps", "1",
                 "--tokenizer_vocab_size", "300", "--output_dir", str(out), "--disable_tqdm", "true",
                 "--use_cpu", "true", "--eval_fraction", "0.2", "--dataset_seed", "3"]) == 0
    trained = last_json_line(capsys.readouterr().out)
    assert load_training_record(str(out))["max_length"] == 24

    assert main(["evaluate", "--model_name_or_path", str(out), "--dataset_name", str(train_file)]) == 0
    own = last_json_line(capsys.readouterr().out)
    assert own["n"] == trained["eval_n"] < 60 and "as in training" in own["scored"]
    assert own["max_length"] == 24 and own["accuracy"] == pytest.approx(trained["eval_accuracy"])

    assert main(["evaluate", "--model_name_or_path", str(out), "--dataset_name", str(test_file)]) == 0
    foreign = last_json_line(capsys.readouterr().out)
    assert foreign["n"] == 30 and "not the model's training data" in foreign["scored"]


# -- point 3: a model without a reward head is refused, not scored with a random one --------------------------------
def test_a_language_model_is_not_loaded_as_a_reward_model(tmp_path, tokenizer):
    from avalign.reward_model import load_reward_model

    from conftest import tiny_backbone

    tiny_backbone("gpt2", tokenizer).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="not a reward model.*score.weight"):
        load_reward_model(str(tmp_path))


def test_a_failed_save_leaves_the_earlier_model_intact(tmp_path, tokenizer, monkeypatch):
    import torch

    import avalign.modeling
    from avalign import TQRModel

    from conftest import tiny_backbone

    old = TQRModel(tiny_backbone("gpt2", tokenizer, seed=1))
    old.save_pretrained(tmp_path)
    new = TQRModel(tiny_backbone("gpt2", tokenizer, seed=2))
    with torch.no_grad():
        new.reward_head.bias.fill_(3.0)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(avalign.modeling, "save_file", disk_full)  # the heads fail after the backbone was written
    with pytest.raises(OSError):
        new.save_pretrained(tmp_path)
    loaded = TQRModel.from_pretrained(str(tmp_path)).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in old.state_dict().items())
    assert [p.name for p in tmp_path.parent.iterdir() if ".saving-" in p.name] == []  # no staging left behind


# -- point 4: every objective counts what it drops or truncates, and reports it --------------------------------------
@pytest.mark.parametrize("objective", ["dpo", "sft", "bt", "ava-p"])
def test_every_objective_reports_dropped_and_truncated_rows(tmp_path, capsys, objective):
    from conftest import last_json_line

    data, out = tmp_path / "train.jsonl", tmp_path / "m"
    preference_file(data, 40)
    common = ["train", "--objective", objective, "--dataset_name", str(data), "--max_steps", "1", "--eval_fraction",
              "0", "--tokenizer_vocab_size", "300", "--output_dir", str(out), "--disable_tqdm", "true", "--use_cpu",
              "true", "--too_long", "drop"]
    assert main([*common, "--max_length", "12"]) == 0
    captured = capsys.readouterr()
    train = last_json_line(captured.out)["data"]["train"]
    assert train["rows_in"] == 40 and train["rows_out"] + train["dropped_too_long"] == 40
    assert train["dropped_too_long"] + train["response_truncated"] > 0  # max_length 12 is too short for some rows
    assert f"train: tokenized 40 rows -> {train['rows_out']}" in captured.out
    assert f"tokenized 40 rows -> {train['rows_out']}" in (out / "README.md").read_text()
    if objective in ("dpo", "ava-p"):  # prompts alone longer than max_length: nothing left, said in one line
        assert main([*common, "--max_length", "4"]) == 2
        assert "no rows left" in capsys.readouterr().err.strip().splitlines()[-1]


# -- point 6: the Python API cleans and checks as the CLI does --------------------------------------------------------
def test_trainer_drops_and_counts_identical_pairs_and_duplicates(tmp_path, synthetic, tokenizer, capsys):
    from datasets import Dataset

    from avalign import AVATrainer, TQRModel

    from conftest import tiny_backbone

    rows = synthetic[0].select_columns(["prompt", "chosen", "rejected"]).select(range(10)).to_list()
    same = {**rows[0], "rejected": rows[0]["chosen"]}
    train = Dataset.from_list([*rows, same, rows[3], rows[4]])
    trainer = AVATrainer(TQRModel(tiny_backbone("gpt2", tokenizer)), args=AVAConfig(output_dir=str(tmp_path), max_length=64),
                         train_dataset=train, processing_class=tokenizer)
    assert trainer.tokenize_reports["train"].rows_in == 10
    out = capsys.readouterr().out
    assert "13 rows in, 10 out; dropped 3: 1 chosen == rejected, 2 duplicate row" in out


@pytest.mark.parametrize(
    "train, match",
    [(lambda rows: rows, "expected a datasets.Dataset"),
     (lambda rows: __import__("datasets").Dataset.from_list([{**r, "chosen": 7} for r in rows]), "row 1, field 'chosen'"),
     (lambda rows: __import__("datasets").Dataset.from_list([{"prompt": r["prompt"], "answer": r["chosen"]} for r in rows]),
      "expected columns")],
)
def test_trainer_names_what_is_wrong_with_the_data(tmp_path, synthetic, tokenizer, train, match):
    from avalign import AVATrainer, TQRModel
    from avalign.errors import DataError

    from conftest import tiny_backbone

    rows = synthetic[0].select_columns(["prompt", "chosen", "rejected"]).select(range(4)).to_list()
    with pytest.raises(DataError, match=match):
        AVATrainer(TQRModel(tiny_backbone("gpt2", tokenizer)), args=AVAConfig(output_dir=str(tmp_path), max_length=64),
                   train_dataset=train(rows), processing_class=tokenizer)


def test_score_checks_that_prompts_and_responses_pair_up(tokenizer):
    from avalign import AVARewardModel, TQRModel
    from avalign.errors import DataError

    from conftest import tiny_backbone

    scorer = AVARewardModel(TQRModel(tiny_backbone("gpt2", tokenizer)), tokenizer, max_length=64)
    with pytest.raises(DataError, match="2 prompts but 1 responses"):
        scorer.score(["a b", "c d"], ["e"])
    with pytest.raises(DataError, match="row 2, field 'completion'"):
        scorer.score(["a b", "c d"], ["e", 3])
    assert len(scorer.score(["a b"], ["e"])) == 1


# -- point 7: no hub token in training_args.bin ----------------------------------------------------------------------
@pytest.mark.parametrize("objective", ["ava-p", "bt", "dpo", "sft"])
def test_training_args_are_pickled_without_the_hub_token(tmp_path, objective):
    import io

    import torch

    from avalign.trainers.baselines import trl_config

    args = AVAConfig(output_dir=str(tmp_path), objective=objective, hub_token="hf_secret_token_123")
    args = args if objective == "ava-p" else trl_config(args)
    saved = io.BytesIO()
    torch.save(args, saved)  # what the Trainer writes as training_args.bin
    assert b"hf_secret_token_123" not in saved.getvalue()
    assert args.hub_token == "hf_secret_token_123"  # the run itself still has it (push_to_hub)


# -- point 8: numerics off the main path -------------------------------------------------------------------------------
def test_a_float64_model_gives_float64_rewards(tokenizer):
    import torch

    from avalign import TQRModel

    from conftest import tiny_backbone

    model = TQRModel(tiny_backbone("gpt2", tokenizer)).double()
    ids = torch.tensor([[5, 6, 7, 8]])
    out = model(ids, torch.ones_like(ids), torch.tensor([[0, 0, 1, 1]]), with_q=False)
    assert out.reward_mean.dtype == out.reward_log_std.dtype == torch.float64


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_left_and_right_padding_give_the_same_outputs(tokenizer, arch):
    import torch

    from avalign import TQRModel

    from conftest import tiny_backbone

    model = TQRModel(tiny_backbone(arch, tokenizer)).eval()
    pad = tokenizer.pad_token_id
    rows = [([5, 6, 7, 9], [10, 11, 12]), ([5, 6], [13])]  # (prompt, response) of different lengths
    width = max(len(p) + len(r) for p, r in rows)

    def batch(left: bool):
        ids, attention, completion = [], [], []
        for prompt, response in rows:
            padding = width - len(prompt) - len(response)
            sequence, marks = prompt + response, [0] * len(prompt) + [1] * len(response)
            ids.append([pad] * padding + sequence if left else sequence + [pad] * padding)
            attention.append([0] * padding + [1] * len(sequence) if left else [1] * len(sequence) + [0] * padding)
            completion.append([0] * padding + marks if left else marks + [0] * padding)
        return [torch.tensor(x) for x in (ids, attention, completion)]

    with torch.no_grad():
        right, left = model(*batch(left=False)), model(*batch(left=True))
    for name in ("reward_mean", "reward_log_std", "reward_weights", "q_values"):
        torch.testing.assert_close(getattr(left, name)[left.mask], getattr(right, name)[right.mask], rtol=1e-5, atol=1e-5)


# -- issue 15, item 6: CLI manners -------------------------------------------------------------------------------------
def test_bare_avalign_prints_help_and_importing_it_loads_no_torch(capsys):
    import subprocess
    import sys

    assert main([]) == 0 and capsys.readouterr().out.startswith("usage: avalign <command>")
    code = "import sys, avalign; assert 'torch' not in sys.modules and 'transformers' not in sys.modules; avalign.AVAConfig"
    subprocess.run([sys.executable, "-c", code], check=True)  # lazy, and the names still resolve


def test_studies_skip_plots_without_matplotlib(tmp_path, monkeypatch, capsys):
    import builtins

    from avalign.studies import pyplot

    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *args, **kwargs: (
        (_ for _ in ()).throw(ImportError(name)) if name.startswith("matplotlib") else real_import(name, *args, **kwargs)))
    assert pyplot(tmp_path) is None
    assert "plots skipped: matplotlib is not installed" in capsys.readouterr().out
