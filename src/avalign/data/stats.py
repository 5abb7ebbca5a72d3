"""Dataset statistics: rows, what cleaning removed, prompt/response length percentiles and truncation at a max_length.

Lengths are tokens of a given tokenizer (special tokens excluded) or, without one, UTF-8 bytes. For conversational
rows the length is that of the message contents joined by newlines, without chat-template tokens.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass
from typing import Any

import numpy as np

from avalign.data.cleaning import CleaningReport
from avalign.data.formats import RESPONSE_FIELDS, text_of
from avalign.data.loading import LoadedData
from avalign.errors import ConfigError

MARKDOWN_HEADER = (
    "| dataset | family | kind | rows in | rows out (train / eval) | dropped | prompt p50 / p90 / p99 / max "
    "| response p50 / p90 / p99 / max |\n| --- | --- | --- | ---: | ---: | --- | ---: | ---: |"
)


@dataclass(frozen=True)
class Lengths:
    p50: int
    p90: int
    p99: int
    max: int

    @classmethod
    def of(cls, values: list[int]) -> Lengths:
        """Nearest-rank percentiles (numpy's inverted_cdf: the smallest value with at least p% of the values at or
        below it), so each is a length that occurs."""
        p50, p90, p99 = np.percentile(values, (50, 90, 99), method="inverted_cdf")
        return cls(int(p50), int(p90), int(p99), max(values))

    def __str__(self) -> str:
        return f"{self.p50} / {self.p90} / {self.p99} / {self.max}"


@dataclass
class DatasetStats:
    name: str
    family: str
    kind: str
    conversational: bool
    train_rows: int
    eval_rows: int
    report: CleaningReport
    unit: str  # "UTF-8 bytes" or "tokens (<tokenizer>)"
    lengths: dict[str, Lengths]  # "prompt", each response field, and "response" (all response fields pooled)
    max_length: int | None
    truncated: int | None  # rows whose prompt + longest response exceeds max_length

    def render(self) -> str:
        rows = self.train_rows + self.eval_rows
        lines = [
            f"dataset: {self.name}",
            f"family: {self.family} ({'conversational' if self.conversational else 'standard'} {self.kind})",
            f"rows: {rows} (train {self.train_rows}, eval {self.eval_rows})",
            f"cleaning: {self.report.summary()}",
            f"lengths in {self.unit}"
            + ("" if self.unit.startswith("tokens") else " (no --model_name_or_path given, so no tokenizer)")
            + (", of the message contents" if self.conversational else "") + ":",
            f"  {'field':<12}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}",
        ]
        fields = ("prompt", *RESPONSE_FIELDS[self.kind])
        lines += [f"  {name:<12}" + "".join(f"{value:>8}" for value in astuple(self.lengths[name])) for name in fields]
        if self.max_length is not None and self.truncated is not None:
            lines.append(
                f"max_length {self.max_length}: {self.truncated} of {rows} rows ({100 * self.truncated / rows:.1f}%) "
                "have prompt + longest response longer than that and would be truncated"
            )
        return "\n".join(lines)

    def markdown_row(self) -> str:
        dropped = ", ".join(f"{count} {reason}" for reason, count in self.report.dropped.items()) or "none"
        return (
            f"| {self.name} | {self.family} | {self.kind} | {self.report.rows_in} | {self.report.rows_out} "
            f"({self.train_rows} / {self.eval_rows}) | {dropped} | {self.lengths['prompt']} "
            f"| {self.lengths['response']} |"
        )


def load_tokenizer(name_or_path: str) -> Any:
    """AutoTokenizer.from_pretrained, with failures reported as ConfigError."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load a tokenizer from '{name_or_path}': {exc}") from exc


def compute_stats(name: str, data: LoadedData, *, tokenizer: Any = None, max_length: int | None = None) -> DatasetStats:
    """Statistics over the train and eval rows of ``data`` together."""
    splits = [data.train] + ([data.eval] if data.eval is not None else [])
    fields = ("prompt", *RESPONSE_FIELDS[data.kind])
    texts = {field: [text_of(value) for split in splits for value in split[field]] for field in fields}
    if tokenizer is None:
        unit = "UTF-8 bytes"
        counts = {field: [len(text.encode("utf-8", "surrogatepass")) for text in column]
                  for field, column in texts.items()}
    else:
        unit = f"tokens ({getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__})"
        counts = {field: [len(ids) for ids in tokenizer(column, add_special_tokens=False)["input_ids"]]
                  for field, column in texts.items()}
    responses = fields[1:]
    lengths = {field: Lengths.of(column) for field, column in counts.items()}
    lengths["response"] = Lengths.of([length for field in responses for length in counts[field]])
    truncated = None
    if max_length is not None:
        totals = [prompt + max(counts[field][index] for field in responses)
                  for index, prompt in enumerate(counts["prompt"])]
        truncated = sum(total > max_length for total in totals)
    return DatasetStats(
        name=name, family=data.family, kind=data.kind, conversational=isinstance(data.train[0]["prompt"], list),
        train_rows=len(data.train), eval_rows=len(data.eval) if data.eval is not None else 0, report=data.report,
        unit=unit, lengths=lengths, max_length=max_length, truncated=truncated,
    )
