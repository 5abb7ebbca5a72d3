"""`load_dataset`: the one entry point from a file, a directory or a Hugging Face dataset id to TRL-format datasets.

Local .jsonl/.json files (gzip too) are read here rather than by `datasets`, so that a
bad row is reported with its file and line number. Tables (.csv, .parquet, gzipped or not) are read with the
standard csv module and pyarrow; hub ids and `save_to_disk` folders go through `datasets`.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import itertools
import json
import logging
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import datasets
import pyarrow
import pyarrow.parquet

from avalign.data.cleaning import CleaningReport, clean_rows
from avalign.data.families import Family, detect_family, get_family
from avalign.data.formats import Record, row_format
from avalign.data.splits import check_fraction, fold_range, remove_eval_prompts, split_by_prompt
from avalign.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
# A file or split with one of these names is the predefined training or evaluation split.
TRAIN_SPLIT = "train"
EVAL_SPLITS = ("test", "validation", "valid", "eval", "dev")
_SPLIT_NAME = re.compile(r"^(train|test|validation|valid|eval|dev)(?![a-z])", re.IGNORECASE)
# A JSON \u escape of a lone surrogate: json.loads accepts it, but the string can't be encoded as UTF-8 later.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


@dataclass
class LoadedData:
    """What load_dataset returns: TRL-format train/eval datasets, their kind, the parser used and the cleaning counts."""

    train: datasets.Dataset
    eval: datasets.Dataset | None
    kind: str  # "preference" or "demonstration"
    family: str  # which parser was used
    report: CleaningReport  # counts of what was dropped and why


# --- reading local files -------------------------------------------------------------------------------------------


def _base_suffix(path: Path) -> str:
    suffixes = [suffix.lower() for suffix in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


@contextlib.contextmanager
def _open_binary(path: Path) -> Iterator[BinaryIO]:
    """The file's bytes, decompressed when it is named .gz or starts with gzip's magic number; read errors become
    DataError."""
    with path.open("rb") as raw:
        compressed = path.suffix.lower() == ".gz" or raw.peek(2)[:2] == b"\x1f\x8b"
        try:
            yield gzip.GzipFile(fileobj=raw) if compressed else raw
        except (OSError, EOFError, zlib.error) as exc:
            what = "cannot decompress: the gzip data is corrupt or truncated" if compressed else "cannot read the file"
            raise DataError(f"{what} ({exc})", path=str(path)) from exc


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, decoded line) for every line; non-UTF-8 bytes raise DataError naming the line and column."""
    with _open_binary(path) as stream:
        for number, raw in enumerate(stream, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at column {exc.start + 1}",
                                path=str(path), row=number) from None
            yield number, line.removeprefix("\ufeff") if number == 1 else line


def _json_value(path: Path, number: int, text: str) -> Any:
    text = text.rstrip()  # so that an error at the end of the text is on its last line, not the one after
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"malformed JSON: {exc.msg} (column {exc.colno}); expected one JSON object per line, or a JSON array",
            path=str(path), row=number + exc.lineno - 1,
        ) from None
    except RecursionError:
        raise DataError("JSON nested too deeply", path=str(path), row=number) from None
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise DataError("contains an unpaired UTF-16 surrogate escape (\\udXXX)",
                            path=str(path), row=number) from None
    return value


def _iter_json(path: Path) -> Iterator[Record]:
    """JSON Lines (row = line number), or for a .json file one JSON array of objects (row = element number); JSON
    Lines are read one line at a time."""
    with contextlib.closing(_text_lines(path)) as lines:  # closing: a caller that stops early must close the file
        first = True
        for number, line in lines:
            if not line.strip():
                continue
            if first and _base_suffix(path) == ".json" and line.lstrip().startswith("["):
                array = _json_value(path, number, line + "".join(rest for _, rest in lines))
                if not array:
                    raise DataError("the JSON array is empty", path=str(path))
                yield from (Record(str(path), index, value) for index, value in enumerate(array, 1))
                return
            first = False
            yield Record(str(path), number, _json_value(path, number, line))


