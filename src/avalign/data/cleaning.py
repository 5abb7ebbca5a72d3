"""Cleaning that is counted, never silent: every dropped row is tallied under a reason in a CleaningReport."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import datasets

from avalign.data.formats import PREFERENCE, RESPONSE_FIELDS, Record, detect_format, text_of, validate_row
from avalign.errors import DataError

EMPTY_RESPONSE = "empty response"
SAME_RESPONSES = "chosen == rejected"
DUPLICATE = "duplicate row"


@dataclass
class CleaningReport:
    """What loading dropped and why. ``rows_in`` counts candidate rows (what the parsers built plus what their
    own rules dropped), so ``rows_in == rows_out + sum(dropped.values())``."""

    rows_in: int = 0
    rows_out: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str, count: int = 1) -> None:
        if count:
            self.dropped[reason] = self.dropped.get(reason, 0) + count

    def summary(self) -> str:
        if not self.dropped:
            return f"{self.rows_in} rows in, {self.rows_out} out; nothing dropped"
        reasons = ", ".join(f"{count} {reason}" for reason, count in self.dropped.items())
        return f"{self.rows_in} rows in, {self.rows_out} out; dropped {sum(self.dropped.values())}: {reasons}"


def clean_rows(rows: list[Record], kind: str, report: CleaningReport, *, enabled: bool = True) -> list[Record]:
    """Drop, in this order, rows with an empty response (after strip), preference pairs whose chosen equals
    rejected (after strip), and exact duplicates of an earlier row; each counted in ``report``.

    With ``enabled=False`` nothing is dropped, but an empty response is still an error: such a row cannot be trained on.
    """
    fields = RESPONSE_FIELDS[kind]
    seen: set[str] = set()
    kept = []
    for record in rows:
        texts = [text_of(record.data[name]).strip() for name in fields]
        empty = next((name for name, text in zip(fields, texts) if not text), None)
        if empty is not None and not enabled:
            raise record.error("response is empty; fix the row, or load with clean=True to drop such rows", empty)
        if enabled:
            if empty is not None:
                report.drop(EMPTY_RESPONSE)
                continue
            if kind == PREFERENCE and texts[0] == texts[1]:
                report.drop(SAME_RESPONSES)
                continue
            key = json.dumps(record.data, sort_keys=True, ensure_ascii=False)
            if key in seen:
                report.drop(DUPLICATE)
                continue
            seen.add(key)
        kept.append(record)
    return kept


def require_dataset(dataset, source: str) -> None:
    if not isinstance(dataset, datasets.Dataset):
        raise DataError(f"expected a datasets.Dataset (e.g. Dataset.from_list(rows)), got {type(dataset).__name__}",
                        path=source)


def clean_dataset(dataset: datasets.Dataset, source: str) -> tuple[datasets.Dataset, CleaningReport]:
    """The loader's cleaning (``clean_rows``) for rows given from Python: every row type-checked (a DataError naming
    the row and field), then empty responses, chosen == rejected and duplicates dropped and counted."""
    require_dataset(dataset, source)
    records = [Record(source, row, data) for row, data in enumerate(dataset, 1)]
    report = CleaningReport(rows_in=len(records), rows_out=len(records))
    if not records:
        return dataset, report
    kind = detect_format(records[0]).kind
    for record in records:
        validate_row(record, detect_format(record))
    kept = clean_rows(records, kind, report)
    report.rows_out = len(kept)
    if len(kept) == len(records):
        return dataset, report
    return datasets.Dataset.from_list([dict(record.data) for record in kept]), report
