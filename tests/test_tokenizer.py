"""Offline byte-level BPE tokenizer: exact round trips, vocabulary size, special tokens, reload, and the CLI."""

from __future__ import annotations

import gzip
import json

import pytest
from transformers import AutoTokenizer

from avalign.cli import main as cli_main
from avalign.errors import ConfigError, DataError
from avalign.tokenizer import read_texts, train_bpe_tokenizer

CORPUS = [
    "Once upon a time, there was a little girl named Lily.",
    "She loved to play outside in the park with her friends.",
    "The quick brown fox jumps over the lazy dog; the dog did not mind.",
    "Human: What is the capital of France?\n\nAssistant: The capital of France is Paris.",
    "Zoë and José ate crème brûlée in Kraków — it cost 12.50 €.",
    "日本語のテキストも学習できます。",
] * 20
UNSEEN = [
    "Héllo wörld! ünïcödé ∑ π ≈ 3.14159",
    "emoji 🎉🤖 and CJK 漢字 and Arabic مرحبا",
    "  leading spaces, tabs\tand\nnewlines\r\n",
    "",
    "\x00 control \x7f bytes",
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(CORPUS, vocab_size=300)


@pytest.mark.parametrize("text", CORPUS[:6] + UNSEEN)
def test_any_utf8_text_round_trips_exactly(tokenizer, text):
    ids = tokenizer(text).input_ids
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text


def test_vocab_size_is_respected(tokenizer):
    assert len(tokenizer) == 300  # the corpus has far more than 300 - 260 possible merges
    small = train_bpe_tokenizer(["ab"], vocab_size=1000)
    assert len(small) <= 1000


def test_special_tokens_are_set_and_distinct(tokenizer):
    ids = [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id]
    assert None not in ids and len(set(ids)) == 4
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|endoftext|>", "<|pad|>")
    # Special tokens stay whole inside text, and are not added on encode.
    assert tokenizer("hi<|endoftext|>").input_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.bos_token_id not in tokenizer("hi").input_ids


def test_reload_from_disk_gives_identical_encodings(tmp_path):
    trained = train_bpe_tokenizer(CORPUS, vocab_size=300, output_dir=str(tmp_path))
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path))
    for text in CORPUS[:6] + UNSEEN:
        assert reloaded(text).input_ids == trained(text).input_ids
    assert reloaded.all_special_tokens == trained.all_special_tokens
    assert len(reloaded) == len(trained)


def test_bad_arguments_are_refused():
    with pytest.raises(ConfigError, match="too small"):
        train_bpe_tokenizer(CORPUS, vocab_size=200)
    with pytest.raises(DataError, match="no training texts"):
        train_bpe_tokenizer([], vocab_size=300)


def _write_jsonl_gz(path, rows):
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)


def test_read_texts_formats(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("first line\n\n  \nsecond line\n", encoding="utf-8")
    prefs = tmp_path / "p.jsonl.gz"
    _write_jsonl_gz(prefs, [{"prompt": "Q? ", "chosen": "good", "rejected": "bad", "score": 1}])
    chat = tmp_path / "c.jsonl"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    chat.write_text(json.dumps({"messages": messages, "id": "x"}) + "\n")
    (tmp_path / "c.csv").write_text("a,b\n")

    assert list(read_texts([str(txt)])) == ["first line", "second line"]
    assert list(read_texts([str(prefs)])) == ["Q? good", "Q? bad"]
    assert list(read_texts([str(prefs)], ["prompt", "rejected"])) == ["Q? \nbad"]
    assert list(read_texts([str(chat)])) == ["hi\nyo", "x"]
    with pytest.raises(DataError, match=r"p\.jsonl\.gz, row 1, field 'answer'"):
        list(read_texts([str(prefs)], ["answer"]))
    with pytest.raises(DataError, match=r"c\.csv: unsupported file type"):
        next(read_texts([txt, tmp_path / "c.csv"]))
    with pytest.raises(DataError, match=r"gone\.txt: no such file"):  # before reading the files listed first
        next(read_texts([txt, tmp_path / "gone.txt"]))


def test_cli_trains_and_saves(tmp_path):
    txt = tmp_path / "corpus.txt"
    txt.write_text("\n".join(CORPUS[:6]), encoding="utf-8")
    prefs = tmp_path / "prefs.jsonl.gz"
    _write_jsonl_gz(prefs, [{"prompt": "Q: 2+2? ", "chosen": "A: 4", "rejected": "A: 5"}] * 10)
    out = tmp_path / "tok"
    argv = ["train", "--input", str(txt), "--input", str(prefs), "--vocab_size", "280", "--output_dir", str(out)]
    assert cli_main(["tokenizer", *argv]) == 0
    reloaded = AutoTokenizer.from_pretrained(str(out))
    assert len(reloaded) == 280
    assert reloaded.decode(reloaded("Q: 2+2? A: 4").input_ids) == "Q: 2+2? A: 4"


@pytest.mark.parametrize("content", [None, "", "\n\n"])
def test_cli_names_a_missing_or_empty_file(tmp_path, capsys, content):
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    argv = ["train", "--input", str(path), "--vocab_size", "300", "--output_dir", str(tmp_path / "out")]
    assert cli_main(["tokenizer", *argv]) == 2
    error = capsys.readouterr().err
    assert str(path) in error and ("no such file" in error if content is None else "contains no text" in error)