def _read_json(path: Path, max_rows: int | None) -> list[Record]:
    return list(itertools.islice(_iter_json(path), max_rows))


def _read_csv(path: Path, max_rows: int | None) -> list[Record]:
    """A CSV file with a header row; row = the line where the row ends. Every value stays a string."""
    records: list[Record] = []
    with contextlib.closing(_text_lines(path)) as lines:
        reader = csv.DictReader(line for _, line in lines)
        try:
            for row in reader:
                if None in row or None in row.values():
                    raise DataError(f"has a different number of fields than the header {reader.fieldnames}",
                                    path=str(path), row=reader.line_num)
                records.append(Record(str(path), reader.line_num, row))
                if max_rows is not None and len(records) >= max_rows:
                    break
        except csv.Error as exc:
            raise DataError(f"malformed CSV ({exc})", path=str(path), row=reader.line_num) from None
    return records


def _read_parquet(path: Path, max_rows: int | None) -> list[Record]:
    with _open_binary(path) as stream:
        data = stream.read()
    try:
        table = pyarrow.parquet.read_table(io.BytesIO(data))
    except (pyarrow.ArrowException, OSError) as exc:
        raise DataError(f"cannot read Parquet ({exc})", path=str(path)) from None
    return [Record(str(path), index, row) for index, row in enumerate(table.slice(0, max_rows).to_pylist(), 1)]


_READERS = {".jsonl": _read_json, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}


def read_file(path: str | Path, max_rows: int | None = None) -> list[Record]:
    """The rows of one local data file (.jsonl, .json, .csv, .parquet, each optionally .gz), with their locations."""
    path = Path(path)
    reader = _READERS.get(_base_suffix(path))
    if reader is None:
        raise DataError(f"unsupported file type; expected one of {', '.join(DATA_SUFFIXES)} (optionally .gz)",
                        path=str(path))
    records = reader(path, max_rows)
    if not records:
        raise DataError("the file is empty (no rows)", path=str(path))
    return records


def iter_records(name_or_path: str, max_rows: int | None = None) -> Iterator[Record]:
    """Rows of a file, directory, saved dataset or hub id with their locations, as they are (no parsing); a local
    .jsonl/.json file is streamed, so a caller that writes as it reads needs memory independent of its length."""
    path = Path(name_or_path).expanduser()
    if path.is_file() and _base_suffix(path) in (".jsonl", ".json"):
        records = itertools.islice(_iter_json(path), max_rows)
        first = next(records, None)
        if first is None:
            raise DataError("the file is empty (no rows)", path=str(path))
        yield first
        yield from records
        return
    source = _read_source(name_or_path, None, max_rows)
    yield from source.train
    yield from source.eval or ()


# --- sources: a file, a directory, a saved DatasetDict or a hub id --------------------------------------------------


@dataclass
class _Source:
    train: list[Record]
    eval: list[Record] | None  # the predefined evaluation split, when the source has one
    family: Family
    label: str


def _dataset_records(label: str, loaded: Any, max_rows: int | None, train_split: str | None = None,
                     test_split: str | None = None) -> tuple[list[Record], list[Record] | None]:
    """Rows of a datasets.Dataset or DatasetDict: the named splits, or by default its train split (or only split)
    and its test/validation split."""
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({TRAIN_SPLIT: loaded})
    for name in (train_split, test_split):
        if name is not None and name not in loaded:
            raise DataError(f"no split '{name}'; splits: {list(loaded)}", path=label)
    train_name = train_split or (TRAIN_SPLIT if TRAIN_SPLIT in loaded else (next(iter(loaded)) if len(loaded) == 1 else None))
    if train_name is None:
        raise DataError(f"no '{TRAIN_SPLIT}' split to train on; splits: {list(loaded)}", path=label)
    eval_name = test_split or next((name for name in EVAL_SPLITS if name in loaded and name != train_name), None)

    def rows(split: str) -> list[Record]:
        dataset = loaded[split]
        if max_rows is not None:
            dataset = dataset.select(range(min(max_rows, len(dataset))))
        if len(dataset) == 0:
            raise DataError(f"split '{split}' is empty", path=label)
        return [Record(f"{label} [{split}]", index, row) for index, row in enumerate(dataset, 1)]

    return rows(train_name), rows(eval_name) if eval_name else None


