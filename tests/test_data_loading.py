"""load_dataset on small files written here: every input path, every bad input's error, splits, stats and the CLI."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import datasets
import pyarrow
import pyarrow.parquet
import pytest

from avalign.cli import main as cli_main
from avalign.data import loading
from avalign.data.cleaning import DUPLICATE, EMPTY_RESPONSE, SAME_RESPONSES
from avalign.data.loading import load_dataset, read_file
from avalign.data.splits import EVAL_OVERLAP
from avalign.data.stats import compute_stats, load_tokenizer
from avalign.errors import ConfigError, DataError

PAIRS = [{"prompt": f"Question {i}?", "chosen": f" good {i}", "rejected": f" bad {i}"} for i in range(40)]


def write_jsonl(path: Path, rows: list, compress: bool = False) -> Path:
    text = "".join(json.dumps(row) + "\n" for row in rows)
    path.write_bytes(gzip.compress(text.encode()) if compress else text.encode())
    return path


# --- input paths -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pairs.jsonl", "pairs.jsonl.gz", "pairs.json", "pairs.csv", "pairs.csv.gz",
                                  "pairs.parquet", "pairs.parquet.gz"])
def test_every_file_type_loads_the_same_rows(tmp_path, name):
    path = tmp_path / name
    if ".jsonl" in name:
        write_jsonl(path, PAIRS, compress=name.endswith(".gz"))
    elif ".json" in name:
        path.write_text(json.dumps(PAIRS, indent=2))
    elif ".csv" in name:
        datasets.Dataset.from_list(PAIRS).to_csv(tmp_path / "plain.csv", index=False)
        data = (tmp_path / "plain.csv").read_bytes()
        path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    else:
        pyarrow.parquet.write_table(pyarrow.Table.from_pylist(PAIRS), tmp_path / "plain.parquet")
        data = (tmp_path / "plain.parquet").read_bytes()
        path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    loaded = load_dataset(str(path), eval_fraction=0.0)
    assert (loaded.family, loaded.kind, loaded.eval) == ("trl", "preference", None)
    assert loaded.train.to_list() == PAIRS


def test_json_array_rows_are_numbered_by_element(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([{"prompt": "a", "completion": " b"}, {"prompt": "c"}], indent=1))
    with pytest.raises(DataError, match=r"rows\.json, row 2: expected columns prompt/chosen/rejected"):
        load_dataset(str(path))


def test_directory_with_train_and_test_files_uses_them_and_drops_shared_prompts(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", PAIRS[:30])
    write_jsonl(tmp_path / "test.jsonl", PAIRS[25:])
    (tmp_path / "notes.txt").write_text("not data")
    loaded = load_dataset(str(tmp_path))
    assert len(loaded.train) == 25 and len(loaded.eval) == 15
    assert loaded.report.dropped == {EVAL_OVERLAP: 5}
    assert loaded.report.rows_in == loaded.report.rows_out + 5


def test_directory_without_split_names_concatenates_its_files(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", PAIRS[:10])
    write_jsonl(tmp_path / "b.jsonl.gz", PAIRS[10:], compress=True)
    loaded = load_dataset(str(tmp_path), eval_fraction=0.0)
    assert loaded.train.to_list() == PAIRS


def test_directory_of_mixed_families_asks_for_one(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", PAIRS[:3])
    write_jsonl(tmp_path / "b.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError, match="different families"):
        load_dataset(str(tmp_path))
    assert load_dataset(str(tmp_path), family="gsm8k", eval_fraction=0.0).family == "gsm8k"


def test_saved_dataset_dict_uses_its_train_and_test_splits(tmp_path):
    datasets.DatasetDict(
        train=datasets.Dataset.from_list(PAIRS[:30]), test=datasets.Dataset.from_list(PAIRS[30:])
    ).save_to_disk(str(tmp_path / "saved"))
    loaded = load_dataset(str(tmp_path / "saved"))
    assert (len(loaded.train), len(loaded.eval)) == (30, 10)


def test_hub_ids_go_through_datasets_load_dataset(monkeypatch):
    calls = []

    def fake_hub(name, config=None):
        calls.append((name, config))
        if name == "org/missing":
            raise ConnectionError("offline")
        return datasets.DatasetDict(train=datasets.Dataset.from_list(PAIRS))

    monkeypatch.setattr(loading.datasets, "load_dataset", fake_hub)
    assert len(load_dataset("org/pairs", eval_fraction=0.0).train) == len(PAIRS)
    load_dataset("org/pairs", eval_fraction=0.0, dataset_config="helpful")  # TRL's --dataset_config
    with pytest.raises(DataError, match="org/missing.*ConnectionError: offline"):
        load_dataset("org/missing")
    assert calls == [("org/pairs", None), ("org/pairs", "helpful"), ("org/missing", None)]


def test_missing_local_path_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_dataset(str(tmp_path / "nothing.jsonl"))


def test_max_rows_caps_the_rows_read(tmp_path):
    loaded = load_dataset(str(write_jsonl(tmp_path / "p.jsonl", PAIRS)), max_rows=7, eval_fraction=0.0)
    assert loaded.report.rows_in == 7 and len(loaded.train) == 7


def test_implicit_prompt_messages_and_sft_messages(tmp_path):
    dialogue = [{"role": "user", "content": "hi"}]
    implicit = [{"chosen": dialogue + [{"role": "assistant", "content": "hello"}],
                 "rejected": dialogue + [{"role": "assistant", "content": "go away"}]}]
    loaded = load_dataset(str(write_jsonl(tmp_path / "implicit.jsonl", implicit)), eval_fraction=0.0)
    assert loaded.train[0] == {"prompt": dialogue, "chosen": [{"role": "assistant", "content": "hello"}],
                               "rejected": [{"role": "assistant", "content": "go away"}]}
    sft = [{"messages": dialogue + [{"role": "assistant", "content": "hello"}]}]
    loaded = load_dataset(str(write_jsonl(tmp_path / "sft.jsonl", sft)), eval_fraction=0.0)
    assert loaded.kind == "demonstration"
    assert loaded.train[0] == {"prompt": dialogue, "completion": [{"role": "assistant", "content": "hello"}]}


def test_conversational_option_wraps_standard_rows(tmp_path):
    loaded = load_dataset(str(write_jsonl(tmp_path / "p.jsonl", PAIRS[:1])), eval_fraction=0.0, conversational=True)
    assert loaded.train[0] == {"prompt": [{"role": "user", "content": "Question 0?"}],
                               "chosen": [{"role": "assistant", "content": "good 0"}],
                               "rejected": [{"role": "assistant", "content": "bad 0"}]}


def test_cleaning_counts_every_drop(tmp_path):
    rows = PAIRS[:5] + [PAIRS[0], {"prompt": "p", "chosen": " same", "rejected": "same "},
                        {"prompt": "q", "chosen": "  ", "rejected": " x"}]
    loaded = load_dataset(str(write_jsonl(tmp_path / "p.jsonl", rows)), eval_fraction=0.0)
    assert loaded.report.dropped == {DUPLICATE: 1, SAME_RESPONSES: 1, EMPTY_RESPONSE: 1}
    assert (loaded.report.rows_in, loaded.report.rows_out) == (8, 5)
    assert "dropped 3" in loaded.report.summary()


# --- bad input -----------------------------------------------------------------------------------------------------


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(PAIRS[0]) + "\n\n" + '{"prompt": "x", "chosen": \n')
    with pytest.raises(DataError, match=r"file .*broken\.jsonl, row 3: malformed JSON"):
        load_dataset(str(path))


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(PAIRS[0]).encode() + b'\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin1\.jsonl, row 2: not valid UTF-8: byte 0xe9"):
        load_dataset(str(path))


def test_unpaired_surrogate_escape_is_a_data_error(tmp_path):
    path = tmp_path / "surrogate.jsonl"
    path.write_text('{"prompt": "a\\ud800", "completion": " b"}\n')
    with pytest.raises(DataError, match="row 1: contains an unpaired UTF-16 surrogate"):
        load_dataset(str(path))


@pytest.mark.parametrize("content", [gzip.compress(b'{"prompt": "a", "completion": " b"}\n' * 50)[:-12], b"not gzip"])
def test_corrupt_gzip(tmp_path, content):
    path = tmp_path / "data.jsonl.gz"
    path.write_bytes(content)
    with pytest.raises(DataError, match=r"data\.jsonl\.gz: cannot decompress: the gzip data is corrupt or truncated"):
        load_dataset(str(path))


@pytest.mark.parametrize("name, content", [("empty.jsonl", b""), ("blank.jsonl", b"\n  \n"),
                                           ("empty.jsonl.gz", gzip.compress(b"")), ("empty.json", b"[]"),
                                           ("empty.csv", b"prompt,completion\n")])
def test_empty_files(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=rf"{name}: .*empty"):
        load_dataset(str(tmp_path / name))


def test_missing_fields_list_the_expected_schemas(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"text": "hello", "score": 1}])
    with pytest.raises(DataError) as error:
        load_dataset(str(path))
    message = str(error.value)
    assert "odd.jsonl, row 1" in message
    for schema in ("prompt/chosen/rejected (preference)", "prompt/completion (demonstration)",
                   "chosen/rejected transcripts (HH-RLHF", "found: ['score', 'text']"):
        assert schema in message


def test_empty_response_is_an_error_without_cleaning(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", PAIRS[:3] + [{"prompt": "x", "chosen": " ", "rejected": " y"}])
    with pytest.raises(DataError, match=r"p\.jsonl, row 4, field 'chosen': response is empty"):
        load_dataset(str(path), clean=False)


@pytest.mark.parametrize("row, message", [
    ({"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: hi\n\nAssistant: yo"},
     r"row 1, field 'chosen': transcript has no '\\n\\nAssistant:' turn"),
    ({"prompt": "p", "chosen": 3, "rejected": " r"}, r"row 1, field 'chosen': expected a string, got int"),
    ({"prompt": "p", "completion": " c", "label": True}, r"field 'label': unpaired preference rows"),
    ([1, 2], r"row 1: expected an object with named fields, got list"),
])
def test_bad_rows(tmp_path, row, message):
    with pytest.raises(DataError, match=message):
        load_dataset(str(write_jsonl(tmp_path / "bad.jsonl", [row])))


def test_mixed_formats_in_one_file(tmp_path):
    rows = [PAIRS[0], {"prompt": "p", "completion": " c"}]
    with pytest.raises(DataError, match="row 2: row is standard demonstration but row 1 is standard preference"):
        load_dataset(str(write_jsonl(tmp_path / "mixed.jsonl", rows)))


def test_csv_with_a_short_row_names_its_line(tmp_path):
    (tmp_path / "t.csv").write_text("prompt,completion\na, b\nc\n")
    with pytest.raises(DataError, match=r"t\.csv, row 3: has a different number of fields"):
        read_file(tmp_path / "t.csv")


def test_corrupt_parquet(tmp_path):
    (tmp_path / "t.parquet").write_bytes(b"PAR1 but not really")
    with pytest.raises(DataError, match=r"t\.parquet: cannot read Parquet"):
        read_file(tmp_path / "t.parquet")


def test_unsupported_suffix(tmp_path):
    (tmp_path / "rows.txt").write_text("hello")
    with pytest.raises(DataError, match="unsupported file type"):
        load_dataset(str(tmp_path / "rows.txt"))


def test_bad_options(tmp_path):
    path = str(write_jsonl(tmp_path / "p.jsonl", PAIRS))
    with pytest.raises(ConfigError, match="eval_fraction"):
        load_dataset(path, eval_fraction=1.0)
    with pytest.raises(ConfigError, match="unknown dataset family 'nope'"):
        load_dataset(path, family="nope")
    with pytest.raises(ConfigError, match="max_rows"):
        load_dataset(path, max_rows=0)


def test_eval_source_of_another_kind_is_refused(tmp_path):
    train = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    demos = write_jsonl(tmp_path / "demos.jsonl", [{"prompt": "z", "completion": " c"}])
    with pytest.raises(DataError, match="are standard demonstration rows but the training rows"):
        load_dataset(str(train), eval_name_or_path=str(demos))


# --- GSM8K: pairs built on the test questions must not meet them in evaluation --------------------------------------


def _solutions(question: str) -> dict:
    sample = {"is_correct": False, "solution": "wrong\nA: 1"}
    return {"question": question, "ground_truth": "right\nA: 2",
            **{name: sample for name in ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")}}


def test_gsm8k_pairs_refuse_an_evaluation_split_with_their_questions(tmp_path):
    pairs = write_jsonl(tmp_path / "example_model_solutions.jsonl", [_solutions("Q1?"), _solutions("Q2?")])
    test = write_jsonl(tmp_path / "test.jsonl", [{"question": "Q2?", "answer": "right\n#### 2"}])
    with pytest.raises(DataError, match="refusing to build GSM8K pairs"):
        load_dataset(str(pairs), eval_name_or_path=str(test))
    other_row = {"prompt": "Question: Q3?\nAnswer:", "chosen": " a", "rejected": " b"}
    other = write_jsonl(tmp_path / "other.jsonl", [other_row])
    loaded = load_dataset(str(pairs), eval_name_or_path=str(other))
    assert loaded.family == "gsm8k-pairs" and len(loaded.eval) == 1
    # Four identical wrong samples per question: one pair each, the three repeats counted as duplicates.
    assert len(loaded.train) == 2 and loaded.report.dropped == {DUPLICATE: 6}


# --- stats and the CLI ---------------------------------------------------------------------------------------------


def _sizes(tmp_path: Path, separator: str = "") -> Path:
    """Row n (1..100): a prompt of n units and a completion of 2n units (+ a leading space); units are characters
    (bytes) or, with separator " ", words."""
    rows = [{"prompt": separator.join("p" * n), "completion": " " + separator.join("c" * (2 * n))}
            for n in range(1, 101)]
    return write_jsonl(tmp_path / f"sizes{len(separator)}.jsonl", rows)


def test_stats_in_bytes(tmp_path):
    loaded = load_dataset(str(_sizes(tmp_path)), eval_fraction=0.0)
    stats = compute_stats("sizes", loaded, max_length=150)
    assert stats.unit == "UTF-8 bytes"
    assert (stats.lengths["prompt"].p50, stats.lengths["prompt"].p90, stats.lengths["prompt"].max) == (50, 90, 100)
    assert stats.lengths["completion"].p99 == 1 + 2 * 99
    # prompt n + completion 2n + 1 > 150  <=>  n >= 50
    assert stats.truncated == 51
    assert "would be truncated" in stats.render() and "no --model_name_or_path" in stats.render()


def test_stats_with_a_local_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "p": 1, "c": 2}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]").save_pretrained(tmp_path / "tok")
    loaded = load_dataset(str(_sizes(tmp_path, " ")), eval_fraction=0.0)
    stats = compute_stats("words", loaded, tokenizer=load_tokenizer(str(tmp_path / "tok")), max_length=150)
    assert stats.unit.startswith("tokens")
    assert (stats.lengths["prompt"].p50, stats.lengths["completion"].max) == (50, 200)
    assert stats.truncated == 50  # n + 2n > 150  <=>  n >= 51
    with pytest.raises(ConfigError, match="cannot load a tokenizer"):
        load_tokenizer(str(tmp_path / "no-such-model"))


def test_cli_prints_stats_and_markdown(tmp_path, capsys):
    data_file = str(_sizes(tmp_path))
    assert cli_main(["data", "stats", "--dataset_name", data_file, "--max_length", "150"]) == 0
    out = capsys.readouterr().out
    assert "lengths in UTF-8 bytes" in out and "rows: 100" in out and "51 of 100 rows" in out
    assert cli_main(["data", "stats", "--dataset_name", data_file, data_file, "--markdown"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| dataset |") and out.count(f"| {data_file} | trl | demonstration | 100 |") == 2
    assert cli_main(["data", "stats", "--dataset_name", str(tmp_path / "nothing.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
