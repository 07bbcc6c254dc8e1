"""Fuzzing the data files a user gives: interaction and items files (CSV, TSV, Parquet, JSONL,
with user column names; folders of RecBole atomic files) through `setdpo data prepare`, and LLaRA JSON, TRL rows and example
JSON lines through `setdpo data import`.

Each input is a small valid data set with realistic damage drawn on top (truncated files,
wrong delimiters, missing, extra, renamed or repeated columns, non-numeric or non-finite
numbers, huge ints, BOM, non-UTF-8 bytes, empty files, values of the wrong JSON type). The
command either succeeds or exits 2 with an error naming the file; anything else (a traceback)
fails. The counts are printed in pytest's summary (`fuzz: ...`, tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from setdpo.cli import main

FUZZ = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Text a spreadsheet, an export script or a typo puts where a value belongs.
BAD_TEXT = st.sampled_from(
    ["", " ", "NaN", "nan", "inf", "-inf", "1e309", "-0", "9" * 40, "abc", "1,5", '"', "null",
     "None", "\x00", "é", "🎬 Film", "0x10", "1_000", " 7 ", "True", "[1]", "{}", "\\N"]
) | st.text(max_size=8)  # fmt: skip
HUGE = st.sampled_from([2**63, -(2**63) - 1, 10**30, 1e308, float("nan"), float("inf")])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | HUGE | st.floats() | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
# A column name as a user may spell it on the command line (any text; a leading "-" too).
COLUMN_NAME = st.sampled_from(["user_id", "user", "User", " user_id", "uid"]) | st.text(
    min_size=1, max_size=6
).filter(lambda s: "\x00" not in s)


def _cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


def _check(fuzz: Any, target: str, argv: list[str], *files: Path) -> None:
    """`setdpo ARGV` succeeds, or exits 2 with a one-line error naming one of `files`."""
    code, err = _cli(argv)
    assert code in (0, 2), err
    if code == 2:  # the one error line (after any progress bar)
        message = re.findall(r"setdpo: error: [^\r\n]*", err)
        assert len(message) == 1, err
        assert any(str(f) in message[0] for f in files), message[0]
    fuzz.count(target, accepted=code == 0)


# ---- tables: the rows, their damage, their bytes -------------------------------------------


@st.composite
def tables(draw: st.DrawFn) -> tuple[list[str], list[list[Any]], list[str], list[list[Any]]]:
    """A valid interaction table (header, rows): 1..3 users, each with 2..8 distinct items of
    12 at increasing times, and the items table."""
    inter = []
    for user in range(draw(st.integers(1, 3))):
        seen = draw(st.lists(st.integers(0, 11), min_size=2, max_size=8, unique=True))
        start = draw(st.integers(0, 10**9))
        inter += [[f"u{user}", f"i{i}", start + t, draw(st.integers(1, 5))]
                  for t, i in enumerate(seen)]  # fmt: skip
    items = [[f"i{i}", f"Title {i}"] for i in range(12)]
    return ["user_id", "item_id", "timestamp", "rating"], inter, ["item_id", "title"], items


@st.composite
def damaged(draw: st.DrawFn, header: list[str], rows: list[list[Any]], cell: Any):
    """`header` and `rows` with 0..3 damages: a bad cell value, a dropped, renamed, repeated or
    extra column, a ragged row, no rows at all."""
    header, rows = list(header), [list(r) for r in rows]
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["cell", "cell", "drop", "rename", "repeat", "extra", "ragged",
                                   "cell", "empty"]))  # fmt: skip
        c = draw(st.integers(0, len(header) - 1)) if header else 0
        if op == "cell" and rows and header:
            r = draw(st.integers(0, len(rows) - 1))
            if rows[r]:
                rows[r][min(c, len(rows[r]) - 1)] = draw(cell)
        elif op == "drop" and len(header) > 1:
            header.pop(c)
            rows = [row[:c] + row[c + 1 :] for row in rows]
        elif op == "rename" and header:
            header[c] = draw(COLUMN_NAME)
        elif op == "repeat" and len(header) > 1:
            header[c] = header[(c + 1) % len(header)]
        elif op == "extra":
            header.append(draw(COLUMN_NAME))
            rows = [row + [draw(cell)] for row in rows]
        elif op == "ragged" and rows:
            r = draw(st.integers(0, len(rows) - 1))
            rows[r] = rows[r][:-1] if draw(st.booleans()) else rows[r] + ["x"]
        elif op == "empty":
            rows = []
    return header, rows


@st.composite
def damaged_bytes(draw: st.DrawFn, data: bytes) -> bytes:
    """`data`, mostly intact, else truncated, with a BOM, invalid UTF-8, CRLF, blank lines,
    or nothing at all."""
    if draw(st.integers(0, 9)) < 6:
        return data
    op = draw(st.sampled_from(["truncate", "bom", "invalid", "crlf", "blank", "empty", "spaces"]))
    at = draw(st.integers(0, max(len(data) - 1, 0)))
    if op == "truncate":
        return data[:at]
    if op == "bom":
        return b"\xef\xbb\xbf" + data
    if op == "invalid":
        return (
            data[:at]
            + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xe2\x82", b"\x80"]))
            + data[at:]
        )
    if op == "crlf":
        return data.replace(b"\n", b"\r\n")
    if op == "blank":
        return data[:at] + b"\n\n" + data[at:]
    if op == "empty":
        return b""
    return b" \n\t\n"  # spaces


def _delimited(header: list[str], rows: list[list[Any]], sep: str) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=sep, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode("utf-8", "surrogatepass")


def _jsonl(header: list[str], rows: list[list[Any]]) -> bytes:
    lines = [json.dumps(dict(zip(header, row, strict=False))) for row in rows]
    return "".join(line + "\n" for line in lines).encode("utf-8", "surrogatepass")


def _parquet(header: list[str], rows: list[list[Any]], path: Path) -> bytes:
    width = len(header)  # a ragged row is cut or padded: a Parquet table is rectangular
    rows = [(row + [None] * width)[:width] for row in rows]
    frame = pd.DataFrame(rows or None, columns=range(width), dtype=None if rows else str)
    frame.columns = header
    try:
        frame.to_parquet(path, index=False)
    except Exception:  # mixed types or repeated names: write every value as text
        frame = frame.astype(str)
        frame.columns = [f"{name}#{i}" if header.count(name) > 1 else name
                         for i, name in enumerate(header)]  # fmt: skip
        frame.to_parquet(path, index=False)
    return path.read_bytes()


def _write(fmt: str, header: list[str], rows: list[list[Any]], path: Path) -> None:
    if fmt == "parquet":
        _parquet(header, rows, path)
        return
    content = (
        _jsonl(header, rows)
        if fmt == "jsonl"
        else _delimited(header, rows, "\t" if fmt == "tsv" else ",")
    )
    path.write_bytes(content)


@st.composite
def file_bytes(draw: st.DrawFn, fmt: str, header: list[str], rows: list[list[Any]], path: Path):
    """The bytes of a damaged table in `fmt` (sometimes written with another delimiter)."""
    cell = JSON if fmt in ("jsonl", "parquet") else BAD_TEXT
    header, rows = draw(damaged(header, rows, cell))
    if fmt == "parquet":
        rows = [[v if not isinstance(v, list | dict) else json.dumps(v) for v in row]
                for row in rows]  # fmt: skip
        data = _parquet(header, rows, path)
        return draw(st.sampled_from([data, data, data, data[: len(data) // 2], b"PAR1"]))
    if fmt == "jsonl":
        return draw(damaged_bytes(_jsonl(header, rows)))
    sep = "," if fmt == "csv" else "\t"
    sep = draw(st.sampled_from([sep] * 6 + [",", "\t", ";", "|"]))
    return draw(damaged_bytes(_delimited(header, rows, sep)))


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet", "jsonl"])
@FUZZ
@given(data=st.data())
def test_data_prepare_of_damaged_interaction_and_items_files(fuzz, fmt, data) -> None:
    inter_header, inter_rows, items_header, items_rows = data.draw(tables())
    inter_header[0] = user_col = data.draw(COLUMN_NAME)
    hurt = data.draw(st.sampled_from(["interactions", "items", "both"]))
    with tempfile.TemporaryDirectory() as tmp:
        inter, items = Path(tmp, f"inter.{fmt}"), Path(tmp, f"items.{fmt}")
        for path, header, rows, damage in (
            (inter, inter_header, inter_rows, hurt != "items"),
            (items, items_header, items_rows, hurt != "interactions"),
        ):
            if damage:
                path.write_bytes(data.draw(file_bytes(fmt, header, rows, path)))
            else:
                _write(fmt, header, rows, path)
        rating = data.draw(st.sampled_from([["--rating-col", "rating"], [], ["--rating-col=r"]]))
        argv = ["data", "prepare", "--source", "file", "--interactions", str(inter),
                "--items", str(items), f"--user-col={user_col}", *rating, "--candidates", "3",
                "--min-history", "1", "--history-window", "3", "--out", f"{tmp}/out"]  # fmt: skip
        _check(fuzz, f"data prepare {fmt} files", argv, inter, items)


RECBOLE_TYPES = {"user_id": "token", "item_id": "token", "timestamp": "float", "rating": "float",
                 "title": "token_seq"}  # fmt: skip


@FUZZ
@given(data=st.data())
def test_data_prepare_of_damaged_recbole_folders(fuzz, data) -> None:
    """A folder of RecBole atomic files (`--source recbole`): typed headers, the tables and
    their bytes damaged as above; sometimes the header's types, or a file, go missing."""
    inter_header, inter_rows, items_header, items_rows = data.draw(tables())
    typed = st.sampled_from(["{}:{}"] * 20 + ["{}", "{}:text", "{}:{}:token", "{}: {}"])
    hurt = data.draw(st.sampled_from(["inter", "item", "both"]))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp, "ml-fuzz")
        folder.mkdir()
        files = {"inter": (inter_header, inter_rows), "item": (items_header, items_rows)}
        for ext, (header, rows) in files.items():
            if hurt in (ext, "both"):
                header, rows = data.draw(damaged(header, rows, BAD_TEXT))
            header = [data.draw(typed).format(name, RECBOLE_TYPES.get(name, "token"))
                      if hurt in (ext, "both") else f"{name}:{RECBOLE_TYPES[name]}"
                      for name in header]  # fmt: skip
            content = _delimited(header, rows, "\t")
            if hurt in (ext, "both"):
                content = data.draw(damaged_bytes(content))
            Path(folder, f"ml-fuzz.{ext}").write_bytes(content)
        lost = data.draw(st.sampled_from([None] * 8 + ["ml-fuzz.item", "ml-fuzz.inter"]))
        if lost:
            Path(folder, lost).unlink()
        rating = data.draw(st.sampled_from([["--rating-col", "rating"], [], ["--rating-col=r"]]))
        argv = ["data", "prepare", "--source", "recbole", "--interactions", str(folder),
                *rating, "--candidates", "3", "--min-history", "1", "--history-window", "3",
                "--out", f"{tmp}/out"]  # fmt: skip
        _check(fuzz, "data prepare recbole folders", argv, folder)


