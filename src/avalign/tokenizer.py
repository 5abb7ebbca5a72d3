"""Offline tokenizers: train a byte-level BPE tokenizer on local text, no Hub download needed.

Byte-level BPE (as in GPT-2) maps every UTF-8 byte to a symbol before merging, so any text round-trips exactly and
no input ever becomes `<unk>`. The result is a `PreTrainedTokenizerFast` that `AutoTokenizer.from_pretrained` reloads.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from avalign.errors import ConfigError, DataError

DEFAULT_SPECIAL_TOKENS: Mapping[str, str] = {
    "bos_token": "<|startoftext|>",
    "eos_token": "<|endoftext|>",
    # Distinct from EOS: collators mask pad positions out of the loss, which must not hide the real EOS.
    "pad_token": "<|pad|>",
    "unk_token": "<|unk|>",
}
_PREFERENCE_FIELDS = ("prompt", "chosen", "rejected")
_SUFFIXES = (".txt", ".jsonl", ".jsonl.gz")


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    output_dir: str | None = None,
    *,
    special_tokens: Mapping[str, str] = DEFAULT_SPECIAL_TOKENS,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with at most vocab_size tokens (special tokens included).

    special_tokens maps roles (bos_token, eos_token, pad_token, unk_token) to token strings; they take the first ids
    in the mapping's order. No BOS/EOS is added on encode (as GPT-2); add them explicitly where a format needs them.
    With output_dir, the tokenizer is also saved there with `save_pretrained`.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    specials = list(dict.fromkeys(special_tokens.values()))
    if vocab_size < len(alphabet) + len(specials):
        raise ConfigError(
            f"vocab_size={vocab_size} is too small: a byte-level BPE needs {len(alphabet)} byte symbols "
            f"plus {len(specials)} special tokens"
        )
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
    )
    counted = _Counted(texts)
    backend.train_from_iterator(counted, trainer=trainer)
    if counted.count == 0:
        raise DataError("no training texts were given")

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False, **special_tokens)
    if output_dir is not None:
        tokenizer.save_pretrained(output_dir)
    return tokenizer


class _Counted:
    """Wraps an iterable of texts and counts them, so an empty corpus is reported instead of silently trained on."""

    def __init__(self, texts: Iterable[str]):
        self.texts, self.count = texts, 0

    def __iter__(self) -> Iterator[str]:
        for text in self.texts:
            self.count += 1
            yield text


def read_texts(paths: Sequence[str | Path], text_fields: Sequence[str] | None = None) -> Iterator[str]:
    """Yield training texts from .txt (one text per non-blank line) and .jsonl / .jsonl.gz files.

    For JSON rows: with text_fields, one text per row, the fields joined by newlines; otherwise preference rows
    (prompt, chosen, rejected) give prompt+chosen and prompt+rejected (as TRL concatenates them) and any other row
    gives each of its string fields. A field may also hold a list of chat messages; their contents are used.
    Raises DataError naming the file when it is missing, of an unknown type, malformed, or holds no text.
    """
    paths = [str(path) for path in paths]
    # Check every path first: a typo in the last --input should not surface after minutes of reading the others.
    for path in paths:
        if not Path(path).is_file():
            raise DataError("no such file", path=path)
        if not path.endswith(_SUFFIXES):
            raise DataError(f"unsupported file type (expected {', '.join(_SUFFIXES)})", path=path)
    for path in paths:
        count = 0
        for count, text in enumerate(_texts_in_file(path, text_fields), start=1):
            yield text
        if count == 0:
            raise DataError("contains no text", path=path)


def _texts_in_file(path: str, text_fields: Sequence[str] | None) -> Iterator[str]:
    if path.endswith(".txt"):
        with open(path, encoding="utf-8") as lines:
            yield from (line.rstrip("\n") for line in lines if line.strip())
        return
    from avalign.data.loading import read_file  # the project's one JSONL reader, with line-numbered errors

    for record in read_file(path):
        yield from row_texts(record.data, text_fields, path, record.row)


def row_texts(
    row: Mapping, text_fields: Sequence[str] | None = None, path: str = "dataset", row_number: int | None = None
) -> Iterator[str]:
    """Training texts of one row: the given fields joined, or by default prompt+chosen and prompt+rejected for
    preference rows and every text field otherwise."""
    if text_fields:
        parts = []
        for field in text_fields:
            text = _as_text(row.get(field))
            if text is None:
                raise DataError("missing or not text", path=path, row=row_number, field=field)
            parts.append(text)
        yield "\n".join(parts)
        return
    texts = {field: text for field, value in row.items() if (text := _as_text(value))}
    if all(field in texts for field in _PREFERENCE_FIELDS):
        yield texts["prompt"] + texts["chosen"]
        yield texts["prompt"] + texts["rejected"]
    else:
        yield from texts.values()


def _as_text(value: object) -> str | None:
    """A string field as is; a conversational field (list of {"content": str} messages) as its joined contents."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(_is_message(item) for item in value):
        return "\n".join(message["content"] for message in value)
    return None


def _is_message(item: object) -> bool:
    return isinstance(item, dict) and isinstance(item.get("content"), str)
