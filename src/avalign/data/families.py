"""One parser per dataset family, each turning raw rows into TRL rows (see formats.py).

Standard-form templates (every prompt ends with a cue such as "Answer:" and every response starts with one space):

- hh-rlhf: the transcript up to and including the last "\\n\\nAssistant:"; the response is the rest.
- tldr: "SUBREDDIT: r/{subreddit}\\n\\nTITLE: {title}\\n\\nPOST: {post}\\n\\nTL;DR:" (Stiennon et al. 2020, TRL's
  tldr datasets); CNN/DM rows: "Article:\\n{article}\\n\\nTL;DR:".
- gsm8k, gsm8k-pairs: "Question: {question}\\nAnswer:".
- alpaca-eval, alpaca-eval-pairs, self-instruct: "### Instruction:\\n{instruction}\\n\\n### Response:", where the
  instruction is followed by "\\n\\n{input}" when the row has a non-empty input (as AlpacaEval built its own).

With ``conversational=True`` the prompt becomes messages: HH-RLHF transcripts are split into their turns, any other
prompt becomes one user message holding the standard prompt (as TRL's tldr-preference does).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from avalign.errors import ConfigError, DataError
from avalign.data.formats import (
    DEMONSTRATION,
    PREFERENCE,
    Record,
    Text,
    assistant_message,
    check_messages,
    detect_format,
    row_format,
    schema_error,
    split_last_assistant,
    to_conversational,
    transcript_messages,
    validate_row,
)

logger = logging.getLogger(__name__)

TLDR_TEMPLATE = "SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:"
CNNDM_TEMPLATE = "Article:\n{article}\n\nTL;DR:"
GSM8K_TEMPLATE = "Question: {question}\nAnswer:"
INSTRUCTION_TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:"

# Field order of the GPT-3 samples in GSM8K's example_model_solutions.jsonl; the pair rule depends on it.
GSM8K_MODEL_FIELDS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")
ALPACA_STRONG_GENERATOR = "gpt4"

# Drop reasons decided while parsing (cleaning.py has the others).
PROMPT_MISMATCH = "prompt differs between chosen and rejected"
UNPAIRED_OUTPUT = "AlpacaEval output without a counterpart"

GSM8K_TEST_REFUSAL = (
    "refusing to build GSM8K pairs whose questions are in the evaluation split: example_model_solutions.jsonl "
    "covers exactly the GSM8K test questions, so training on its pairs and evaluating on GSM8K test leaks the "
    "answers. Evaluate on a split that shares no question with the pairs"
)


@dataclass
class ParseResult:
    rows: list[Record]  # TRL rows, each with the location of the raw row it came from
    kind: str  # PREFERENCE or DEMONSTRATION
    dropped: dict[str, int] = field(default_factory=dict)  # rows a parsing rule dropped, by reason


Parser = Callable[[list[Record], bool], ParseResult]


@dataclass(frozen=True)
class Family:
    name: str
    kind: str | None  # None: decided by the data (the "trl" family)
    matches: Callable[[Mapping[str, Any]], bool]  # whether a raw row has this family's fields
    parse: Parser  # (records, conversational) -> ParseResult
    # Set when training rows whose prompt is in the evaluation split must be refused rather than dropped.
    eval_overlap_error: str | None = None


def _field(record: Record, path: str, expected: type | tuple[type, ...] = str) -> Any:
    """The value at a dotted path ("info.post", "summaries.0.text"), type-checked; DataError naming the path."""
    value: Any = record.data
    for key in path.split("."):
        if isinstance(value, Mapping) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            raise record.error(f"missing (the row has fields {sorted(map(str, record.data))})", path)
    # bool is an int in Python, but true/false is never a valid index or count here.
    if not isinstance(value, expected) or (isinstance(value, bool) and expected is int):
        names = expected.__name__ if isinstance(expected, type) else "/".join(t.__name__ for t in expected)
        raise record.error(f"expected {names}, got {type(value).__name__}", path)
    return value


def _output(source: Record, row: dict[str, Text], kind: str, conversational: bool) -> Record:
    """A standard-form TRL row built from ``source``, in the requested form, keeping the source's location."""
    return Record(source.path, source.row, to_conversational(row, kind) if conversational else row)