# ---- example files: LLaRA JSON, TRL rows, example JSON lines -------------------------------

TITLES = st.sampled_from(["Heat (1995)", "Jaws (1975)", "Up (2009)", "Alien (1979)", "M (1931)"])


@st.composite
def llara_records(draw: st.DrawFn) -> Any:
    records = []
    for _ in range(draw(st.integers(1, 4))):
        candidates = draw(st.lists(TITLES, min_size=1, max_size=5, unique=True))
        history = draw(st.lists(TITLES, min_size=1, max_size=3))
        record: dict[str, Any] = {
            "historyList": "::".join(history) if draw(st.booleans()) else history,
            "itemList": candidates,
            "trueSelection": draw(st.sampled_from(candidates)),
        }
        if draw(st.booleans()):  # what `setdpo data export --format llara` adds
            record |= {"user": "u1", "context_id": f"u1:{len(records) + 3}"}
        records.append(record)
    records = _damage_one(draw, records)
    return draw(st.sampled_from([records] * 6 + [records[0], "records", None, 3, {}, []]))


@st.composite
def damaged_record(draw: st.DrawFn, record: dict[str, Any]) -> Any:
    """A record with 1..2 fields replaced by any JSON, removed or added; or not an object."""
    record = dict(record)
    for _ in range(draw(st.integers(1, 2))):
        key = draw(st.sampled_from(sorted(record) or ["x"]) | st.text(max_size=4))
        op = draw(st.sampled_from(["replace", "replace", "remove", "empty list", "empty text"]))
        if op == "remove":
            record.pop(key, None)
        else:
            record[key] = {"replace": draw(JSON), "empty list": [], "empty text": ""}[op]
    return draw(st.sampled_from([record] * 8 + [[record], "row", 1, None]))


