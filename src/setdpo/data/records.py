"""Reading tabular files (CSV, TSV, Parquet, JSONL) and JSON objects (`json_objects`) with
errors that name file, line and problem.

Every value is read as text first; numbers are converted explicitly so that a bad value
can be reported with the line it came from.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from setdpo.errors import InputError

EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".jsonl": "jsonl"}
RECBOLE_EXTENSIONS = (".inter", ".item", ".user")  # `sources.recbole_fields` reads them


@dataclass
class RecordFile:
    """A file read into a frame of text values, able to say where each row came from."""

    path: Path
    frame: pd.DataFrame
    lines: np.ndarray | None  # 1-based line of each row (None: Parquet, rows are counted)

    def where(self, row: int) -> str:
        if self.lines is None:
            return f"{self.path}, row {row + 1}"
        return f"{self.path}, line {int(self.lines[row])}"

    def require(self, columns: list[str]) -> None:
        """Raise if a named column is missing."""
        for column in columns:
            if column not in self.frame.columns:
                raise InputError(
                    f"{self.path}: no column {column!r} (columns: {list(self.frame.columns)})"
                )

    def text(self, column: str, what: str) -> np.ndarray:
        """Column as non-empty strings (object array)."""
        values = self.frame[column]
        missing = values.isna().to_numpy()
        strings = values.astype(str).str.strip()
        empty = missing | (strings == "").to_numpy()
        if empty.any():
            raise InputError(f"{self.where(int(np.argmax(empty)))}: empty {what} ({column!r})")
        return strings.to_numpy(dtype=object)

    def numbers(self, column: str, what: str) -> np.ndarray:
        """Column as float64; a value that is not a number is an error naming its line."""
        values = self.frame[column]
        numeric = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(numeric)
        if bad.any():
            row = int(np.argmax(bad))
            raise InputError(
                f"{self.where(row)}: {what} {values.iloc[row]!r} ({column!r}) is not a number"
            )
        return numeric


def file_format(path: Path, fmt: str = "auto") -> str:
    """`fmt`, or the format named by the file's extension when `fmt` is "auto"."""
    if fmt != "auto":
        return fmt
    if path.suffix.lower() in RECBOLE_EXTENSIONS:
        raise InputError(
            f"{path}: a RecBole atomic file (typed header); read its folder with --source "
            "recbole --interactions FOLDER"
        )
    if path.suffix.lower() not in EXTENSIONS:
        raise InputError(
            f"{path}: cannot tell the format from the extension; use one of "
            f"{sorted(EXTENSIONS)} or give the format"
        )
    return EXTENSIONS[path.suffix.lower()]


def decode_utf8(path: Path) -> str:
    """The file's text; invalid UTF-8 and empty files are errors naming the file."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    data = path.read_bytes()
    if not data.strip():
        raise InputError(f"{path}: the file is empty")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise InputError(
            f"{path}, line {line}: invalid UTF-8 (byte {data[err.start]:#04x} at offset {err.start})"
        ) from err


def read_records(path: str | Path, fmt: str = "auto", sep: str | None = None) -> RecordFile:
    """Read CSV/TSV (header line), JSONL (one object a line) or Parquet as text values."""
    path = Path(path)
    kind = file_format(path, fmt)
    if kind == "parquet":
        return _read_parquet(path)
    text = decode_utf8(path)
    if kind == "jsonl":
        return _read_jsonl(path, text)
    return _read_delimited(path, text, sep or ("\t" if kind == "tsv" else ","))


def _read_parquet(path: Path) -> RecordFile:
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for a corrupt file
        raise InputError(f"{path}: not a readable Parquet file ({err})") from err
    if frame.empty:
        raise InputError(f"{path}: the file has no rows")
    return RecordFile(path, frame, None)


def _read_jsonl(path: Path, text: str) -> RecordFile:
    rows, lines = [], []
    for row, number in _objects(path, _json_lines(path, text)):
        rows.append(row)
        lines.append(number)
    frame = pd.DataFrame.from_records(rows)
    return RecordFile(path, frame, np.asarray(lines))


class NotFiniteError(ValueError):
    """A JSON text with ``NaN`` or ``Infinity``: Python reads them, JSON has no such numbers,
    and every file setdpo writes refuses them (so an import would fail half-way)."""


def _not_finite(name: str) -> Any:
    raise NotFiniteError(f"{name} is not a JSON number (numbers must be finite)")


# Python's reader, refusing what its writer under `allow_nan=False` refuses.
DECODER = json.JSONDecoder(parse_constant=_not_finite)


def json_objects(path: Path) -> Iterator[tuple[dict[str, Any], int]]:
    """Each object of a JSON-lines file or of a JSON list (a text that starts with "["),
    with the line it starts on."""
    text = decode_utf8(path)
    values = _json_list if text.lstrip().startswith("[") else _json_lines
    return _objects(path, values(path, text))


def _objects(path: Path, values: Iterator[tuple[Any, int]]) -> Iterator[tuple[dict[str, Any], int]]:
    for value, line in values:
        if not isinstance(value, dict):
            raise InputError(
                f"{path}, line {line}: expected a JSON object, got {type(value).__name__}"
            )
        yield value, line


def _json_lines(path: Path, text: str) -> Iterator[tuple[Any, int]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = DECODER.decode(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}, line {number}: invalid JSON ({err.msg})") from err
        except NotFiniteError as err:
            raise InputError(f"{path}, line {number}: {err}") from err
        yield value, number


def _json_list(path: Path, text: str) -> Iterator[tuple[Any, int]]:
    """The items of a JSON list, each with the line it starts on."""
    space = re.compile(r"\s*")
    pos = space.match(text, text.index("[") + 1).end()
    line, counted = 1, 0  # the line number at offset `counted`
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            line, counted = line + text.count("\n", counted, pos), pos
            try:
                value, pos = DECODER.raw_decode(text, pos)
            except json.JSONDecodeError as err:
                raise InputError(f"{path}, line {err.lineno}: invalid JSON ({err.msg})") from err
            except NotFiniteError as err:
                raise InputError(f"{path}, the item on line {line}: {err}") from err
            yield value, line
            pos = space.match(text, pos).end()
            if text.startswith(",", pos):
                pos = space.match(text, pos + 1).end()
            elif text.startswith("]", pos):
                pos += 1
                break
            else:
                at = line + text.count("\n", counted, pos)
                raise InputError(f"{path}, line {at}: invalid JSON (expected ',' or ']')")
    rest = space.match(text, pos).end()
    if rest < len(text):
        at = line + text.count("\n", counted, rest)
        raise InputError(f"{path}, line {at}: text after the list's closing ']'")


def _read_delimited(path: Path, text: str, sep: str) -> RecordFile:
    quoting = csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL
    try:
        frame = pd.read_csv(
            io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, quoting=quoting
        )
    except pd.errors.ParserError as err:
        raise InputError(f"{path}: malformed table ({err})") from err
    if frame.empty:
        raise InputError(f"{path}: the file has a header but no rows")
    # pandas renames a repeated column "name.1" and reads the first: which one was meant?
    header = next(row for row in csv.reader(io.StringIO(text), delimiter=sep, quoting=quoting)
                  if row)  # fmt: skip
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise InputError(f"{path}: the header repeats the columns {repeated}")
    # Line 1 is the header; blank lines are skipped by the parser, so count them out.
    lines = np.asarray([i for i, s in enumerate(text.splitlines(), start=1) if s.strip()][1:])
    if len(lines) != len(frame):  # quoted fields spanning lines: fall back to record numbers
        lines = np.arange(2, len(frame) + 2)
    return RecordFile(path, frame, lines)