def _rows(build: Callable[[Record], dict[str, Text]], kind: str) -> Parser:
    """A parser that turns each raw row into exactly one TRL row."""

    def parse(records: list[Record], conversational: bool) -> ParseResult:
        return ParseResult([_output(record, build(record), kind, conversational) for record in records], kind)

    return parse


# --- HH-RLHF and other implicit-prompt pairs ---------------------------------------------------------------------


def _implicit_pair(record: Record, conversational: bool) -> dict[str, Text] | None:
    """Split chosen/rejected dialogues at their last assistant turn; None when the two prompts differ (HH rule)."""
    for name in ("chosen", "rejected"):
        _field(record, name, (str, list))
    prompt, chosen = split_last_assistant(record, "chosen")
    rejected_prompt, rejected = split_last_assistant(record, "rejected")
    if type(prompt) is not type(rejected_prompt):
        raise record.error("chosen and rejected must both be transcripts (strings) or both be message lists")
    if prompt != rejected_prompt:
        return None
    if conversational and isinstance(prompt, str):
        return {
            "prompt": transcript_messages(record, "chosen", prompt),
            "chosen": assistant_message(chosen.strip()),
            "rejected": assistant_message(rejected.strip()),
        }
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def parse_hh_rlhf(records: list[Record], conversational: bool = False) -> ParseResult:
    """HH-RLHF {"chosen", "rejected"} transcripts. Pairs whose prompts differ are dropped and counted."""
    rows, mismatched = [], 0
    for record in records:
        row = _implicit_pair(record, conversational)
        if row is None:
            mismatched += 1
        else:
            rows.append(Record(record.path, record.row, row))
    return ParseResult(rows, PREFERENCE, {PROMPT_MISMATCH: mismatched} if mismatched else {})


# --- rows already in a TRL format ----------------------------------------------------------------------------------


def _messages_row(record: Record) -> dict[str, Text]:
    """TRL's conversational language-modelling row {"messages": [...]} as a demonstration of its last reply."""
    check_messages(record, "messages", record.data["messages"])  # a list: a string is no conversation here
    prompt, completion = split_last_assistant(record, "messages")
    return {"prompt": prompt, "completion": completion}


def parse_trl(records: list[Record], conversational: bool = False) -> ParseResult:
    """Rows already in a TRL format (explicit or implicit prompt). All rows must share one format."""
    rows: list[Record] = []
    dropped: dict[str, int] = {}
    for record in records:
        data = record.data
        if "prompt" not in data and "messages" in data:
            row: dict[str, Text] | None = _messages_row(record)
        elif "prompt" not in data and "chosen" in data and "rejected" in data:
            row = _implicit_pair(record, conversational)
            if row is None:
                dropped[PROMPT_MISMATCH] = dropped.get(PROMPT_MISMATCH, 0) + 1
                continue
        else:
            fmt = detect_format(record)
            row = validate_row(record, fmt)
            if conversational:
                row = to_conversational(row, fmt.kind)
        if rows and row_format(row) != row_format(rows[0].data):
            raise record.error(
                f"row is {row_format(row)} but row {rows[0].row} is {row_format(rows[0].data)}; "
                "a dataset must use one format"
            )
        rows.append(Record(record.path, record.row, row))
    kind = row_format(rows[0].data).kind if rows else PREFERENCE
    return ParseResult(rows, kind, dropped)


# --- summarize-from-feedback (TL;DR, CNN/DM) -----------------------------------------------------------------------