def _split_role(path: Path) -> str | None:
    match = _SPLIT_NAME.match(path.name)
    if match is None:
        return None
    return TRAIN_SPLIT if match.group(1).lower() == TRAIN_SPLIT else "eval"


def _read_directory(path: Path, family: Family | None, max_rows: int | None) -> _Source:
    """A folder of data files. With train*/test* files those are the splits (other files are ignored); otherwise
    every file is training data. All files used must be of one family (or of ``family``, when given)."""
    files = sorted(child for child in path.iterdir() if child.is_file() and _base_suffix(child) in DATA_SUFFIXES)
    if not files:
        raise DataError(f"no data files ({', '.join(DATA_SUFFIXES)}, optionally .gz) in the directory", path=str(path))
    records = {file: read_file(file, max_rows) for file in files}
    detected = {file: detect_family(records[file][0]).name for file in files}
    if family is not None:
        files = [file for file in files if family.matches(records[file][0].data)]
        if not files:
            raise DataError(f"no file has the fields of family '{family.name}'; detected: "
                            f"{ {file.name: name for file, name in detected.items()} }", path=str(path))
    train_files = [file for file in files if _split_role(file) == TRAIN_SPLIT]
    eval_files = [file for file in files if _split_role(file) == "eval"] if train_files else []
    used = train_files + eval_files if train_files else files
    if len(used) < len(files):
        logger.info("%s: using the split files %s; ignoring %s", path, [f.name for f in used],
                    [f.name for f in files if f not in used])
    families = {detected[file] for file in used}
    if family is None and len(families) > 1:
        raise DataError(f"the files hold different families ({ {file.name: detected[file] for file in used} }); "
                        "pass family=... or point at one file", path=str(path))

    def concatenated(group: list[Path]) -> list[Record]:
        return [record for file in group for record in records[file]][:max_rows]

    return _Source(
        train=concatenated(train_files or files),
        eval=concatenated(eval_files) if eval_files else None,
        family=family or get_family(detected[used[0]]),
        label=str(path),
    )


def _looks_local(name: str) -> bool:
    """Whether a name that does not exist was meant as a local path (then: no such file) rather than a hub id."""
    return name.startswith((".", "/", "~")) or "\\" in name or Path(name).suffix.lower() in (*DATA_SUFFIXES, ".gz")


def _read_source(name_or_path: str, family_name: str | None, max_rows: int | None, config_name: str | None = None,
                 splits: tuple[str | None, str | None] = (None, None)) -> _Source:
    family = get_family(family_name) if family_name else None
    path = Path(name_or_path).expanduser()
    if path.is_file():
        records = read_file(path, max_rows)
        return _Source(records, None, family or detect_family(records[0]), str(path))
    if path.is_dir() and not ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        return _read_directory(path, family, max_rows)
    if not path.is_dir() and _looks_local(name_or_path):
        raise DataError("no such file or directory", path=name_or_path)
    try:
        loaded = datasets.load_from_disk(str(path)) if path.is_dir() else datasets.load_dataset(name_or_path, config_name)
    except Exception as exc:  # datasets raises many types (network, missing repo, bad files); all mean "unusable"
        raise DataError(f"cannot load it as a saved or Hugging Face dataset ({type(exc).__name__}: {exc})",
                        path=name_or_path) from exc
    train, evaluation = _dataset_records(name_or_path, loaded, max_rows, *splits)
    return _Source(train, evaluation, family or detect_family(train[0]), name_or_path)


# --- the entry point -----------------------------------------------------------------------------------------------


def _parse_and_clean(family: Family, records: list[Record], *, conversational: bool, clean: bool,
                     report: CleaningReport) -> tuple[list[Record], str]:
    parsed = family.parse(records, conversational)
    report.rows_in += len(parsed.rows) + sum(parsed.dropped.values())
    for reason, count in parsed.dropped.items():
        report.drop(reason, count)
    return clean_rows(parsed.rows, parsed.kind, report, enabled=clean), parsed.kind


