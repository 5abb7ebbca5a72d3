"""Tokenisation of TRL-format rows for the TQR model, with truncation that is counted, never silent.

Rows are preference (prompt/chosen/rejected) or demonstration (prompt/completion), standard or conversational
(conversational rows go through TRL's own chat-template helper). Output columns: ``prompt_ids`` and one
``<response>_ids`` per response column; every response ends with EOS.

Truncation (``max_length`` bounds prompt + response for causal LMs, and each side for encoder-decoders):
the prompt loses tokens from its *start* (the end of the prompt is what the response answers), but never below
``min(len(prompt), max_length // 2)`` tokens; a response that still does not fit is cut from its end, keeping its
final EOS (``too_long="truncate"``), or the row is dropped (``too_long="drop"``). Both are counted in the report.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import numpy as np
from datasets import Dataset
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from trl.data_utils import is_conversational, maybe_apply_chat_template

from ..errors import ConfigError, DataError

TOO_LONG_POLICIES = ("truncate", "drop")


def response_columns(column_names: list[str]) -> tuple[str, ...]:
    """("chosen", "rejected") for preference data, ("completion",) for demonstrations."""
    if {"chosen", "rejected"} <= set(column_names):
        return ("chosen", "rejected")
    if "completion" in column_names:
        return ("completion",)
    raise DataError(
        "expected columns prompt/chosen/rejected (preference) or prompt/completion (demonstration); "
        f"found {sorted(column_names)}",
        field="chosen/rejected or completion",
    )


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give a tokenizer without a pad token one (EOS, else UNK), with a warning: padding is masked everywhere,
    so the choice of id does not change the loss, but the user should know."""
    if tokenizer.pad_token_id is None:
        fallback = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
        if fallback is None:
            raise ConfigError("the tokenizer has no pad, eos or unk token; set tokenizer.pad_token before training")
        warnings.warn(f"tokenizer has no pad token; using '{fallback}' for padding (positions are masked).", stacklevel=2)
        tokenizer.pad_token = fallback
    return tokenizer


def load_chat_template(path: str) -> str:
    """TRL's ``chat_template_path``: a Jinja file's text, or the chat template of the tokenizer at ``path``."""
    if os.path.isfile(path) and path.endswith((".jinja", ".j2")):
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    template = AutoTokenizer.from_pretrained(path).chat_template
    if template is None:
        raise ConfigError(f"chat_template_path: the tokenizer at {path} has no chat template")
    return template


@dataclass
class TokenizeReport:
    rows_in: int = 0
    rows_out: int = 0
    prompt_truncated: int = 0
    response_truncated: int = 0
    dropped_too_long: int = 0
    details: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"tokenized {self.rows_in} rows -> {self.rows_out}: prompt truncated in {self.prompt_truncated}, "
            f"response truncated in {self.response_truncated}, dropped as too long {self.dropped_too_long}"
        )

    def require_rows(self, source: str) -> None:
        """A DataError when nothing is left (instead of a sampler's num_samples=0 error mid-run)."""
        if self.rows_out == 0:
            raise DataError(f"no rows left after tokenisation ({self.summary()})", path=source)


def _check_text_or_messages(value, source: str, row: int, field: str) -> None:
    """A field is a string (standard) or a non-empty list of {"role", "content"} messages (conversational)."""
    if isinstance(value, str):
        return
    if isinstance(value, list) and value and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    ):
        return
    raise DataError(f"expected text or a non-empty list of {{role, content}} messages, got {value!r:.80}",
                    path=source, row=row, field=field)


def _cut_keeping_eos(response: list[int], budget: int) -> list[int]:
    """A response (ending with EOS) in at most ``budget`` tokens: cut at the end, its EOS kept last. Every response a
    reward model scores in use ends with EOS (PPO and scoring append one to a response cut at the length limit), so
    training must not teach it that a final EOS marks the short responses (the ones that were not cut)."""
    return response if len(response) <= budget else response[: budget - 1] + response[-1:]