def _damage_one(draw: st.DrawFn, records: list[Any]) -> list[Any]:
    """`records` with one of them damaged, or none."""
    bad = draw(st.integers(0, len(records)))
    if bad < len(records):
        records[bad] = draw(damaged_record(records[bad]))
    return records


def _import(fuzz: Any, target: str, fmt: str, content: bytes, name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, name)
        path.write_bytes(content)
        argv = ["data", "import", "--format", fmt, "--train", str(path), "--out", f"{tmp}/out"]
        _check(fuzz, target, argv + (["--domain", "movie"] if fmt == "llara" else []), path)


@FUZZ
@given(records=llara_records(), data=st.data())
def test_data_import_of_damaged_llara_json(fuzz, records, data) -> None:
    text = json.dumps(records, indent=data.draw(st.sampled_from([None, 1])))
    content = data.draw(damaged_bytes(text.encode("utf-8", "surrogatepass")))
    _import(fuzz, "data import llara json", "llara", content, "train.json")


@st.composite
def trl_rows(draw: st.DrawFn) -> list[Any]:
    rows = []
    for _ in range(draw(st.integers(1, 4))):
        titles = draw(st.lists(TITLES, min_size=2, max_size=5, unique=True))
        cut = draw(st.integers(1, len(titles) - 1))
        row: dict[str, Any] = {"prompt": "The user has watched Heat (1995). Next:",
                               "chosen": titles[:cut], "rejected": titles[cut:]}  # fmt: skip
        if draw(st.booleans()):
            row["chosen"], row["rejected"] = titles[0], titles[1]
            titles = titles[:2]
        if draw(st.booleans()):  # what `setdpo data export` adds
            row |= {"levels": [1] * cut + [2] * (len(titles) - cut),
                    "candidate_order": list(range(len(titles))), "context_id": "c0",
                    "user": "u0", "history": ["Jaws (1975)"], "target_time": 12.0,
                    "meta": {"source": "trl"}}  # fmt: skip
            row["levels"] = row["levels"][: len(titles)]
        rows.append(row)
    return _damage_one(draw, rows)