def _summarize_row(record: Record) -> dict[str, Text]:
    info = _field(record, "info", Mapping)
    if "article" in info:
        prompt = CNNDM_TEMPLATE.format(article=_field(record, "info.article").strip())
    else:
        prompt = TLDR_TEMPLATE.format(
            subreddit=_field(record, "info.subreddit").strip(),
            title=_field(record, "info.title").strip(),
            post=_field(record, "info.post").strip(),
        )
    summaries = _field(record, "summaries", list)
    if len(summaries) != 2:
        raise record.error(f"expected 2 summaries, got {len(summaries)}", "summaries")
    choice = _field(record, "choice", int)
    if choice not in (0, 1):
        raise record.error(f"expected 0 or 1, got {choice}", "choice")
    texts = [_field(record, f"summaries.{index}.text").strip() for index in (0, 1)]
    return {"prompt": prompt, "chosen": " " + texts[choice], "rejected": " " + texts[1 - choice]}


# --- GSM8K ---------------------------------------------------------------------------------------------------------


def _gsm8k_prompt(record: Record) -> str:
    return GSM8K_TEMPLATE.format(question=_field(record, "question").strip())


def _gsm8k_row(record: Record) -> dict[str, Text]:
    return {"prompt": _gsm8k_prompt(record), "completion": " " + _field(record, "answer").strip()}


def parse_gsm8k_pairs(records: list[Record], conversational: bool = False) -> ParseResult:
    """Correct-vs-incorrect pairs from example_model_solutions.jsonl.

    For each question, one pair per incorrect model sample (fields in GSM8K_MODEL_FIELDS order): rejected = that
    sample; chosen = the question's first correct model sample in the same order, or the ground-truth solution
    when no sample is correct. Questions whose samples are all correct give no pair.
    """
    logger.warning("gsm8k-pairs are built on the GSM8K test questions: never evaluate a model trained on them on "
                   "GSM8K test")
    rows = []
    for record in records:
        present = [name for name in GSM8K_MODEL_FIELDS if name in record.data]
        if not present:
            raise record.error(f"no model solutions: expected some of the fields {list(GSM8K_MODEL_FIELDS)}")
        samples = [
            (_field(record, f"{name}.solution").strip(), _field(record, f"{name}.is_correct", bool)) for name in present
        ]
        correct = [solution for solution, is_correct in samples if is_correct]
        chosen = correct[0] if correct else _field(record, "ground_truth").strip()
        prompt = _gsm8k_prompt(record)
        for solution, is_correct in samples:
            if not is_correct:
                row = {"prompt": prompt, "chosen": " " + chosen, "rejected": " " + solution}
                rows.append(_output(record, row, PREFERENCE, conversational))
    return ParseResult(rows, PREFERENCE)


# --- instructions: AlpacaEval, Alpaca, Self-Instruct ---------------------------------------------------------------


def _instruction_prompt(record: Record, input_path: str) -> str:
    """The instruction prompt; a non-empty input (at ``input_path``) follows the instruction after a blank line,
    as AlpacaEval built its instructions from Self-Instruct's."""
    text = _field(record, "instruction").strip()
    parent, _, key = input_path.rpartition(".")
    container = _field(record, parent, Mapping) if parent else record.data
    if container.get(key) is not None and _field(record, input_path).strip():
        text += "\n\n" + _field(record, input_path).strip()
    return INSTRUCTION_TEMPLATE.format(instruction=text)


def _alpaca_prompt(record: Record) -> str:
    return _instruction_prompt(record, "input")


def _alpaca_row(record: Record) -> dict[str, Text]:
    return {"prompt": _alpaca_prompt(record), "completion": " " + _field(record, "output").strip()}