def _fit(prompt: list[int], responses: list[list[int]], max_length: int, is_encoder_decoder: bool):
    """Apply the truncation rule; returns (prompt, responses, prompt_cut, response_cut)."""
    if is_encoder_decoder:  # the prompt is the encoder input; decoder = start token + response
        new_prompt = prompt[-max_length:]
        new_responses = [_cut_keeping_eos(r, max_length - 1) for r in responses]
    else:
        longest = max(len(r) for r in responses)
        keep = max(max_length - longest, min(len(prompt), max_length // 2))
        new_prompt = prompt[len(prompt) - min(keep, len(prompt)) :]
        new_responses = [_cut_keeping_eos(r, max_length - len(new_prompt)) for r in responses]
    response_cut = any(len(a) != len(b) for a, b in zip(new_responses, responses))
    return new_prompt, new_responses, len(new_prompt) != len(prompt), response_cut


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str, is_encoder_decoder: bool = False) -> list[int]:
    """Token ids of a (templated) prompt as training and generation both see it."""
    ids = tokenizer(prompt, add_special_tokens=not is_encoder_decoder)["input_ids"]
    if not ids and not is_encoder_decoder:
        # A causal LM needs one token of state before the first action.
        ids = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
    return ids


def _tokenize_row(example: dict, index: int, *, tokenizer: PreTrainedTokenizerBase, columns: tuple[str, ...],
                  max_length: int | None, is_encoder_decoder: bool, source: str) -> dict:
    """One row's token ids, and whether the truncation rule cut its prompt or its response (``datasets.map``)."""
    for column in ("prompt", *columns):
        _check_text_or_messages(example[column], source, index + 1, column)
    if is_conversational(example):
        if getattr(tokenizer, "chat_template", None) is None:
            raise DataError("conversational rows need a tokenizer with a chat template", path=source, row=index + 1)
        example = maybe_apply_chat_template(example, tokenizer)
    prompt = prompt_ids(tokenizer, example["prompt"], is_encoder_decoder)
    responses = []
    for column in columns:
        ids = tokenizer(example[column], add_special_tokens=False)["input_ids"]
        if not ids:
            raise DataError("empty response: it has no tokens to learn from", path=source, row=index + 1, field=column)
        responses.append(ids + [tokenizer.eos_token_id])
    prompt_cut = response_cut = False
    if max_length is not None:
        prompt, responses, prompt_cut, response_cut = _fit(prompt, responses, max_length, is_encoder_decoder)
    row = {"prompt_ids": prompt, **{f"{column}_ids": ids for column, ids in zip(columns, responses)}}
    return {**row, "_prompt_cut": prompt_cut, "_response_cut": response_cut}


def tokenize_dataset(
    dataset: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int | None,
    is_encoder_decoder: bool = False,
    too_long: str = "truncate",
    source: str = "dataset",
    num_proc: int | None = None,
) -> tuple[Dataset, TokenizeReport]:
    """Tokenise every row with ``datasets.map`` (``num_proc`` processes; cached by the datasets library when the
    dataset comes from files); raise DataError (with row and field) for an empty response."""
    if too_long not in TOO_LONG_POLICIES:
        raise ConfigError(f"unknown too_long policy '{too_long}'; expected one of {TOO_LONG_POLICIES}")
    columns = response_columns(dataset.column_names)
    if "prompt" not in dataset.column_names:
        raise DataError(f"expected a 'prompt' column; found {sorted(dataset.column_names)}", path=source, field="prompt")
    if max_length is not None and max_length < 4:
        raise ConfigError(f"max_length={max_length} leaves no room for a prompt and a response")
    if len(dataset) == 0:
        raise DataError("no rows to tokenise", path=source)
    ensure_pad_token(tokenizer)
    options = dict(tokenizer=tokenizer, columns=columns, max_length=max_length,
                   is_encoder_decoder=is_encoder_decoder, source=source)
    tokenized = dataset.map(_tokenize_row, fn_kwargs=options, with_indices=True, num_proc=num_proc,
                            remove_columns=dataset.column_names, desc=f"tokenizing {source}")
    prompt_cut, response_cut = (np.asarray(tokenized[name], dtype=bool) for name in ("_prompt_cut", "_response_cut"))
    keep = ~response_cut if too_long == "drop" else np.ones(len(tokenized), dtype=bool)
    report = TokenizeReport(rows_in=len(dataset), rows_out=int(keep.sum()), dropped_too_long=int((~keep).sum()),
                            prompt_truncated=int((prompt_cut & keep).sum()),
                            response_truncated=int((response_cut & keep).sum()))
    report.require_rows(source)
    if not keep.all():
        tokenized = tokenized.select(np.flatnonzero(keep))
    return tokenized.remove_columns(["_prompt_cut", "_response_cut"]), report
