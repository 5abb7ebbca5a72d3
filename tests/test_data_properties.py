"""Property tests: random and broken rows or bytes either become valid TRL rows or raise DataError, nothing else."""

from __future__ import annotations

import csv
import gzip
import io
import json
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from avalign.data.cleaning import CleaningReport, clean_rows
from avalign.data.families import FAMILIES, GSM8K_MODEL_FIELDS
from avalign.data.formats import RESPONSE_FIELDS, Record, row_format
from avalign.data.loading import load_dataset
from avalign.data.splits import group_key, split_by_prompt
from avalign.errors import DataError

SETTINGS = settings(max_examples=150, deadline=None)

junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def rarely(odd: st.SearchStrategy, usual: st.SearchStrategy) -> st.SearchStrategy:
    """``odd`` one time in ten, ``usual`` otherwise."""
    return st.sampled_from(range(10)).flatmap(lambda roll: odd if roll == 0 else usual)


text = st.text(max_size=16)
# HH-like transcripts, including ones without any Assistant turn.
transcript = st.lists(
    st.tuples(st.sampled_from(["\n\nHuman:", "\n\nAssistant:", "\n\nAssistant: ", "Human:", ""]), text), max_size=5
).map(lambda parts: "".join(marker + words for marker, words in parts))
hh_pair = st.builds(
    lambda prompt, chosen, rejected: {"chosen": prompt + "\n\nAssistant:" + chosen,
                                      "rejected": prompt + "\n\nAssistant:" + rejected},
    transcript, text, text,
)


def family_rows(broken: bool) -> dict[str, st.SearchStrategy]:
    """Rows of each family's shape. ``broken``: any field may be junk and a row may lose a field."""

    def row(**fields: st.SearchStrategy) -> st.SearchStrategy:
        if not broken:
            return st.fixed_dictionaries(fields)
        return st.tuples(
            st.fixed_dictionaries({name: rarely(junk, value) for name, value in fields.items()}),
            rarely(st.sampled_from(sorted(fields)), st.none()),
        ).map(lambda drawn: {name: value for name, value in drawn[0].items() if name != drawn[1]})

    message = row(role=st.sampled_from(["user", "assistant", "system"]), content=text)
    messages = st.lists(message, min_size=1, max_size=4)
    reply = st.lists(row(role=st.just("assistant"), content=text), min_size=1, max_size=2)
    odd = st.sampled_from([2, -1, True]) if broken else st.nothing()
    return {
        "hh-rlhf": hh_pair | row(chosen=transcript, rejected=transcript),
        "trl": st.one_of(
            row(prompt=text, chosen=text, rejected=text),
            row(prompt=messages, chosen=reply, rejected=reply),
            row(prompt=text, completion=text),
            row(prompt=messages, completion=reply),
            row(prompt=text, completion=text, label=st.booleans()),
            row(messages=messages),
            row(chosen=messages, rejected=messages),
        ),
        "tldr": row(info=row(subreddit=text, title=text, post=text) | row(article=text),
                    summaries=st.lists(row(text=text), min_size=2 - broken, max_size=2 + broken),
                    choice=st.sampled_from([0, 1]) | odd),
        "gsm8k": row(question=text, answer=text),
        "gsm8k-pairs": row(question=text, ground_truth=text,
                           **{name: row(is_correct=st.booleans(), solution=text) for name in GSM8K_MODEL_FIELDS}),
        "alpaca-eval": row(instruction=text, input=text, output=text, generator=text),
        "alpaca-eval-pairs": row(instruction=st.sampled_from(["a", "b"]), output=text,
                                 generator=st.sampled_from(["gpt4", "alpaca-7b"])),
        "self-instruct": row(instruction=text, instances=st.lists(row(input=text, output=text), min_size=1 - broken,
                                                                  max_size=2)),
    }


FAMILY_ROWS = {broken: family_rows(broken) for broken in (False, True)}
rows = st.one_of(*FAMILY_ROWS[True].values(), st.dictionaries(st.text(max_size=10), junk, max_size=4))