def _lines(rows: list[Any]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode("utf-8", "surrogatepass")


@FUZZ
@given(rows=trl_rows(), data=st.data())
def test_data_import_of_damaged_trl_rows(fuzz, rows, data) -> None:
    content = data.draw(damaged_bytes(_lines(rows)))
    _import(fuzz, "data import trl rows", "trl", content, "rows.jsonl")


@st.composite
def example_rows(draw: st.DrawFn) -> list[Any]:
    rows = []
    for i in range(draw(st.integers(1, 4))):
        titles = draw(st.lists(TITLES, min_size=1, max_size=4, unique=True))
        row = {"context_id": str(i), "user": "u0", "history": ["Jaws (1975)"],
               "prompt": "Pick one:", "candidates": titles,
               "levels": [1] + [2] * (len(titles) - 1), "target_time": 3.5,
               "meta": {"source": "file"}}  # fmt: skip
        rows.append(row)
    return _damage_one(draw, rows)


@FUZZ
@given(rows=example_rows(), data=st.data())
def test_data_import_of_damaged_example_lines(fuzz, rows, data) -> None:
    content = data.draw(damaged_bytes(_lines(rows)))
    _import(fuzz, "data import jsonl examples", "jsonl", content, "examples.jsonl")


def test_no_context_names_the_interaction_file(tmp_path: Path) -> None:
    """Found by the fuzzing: the error named the source ("file"), not the file."""
    inter, items = tmp_path / "inter.csv", tmp_path / "items.csv"
    _write("csv", ["user_id", "item_id", "timestamp"], [["u0", "i0", 1], ["u1", "i1", 2]], inter)
    _write("csv", ["item_id", "title"], [["i0", "A"], ["i1", "B"]], items)
    argv = ["data", "prepare", "--source", "file", "--interactions", str(inter), "--items",
            str(items), "--candidates", "2", "--out", str(tmp_path / "out")]  # fmt: skip
    code, err = _cli(argv)
    assert code == 2 and f"{inter}: no user has 3 history items" in err


def test_a_repeated_column_is_refused(tmp_path: Path) -> None:
    """Found by the fuzzing: `user_id,item_id,timestamp,timestamp` read the first timestamp."""
    inter, items = tmp_path / "inter.csv", tmp_path / "items.csv"
    rows = [["u0", f"i{i}", i, 9 - i] for i in range(6)]
    _write("csv", ["user_id", "item_id", "timestamp", "timestamp"], rows, inter)
    _write("csv", ["item_id", "title"], [[f"i{i}", f"T{i}"] for i in range(6)], items)
    argv = ["data", "prepare", "--source", "file", "--interactions", str(inter), "--items",
            str(items), "--candidates", "2", "--min-history", "1", "--out", str(tmp_path / "o")]  # fmt: skip
    code, err = _cli(argv)
    assert code == 2 and f"{inter}: the header repeats the columns ['timestamp']" in err


@pytest.mark.parametrize(
    ("fmt", "name", "text", "where"),
    [
        ("trl", "rows.jsonl", '{"prompt": "p", "chosen": ["A"], "rejected": ["B"], '
                              '"meta": {"": NaN}}\n', "line 1: NaN"),
        ("jsonl", "examples.jsonl", '{"prompt": "p", "candidates": ["A", "B"], "levels": [1, 2],'
                                    ' "target_time": Infinity}\n', "line 1: Infinity"),
        ("llara", "train.json", '[{"x": -Infinity}]', "-Infinity"),
    ],
)  # fmt: skip
def test_nan_and_infinity_in_json_are_refused_where_they_are(
    tmp_path: Path, fmt: str, name: str, text: str, where: str
) -> None:
    """Found by the fuzzing (`make fuzz`, seed 2): `"meta": {"": NaN}` in a TRL row was read
    (Python's JSON reader takes NaN and Infinity), then the import failed writing the
    prepared directory with `ValueError: Out of range float values are not JSON compliant`."""
    path = tmp_path / name
    path.write_text(text, "utf-8")
    argv = ["data", "import", "--format", fmt, "--train", str(path), "--out", str(tmp_path / "o")]
    code, err = _cli(argv + (["--domain", "movie"] if fmt == "llara" else []))
    assert code == 2 and f"{path}" in err and where in err and "not a JSON number" in err, err
