"""Property tests for tokenisation and the collator: random rows either give well-formed batches or DataError."""

from __future__ import annotations

import pyarrow
from datasets import Dataset
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from avalign.data.collator import collate_sequences
from avalign.data.synthetic import SyntheticTask
from avalign.data.tokenize import tokenize_dataset
from avalign.errors import DataError

TOKENIZER = SyntheticTask().tokenizer()
WORDS = SyntheticTask().words
words = st.lists(st.sampled_from(WORDS + ["", " ", "???", "\n"]), max_size=12).map(" ".join)
value = st.one_of(words, st.none(), st.integers(-5, 5), st.lists(st.text(max_size=4), max_size=2))
columns = st.sampled_from([("prompt", "chosen", "rejected"), ("prompt", "completion"), ("prompt", "chosen"), ("text",)])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cols=columns,
    rows=st.lists(st.lists(value, min_size=3, max_size=3), min_size=1, max_size=4),
    max_length=st.integers(4, 24),
    too_long=st.sampled_from(["truncate", "drop"]),
    seq2seq=st.booleans(),
)
def test_tokenize_and_collate_or_data_error(cols, rows, max_length, too_long, seq2seq):
    try:  # columns mixing types that Arrow cannot hold are not datasets at all
        dataset = Dataset.from_list([dict(zip(cols, row)) for row in rows])
    except (pyarrow.ArrowInvalid, pyarrow.ArrowTypeError, TypeError):
        assume(False)
    try:
        tokenized, report = tokenize_dataset(dataset, TOKENIZER, max_length=max_length, is_encoder_decoder=seq2seq,
                                             too_long=too_long)
    except DataError:
        return
    assert report.rows_in == len(rows) and report.rows_out == len(tokenized) == report.rows_in - report.dropped_too_long
    response_columns = [c for c in tokenized.column_names if c != "prompt_ids"]
    # truncated or not, every response ends with EOS, as every response a reward model scores in use does
    assert all(r[-1] == TOKENIZER.eos_token_id for c in response_columns for r in tokenized[c])
    keys = ("chosen", "rejected") if "rejected_ids" in tokenized.column_names else ("completion",)
    batch = collate_sequences(list(tokenized), keys, TOKENIZER.pad_token_id, seq2seq, decoder_start_token_id=1)
    rows_out = len(tokenized) * len(keys)
    assert batch["input_ids"].shape[0] == batch["completion_mask"].shape[0] == rows_out
    sequence_mask = batch["decoder_attention_mask"] if seq2seq else batch["attention_mask"]
    # Every sequence has at least one response token, only where there are real tokens, and fits max_length.
    assert (batch["completion_mask"].sum(1) >= 1).all()
    assert ((batch["completion_mask"] == 1) <= (sequence_mask == 1)).all()
    assert sequence_mask.sum(1).max() <= max_length
    assert batch["attention_mask"].sum(1).max() <= max_length


def test_map_in_processes_keeps_rows_and_counts_exact(synthetic):
    """datasets.map over 2 processes: the same rows, in order, and truncation counts equal to the sum of the counts
    of every row tokenised alone."""
    pairs = synthetic[0].select(range(40)).select_columns(["prompt", "chosen", "rejected"])
    for too_long, max_length in (("truncate", 8), ("drop", 14)):
        tokenized, report = tokenize_dataset(pairs, TOKENIZER, max_length=max_length, too_long=too_long, num_proc=2)
        alone = []
        for i in range(len(pairs)):
            try:
                alone.append(tokenize_dataset(pairs.select([i]), TOKENIZER, max_length=max_length, too_long=too_long))
            except DataError:  # the row alone was dropped: nothing left
                alone.append((None, None))
        assert tokenized.to_list() == [row for rows, _ in alone if rows is not None for row in rows.to_list()]
        for count in ("prompt_truncated", "response_truncated"):
            assert getattr(report, count) == sum(getattr(r, count) for _, r in alone if r is not None)
        assert report.dropped_too_long == sum(r is None for _, r in alone)
        assert len(tokenized) > 0 and (report.dropped_too_long > 0 if too_long == "drop" else report.prompt_truncated > 0)


def test_a_truncated_response_keeps_its_final_eos():
    """The cause of the HH PPO collapse: truncation used to drop the EOS of long responses, so in training a final
    EOS marked the short, uncut ones (often the rejected), while PPO and scoring append EOS to every response; the
    reward model learned a negative EOS reward and PPO drove responses to EOS alone."""
    prompt, long, short = " ".join(WORDS[:4]), " ".join(WORDS[4:20]), " ".join(WORDS[20:22])
    for seq2seq in (False, True):
        rows = Dataset.from_list([{"prompt": prompt, "chosen": long, "rejected": short}])
        tokenized, report = tokenize_dataset(rows, TOKENIZER, max_length=12, is_encoder_decoder=seq2seq)
        chosen, rejected = tokenized[0]["chosen_ids"], tokenized[0]["rejected_ids"]
        full = TOKENIZER(long, add_special_tokens=False)["input_ids"]
        assert report.response_truncated == 1 and len(chosen) < len(full)
        assert chosen == full[: len(chosen) - 1] + [TOKENIZER.eos_token_id]  # the words that fit, then EOS
        assert rejected == TOKENIZER(short, add_special_tokens=False)["input_ids"] + [TOKENIZER.eos_token_id]
        assert len(chosen) == (11 if seq2seq else 12 - len(tokenized[0]["prompt_ids"]))