def assert_valid_trl(parsed_rows: list[Record], kind: str | None) -> None:
    formats = {row_format(record.data) for record in parsed_rows}
    assert len(formats) <= 1
    for record in parsed_rows:
        fmt = row_format(record.data)
        assert kind in (None, fmt.kind)
        assert set(record.data) == {"prompt", *RESPONSE_FIELDS[fmt.kind]}
        for value in record.data.values():
            if fmt.conversational:
                assert value and all(set(m) == {"role", "content"} and isinstance(m["content"], str) for m in value)
            else:
                assert isinstance(value, str)


# A family with rows of its own shape (well-formed or broken), one in ten replaced by any row at all.
family_and_rows = st.tuples(st.sampled_from(sorted(FAMILIES)), st.booleans()).flatmap(
    lambda drawn: st.tuples(
        st.just(drawn[0]), st.lists(rarely(rows, FAMILY_ROWS[drawn[1]][drawn[0]]), min_size=1, max_size=4)
    )
)


@SETTINGS
@given(family_rows=family_and_rows, conversational=st.booleans(), clean=st.booleans())
def test_every_parser_returns_trl_rows_or_raises_data_error(family_rows, conversational, clean):
    family, raw_rows = family_rows
    try:
        records = [Record("fuzz.jsonl", index, data) for index, data in enumerate(raw_rows, 1)]
        parsed = FAMILIES[family].parse(records, conversational)
        assert_valid_trl(parsed.rows, FAMILIES[family].kind)
        report = CleaningReport(rows_in=len(parsed.rows))
        kept = clean_rows(parsed.rows, parsed.kind, report, enabled=clean)
        train, evaluation = split_by_prompt(kept, 0.5, seed=0)
    except DataError as error:
        assert "fuzz.jsonl" in str(error)
        return
    assert len(kept) + sum(report.dropped.values()) == len(parsed.rows)
    assert not {group_key(r.data["prompt"]) for r in train} & {group_key(r.data["prompt"]) for r in evaluation}


broken_line = st.one_of(
    st.text(max_size=30),
    rows.map(json.dumps),
    rows.map(lambda data: json.dumps(data)[: len(json.dumps(data)) // 2]),
    st.sampled_from(["", "[1, 2]", "null", '"\\ud800"', '{"prompt": "\\udc00", "completion": " x"}', "{", "]"]),
)
# JSON Lines of one family's well-formed rows, one line in ten broken; or any bytes at all.
json_bytes = st.one_of(
    st.sampled_from(sorted(FAMILY_ROWS[False])).flatmap(
        lambda family: st.lists(rarely(broken_line, FAMILY_ROWS[False][family].map(json.dumps)), max_size=6)
    ).map(lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")),
    st.binary(max_size=64),
)


def csv_text(table: list[list[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerows([["prompt", "completion"], *table])
    return out.getvalue().encode("utf-8", "surrogatepass")


# A prompt/completion table; one row in ten has the wrong number of cells.
csv_bytes = st.lists(rarely(st.lists(text, max_size=3), st.lists(text, min_size=2, max_size=2)), max_size=5)
files = st.one_of(st.tuples(st.sampled_from([".jsonl", ".json"]), json_bytes),
                  st.tuples(st.just(".csv"), csv_bytes.map(csv_text)))


@SETTINGS
@given(file=files, compression=st.sampled_from(["none", "gzip", "truncated gzip", "named .gz only"]))
def test_any_file_loads_or_raises_data_error(file, compression):
    suffix, content = file
    if compression != "none":
        suffix += ".gz"
    if compression in ("gzip", "truncated gzip"):
        content = gzip.compress(content)
        content = content[: len(content) // 2] if compression == "truncated gzip" else content
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"fuzz{suffix}"
        path.write_bytes(content)
        try:
            loaded = load_dataset(str(path), eval_fraction=0.3)
        except DataError as error:
            assert "fuzz" in str(error)
            return
    assert len(loaded.train) > 0 and loaded.report.rows_out == len(loaded.train) + len(loaded.eval or [])