def parse_alpaca_eval_pairs(records: list[Record], conversational: bool = False) -> ParseResult:
    """Weak-vs-strong pairs from AlpacaEval outputs of several generators (e.g. the gpt4 and alpaca-7b files).

    Outputs are matched by instruction: chosen = the gpt4 output, rejected = each other generator's output.
    Outputs whose instruction lacks a gpt4 output or any other output are dropped and counted.
    """
    by_prompt: dict[str, list[tuple[Record, str]]] = {}
    for record in records:
        by_prompt.setdefault(_alpaca_prompt(record), []).append((record, _field(record, "generator")))
    generators = sorted({generator for group in by_prompt.values() for _, generator in group})
    if ALPACA_STRONG_GENERATOR not in generators or len(generators) < 2:
        raise DataError(
            f"alpaca-eval-pairs needs outputs of generator '{ALPACA_STRONG_GENERATOR}' and of at least one other "
            f"generator (e.g. the directory holding both model_outputs files); found generators {generators}",
            path=records[0].path if records else None,
        )
    rows, unpaired = [], 0
    for prompt, group in by_prompt.items():
        strong = [record for record, generator in group if generator == ALPACA_STRONG_GENERATOR]
        weak = [record for record, generator in group if generator != ALPACA_STRONG_GENERATOR]
        if not strong or not weak:
            unpaired += len(group)
            continue
        unpaired += len(strong) - 1  # one gpt4 output per instruction is enough; extra ones are counted, not used
        chosen = " " + _field(strong[0], "output").strip()
        for record in weak:
            row = {"prompt": prompt, "chosen": chosen, "rejected": " " + _field(record, "output").strip()}
            rows.append(_output(record, row, PREFERENCE, conversational))
    return ParseResult(rows, PREFERENCE, {UNPAIRED_OUTPUT: unpaired} if unpaired else {})


def _self_instruct_row(record: Record) -> dict[str, Text]:
    """A Self-Instruct task: its instruction and first instance's input are the prompt, that instance's output the
    completion."""
    if not _field(record, "instances", list):
        raise record.error("expected at least one instance", "instances")
    prompt = _instruction_prompt(record, "instances.0.input")
    return {"prompt": prompt, "completion": " " + _field(record, "instances.0.output").strip()}


# --- registry and detection ----------------------------------------------------------------------------------------


def _has(*fields: str) -> Callable[[Mapping[str, Any]], bool]:
    return lambda data: all(name in data for name in fields)


def _is_trl(data: Mapping[str, Any]) -> bool:
    if "prompt" in data:
        return "completion" in data or ("chosen" in data and "rejected" in data)
    return "messages" in data or ("chosen" in data and "rejected" in data and not isinstance(data["chosen"], str))


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family("hh-rlhf", PREFERENCE, lambda d: _has("chosen", "rejected")(d) and "prompt" not in d
               and isinstance(d["chosen"], str), parse_hh_rlhf),
        Family("tldr", PREFERENCE, _has("info", "summaries", "choice"), _rows(_summarize_row, PREFERENCE)),
        Family("gsm8k", DEMONSTRATION, _has("question", "answer"), _rows(_gsm8k_row, DEMONSTRATION)),
        Family("gsm8k-pairs", PREFERENCE, _has("question", "ground_truth"), parse_gsm8k_pairs, GSM8K_TEST_REFUSAL),
        Family("alpaca-eval", DEMONSTRATION, _has("instruction", "output"), _rows(_alpaca_row, DEMONSTRATION)),
        Family("alpaca-eval-pairs", PREFERENCE, _has("instruction", "output", "generator"), parse_alpaca_eval_pairs),
        Family("self-instruct", DEMONSTRATION, _has("instruction", "instances"),
               _rows(_self_instruct_row, DEMONSTRATION)),
        Family("trl", None, _is_trl, parse_trl),
    )
}
# alpaca-eval-pairs is never detected: the same rows are demonstrations unless pairs are asked for by name.
_DETECTION_ORDER = ("trl", "hh-rlhf", "tldr", "gsm8k-pairs", "gsm8k", "self-instruct", "alpaca-eval")


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ConfigError(f"unknown dataset family '{name}'; choose one of: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def detect_family(record: Record) -> Family:
    """The family whose fields the row has; DataError listing the expected schemas when none fits."""
    for name in _DETECTION_ORDER:
        if FAMILIES[name].matches(record.data):
            return FAMILIES[name]
    raise schema_error(record)