def _describe(rows: list[Record], kind: str) -> str:
    return str(row_format(rows[0].data)) if rows else kind


def load_dataset(
    name_or_path: str,
    *,
    family: str | None = None,
    eval_fraction: float = 0.1,
    seed: int = 0,
    clean: bool = True,
    conversational: bool = False,
    max_rows: int | None = None,
    eval_name_or_path: str | None = None,
    eval_fold: tuple[int, int] | None = None,
    dataset_config: str | None = None,
    train_split: str | None = None,
    test_split: str | None = None,
) -> LoadedData:
    """Load a dataset of any supported family as TRL-format train/eval datasets.

    ``name_or_path``: a local data file, a directory of them, a ``save_to_disk`` folder or a Hugging Face dataset id.
    ``family``: the parser (see families.FAMILIES); default: detected from the fields of the first row.
    The evaluation split is, in order of preference: ``eval_name_or_path`` (its test split if it has one, else all
    of it; its family is always detected), the source's own test/validation split, or the rows whose prompt hashes
    below ``eval_fraction`` (splits.py); ``eval_fold=(f, k)`` takes fold f of a k-fold split by prompt instead,
    so that over the k folds every row is evaluated exactly once. Training rows whose prompt is also in a separate evaluation split are
    dropped and counted, except for gsm8k-pairs, which refuses. ``max_rows`` caps the rows read per split.
    ``clean``: drop empty responses, chosen == rejected and duplicates (counted in ``report``).
    ``conversational``: return messages instead of strings.
    ``dataset_config``, ``train_split``, ``test_split`` (TRL's dataset_config / dataset_train_split /
    dataset_test_split): the hub dataset's configuration and, for hub or saved datasets, the splits to use.
    """
    check_fraction(eval_fraction)
    if max_rows is not None and max_rows < 1:
        raise ConfigError(f"max_rows must be at least 1, got {max_rows}")
    source = _read_source(name_or_path, family, max_rows, dataset_config, (train_split, test_split))
    report = CleaningReport()
    options = {"conversational": conversational, "clean": clean, "report": report}
    train, kind = _parse_and_clean(source.family, source.train, **options)

    if eval_name_or_path is not None:
        eval_source = _read_source(eval_name_or_path, None, max_rows)
        separate_eval = (eval_source.family, eval_source.eval or eval_source.train, eval_source.label)
    else:
        separate_eval = (source.family, source.eval, source.label) if source.eval is not None else None
    if separate_eval is None:
        eval_range = fold_range(*eval_fold) if eval_fold is not None else None
        train, evaluation = split_by_prompt(train, eval_fraction, seed, eval_range)
    elif eval_fold is not None:
        raise ConfigError(f"eval_fold needs a dataset without its own evaluation split; {source.label} has one")
    else:
        eval_family, eval_records, eval_label = separate_eval
        evaluation, eval_kind = _parse_and_clean(eval_family, eval_records, **options)
        train = remove_eval_prompts(train, evaluation, report, refusal=source.family.eval_overlap_error)
        formats = {str(row_format(rows[0].data)) for rows in (train, evaluation) if rows}
        if eval_kind != kind or len(formats) > 1:
            raise DataError(f"the evaluation rows ({eval_label}) are {_describe(evaluation, eval_kind)} rows but the "
                            f"training rows ({source.label}) are {_describe(train, kind)} rows; both need one format")

    report.rows_out = len(train) + len(evaluation)
    if not train:
        raise DataError(f"no training rows: {len(evaluation)} rows are in the evaluation split ({report.summary()})",
                        path=source.label)
    log = logger.warning if report.dropped else logger.info
    log("%s (%s): %s; train %d, eval %d",
        source.label, source.family.name, report.summary(), len(train), len(evaluation))
    return LoadedData(
        train=datasets.Dataset.from_list([record.data for record in train]),
        eval=datasets.Dataset.from_list([record.data for record in evaluation]) if evaluation else None,
        kind=kind,
        family=source.family.name,
        report=report,
    )
