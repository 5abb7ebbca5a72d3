"""TRL's dataset formats: recognise them, validate rows, and separate implicit prompts from responses.

Preference rows are ``{"prompt", "chosen", "rejected"}``, demonstration rows ``{"prompt", "completion"}``.
In the *standard* form every field is a string; in the *conversational* form every field is a list of
``{"role", "content"}`` messages: the prompt holds the conversation so far and each response holds the single
assistant message, as TRL does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from avalign.errors import DataError

PREFERENCE = "preference"
DEMONSTRATION = "demonstration"
RESPONSE_FIELDS: dict[str, tuple[str, ...]] = {PREFERENCE: ("chosen", "rejected"), DEMONSTRATION: ("completion",)}

# HH-RLHF transcript markers. The prompt ends with (and includes) the last ASSISTANT marker.
HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"
_TURN = re.compile(r"(\n\nHuman:|\n\nAssistant:)")

EXPECTED_SCHEMAS = (
    "expected columns prompt/chosen/rejected (preference) or prompt/completion (demonstration) "
    "or chosen/rejected transcripts (HH-RLHF, implicit prompt) or messages (conversational demonstration), "
    "or the fields of a known family: info/summaries/choice (summarize-from-feedback), question/answer (GSM8K), "
    "question/ground_truth/<model>.solution (GSM8K model solutions), instruction/output[/generator] "
    "(AlpacaEval, Alpaca), instruction/instances (Self-Instruct)"
)

Messages = list[dict[str, str]]
Text = str | Messages


@dataclass(frozen=True)
class Record:
    """A row together with where it came from, so that any error can name the file and the row."""

    path: str
    row: int  # 1-based: the line of a JSONL file, the element of a JSON array, the row of a table
    data: Mapping[str, Any]

    def __post_init__(self) -> None:
        if not isinstance(self.data, Mapping):
            raise self.error(f"expected an object with named fields, got {type(self.data).__name__}")

    def error(self, message: str, field: str | None = None) -> DataError:
        return DataError(message, path=self.path, row=self.row, field=field)


@dataclass(frozen=True)
class RowFormat:
    kind: str  # PREFERENCE or DEMONSTRATION
    conversational: bool

    @property
    def columns(self) -> tuple[str, ...]:
        return ("prompt", *RESPONSE_FIELDS[self.kind])

    def __str__(self) -> str:
        return f"{'conversational' if self.conversational else 'standard'} {self.kind}"


def schema_error(record: Record) -> DataError:
    """The error for a row that matches no known schema: every schema we accept, and the columns it has."""
    return record.error(f"{EXPECTED_SCHEMAS}; found: {sorted(map(str, record.data))}")


def describe(value: Any) -> str:
    """A short description of an unexpected value for error messages (type and a clipped repr)."""
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"


def detect_format(record: Record) -> RowFormat:
    """Which explicit-prompt TRL format a row is in; DataError listing the schemas when it is none of them."""
    data = record.data
    if "prompt" in data and "chosen" in data and "rejected" in data:
        kind = PREFERENCE
    elif "prompt" in data and "completion" in data:
        if "label" in data:
            raise record.error(
                "unpaired preference rows (prompt/completion/label, as for KTO) are not supported: "
                "AVA needs chosen/rejected pairs or demonstrations",
                field="label",
            )
        kind = DEMONSTRATION
    else:
        raise schema_error(record)
    return RowFormat(kind, conversational=isinstance(data["prompt"], list))


def row_format(row: Mapping[str, Any]) -> RowFormat:
    """The format of a row this package built (already valid)."""
    kind = PREFERENCE if "chosen" in row else DEMONSTRATION
    return RowFormat(kind, conversational=isinstance(row["prompt"], list))


def check_text(record: Record, field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise record.error(f"expected a string, got {describe(value)}", field)
    return value


def check_messages(record: Record, field: str, value: Any) -> Messages:
    """A validated copy of a message list, keeping only role and content (extra keys would break Arrow's schema)."""
    if not isinstance(value, list) or not value:
        raise record.error(f"expected a non-empty list of {{role, content}} messages, got {describe(value)}", field)
    messages = []
    for index, message in enumerate(value):
        if not (
            isinstance(message, Mapping) and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)
        ):
            raise record.error(
                f"message {index} must be {{'role': str, 'content': str}}, got {describe(message)}", field
            )
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


def validate_row(record: Record, fmt: RowFormat) -> dict[str, Text]:
    """The row's TRL columns, type-checked against ``fmt`` (extra columns are dropped)."""
    check = check_messages if fmt.conversational else check_text
    return {field: check(record, field, record.data[field]) for field in fmt.columns}


def user_message(content: str) -> Messages:
    return [{"role": "user", "content": content}]


def assistant_message(content: str) -> Messages:
    return [{"role": "assistant", "content": content}]


def to_conversational(row: Mapping[str, Text], kind: str) -> dict[str, Text]:
    """Wrap a standard row as messages: the prompt becomes one user message, each response one assistant message.

    Responses are stripped: the leading space of the standard form only separates the response from the prompt.
    Rows that are conversational already are returned unchanged.
    """
    if isinstance(row["prompt"], list):
        return dict(row)
    wrapped: dict[str, Text] = {"prompt": user_message(row["prompt"])}
    for field in RESPONSE_FIELDS[kind]:
        wrapped[field] = assistant_message(row[field].strip())
    return wrapped


def split_last_assistant(record: Record, field: str) -> tuple[Text, Text]:
    """Split a full dialogue into (prompt, response) at its last assistant turn.

    A string is an HH-RLHF transcript: the prompt is everything up to and including the last "\\n\\nAssistant:",
    so the response keeps its leading space. A message list must end with the assistant's reply; the prompt is
    every message before it.
    """
    value = record.data[field]
    if isinstance(value, str):
        cut = value.rfind(ASSISTANT)
        if cut < 0:
            raise record.error(
                "transcript has no '\\n\\nAssistant:' turn, so the prompt cannot be separated from the response", field
            )
        cut += len(ASSISTANT)
        return value[:cut], value[cut:]
    messages = check_messages(record, field, value)
    if messages[-1]["role"] != "assistant" or len(messages) < 2:
        raise record.error(
            "expected messages ending with the assistant's reply, after at least one prompt message", field
        )
    return messages[:-1], messages[-1:]


def transcript_messages(record: Record, field: str, prompt: str) -> Messages:
    """An HH-RLHF prompt ("\\n\\nHuman: ...\\n\\nAssistant:") as user/assistant messages, without the final marker."""
    parts = _TURN.split(prompt[: -len(ASSISTANT)])
    if parts[0].strip() or len(parts) < 3:
        raise record.error("transcript must start with '\\n\\nHuman:' to be converted to messages", field)
    return [
        {"role": "user" if marker == HUMAN else "assistant", "content": text.strip()}
        for marker, text in zip(parts[1::2], parts[2::2])
    ]


def text_of(value: Text) -> str:
    """The text of a field: the string itself, or the message contents joined by newlines."""
    return value if isinstance(value, str) else "\n".join(message["content"] for message in value)
