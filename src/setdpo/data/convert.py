"""A registered source's downloaded files -> the interaction and title tables the engine reads.

`ready(source)` returns them (`Tables`), making them once from the files in the cache
(`setdpo.data.download.raw_path`; a file missing there is an error naming the download
command and the path where a file fetched by hand is picked up; a digest known to the
registry is checked first):

- GroupLens zips (`Source.converted` False): the ratings and movies files are extracted into
  ``<cache>/grouplens/<name>/`` and read as they are (``::`` or CSV), out of core.
- the rest: converted by DuckDB, out of core (gzip read as it streams; zip members extracted
  to a scratch folder; Steam's Python-literal lines parsed with `ast.literal_eval` into
  Parquet first, never `eval`), into ``interactions.parquet`` (user, item, rating,
  timestamp in seconds, in file order) and ``items.parquet`` (item_id, title: the first
  non-empty title of each id, for the items interacted with), then ``source.json``: the
  counts of what was left out (``incomplete``: no user, item, time or rating;
  ``duplicate``: a repeated (user, item, time) where the map says so; ``no_title``), the
  input files' digests, sizes and times. Tables older than their input files, or than
  `FORMAT`, are made again.
"""

from __future__ import annotations

import ast
import codecs
import csv
import gzip
import json
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from setdpo.atomic import atomic_write_json, scratch_folder, temporary_folder
from setdpo.data.download import check_file, raw_path
from setdpo.data.engine import Table, _first_line, _literal, _quoted, connect
from setdpo.data.registry import InteractionMap, Layout, Source, TitleMap
from setdpo.errors import InputError

FORMAT = 1  # of the converted tables; a change makes every source convert again
INTERACTIONS, ITEMS, INFO = "interactions.parquet", "items.parquet", "source.json"
MEMORY_MB = 1024  # DuckDB's limit while converting; it spills the rest to a scratch folder
LITERAL_BATCH = 65536  # Python-literal rows per Parquet batch


@dataclass(frozen=True)
class Tables:
    """What `setdpo.data.sources` reads: the interactions (`table`), the items file
    (``.parquet``, ``.csv``, or a GroupLens ``.dat`` with columns `item_names`), its id and
    title columns, and the counts the conversion left out."""

    table: Table
    items: Path
    item_id: str
    title: str
    item_names: tuple[str, ...] | None
    dropped: dict[str, int]


def ready_folder(source: Source) -> Path:
    """Where the tables of `source` are: its folder, or ``grouplens/<name>`` for a zip read
    as it is."""
    folder = raw_path(source, source.files[0]).parent
    return folder if source.converted else folder / source.name


def ready(
    source: Source,
    digests: dict[str, str] | None = None,
    memory_limit_mb: int = MEMORY_MB,
    refresh: bool = False,
) -> Tables:
    """The tables of `source`, made from its files if need be, or always with `refresh`
    (`digests`: of files just fetched and checked, not hashed again)."""
    folder = ready_folder(source)
    inter, titles = source.interactions, source.titles
    if not source.converted:
        ratings, movies = folder / inter.layout.member, folder / titles.layout.member
        if refresh or not is_ready(source):
            _checked_files(source, digests)
            _extract_folder(source, folder)
        names = inter.layout.names
        table = Table(ratings, inter.layout.format, inter.user, inter.item, inter.rating,
                      inter.time, names=list(names) if names else None)  # fmt: skip
        return Tables(table, movies, titles.item, titles.title, titles.layout.names, {})
    info = None if refresh else _current(source, folder)
    if info is None:
        info = _convert(source, folder, _checked_files(source, digests), memory_limit_mb)
    rating = "rating" if inter.rating else None
    table = Table(folder / INTERACTIONS, "parquet", "user", "item", rating, "timestamp")
    return Tables(table, folder / ITEMS, "item_id", "title", None, info["dropped"])


def is_ready(source: Source) -> bool:
    """Whether the tables of `source` are made (and no file they came from changed)."""
    folder = ready_folder(source)
    if source.converted:
        return _current(source, folder) is not None
    layouts = (source.interactions.layout, source.titles.layout)
    return all((folder / layout.member).is_file() for layout in layouts)


def require(source: Source) -> None:
    """Fail early (before `prepare` starts) when `source` has neither its tables nor its
    files in the cache, naming both ways to get them."""
    if is_ready(source):
        return
    missing = [f for f in source.files if not raw_path(source, f).is_file()]
    if missing:
        where = "; ".join(f"{f.name} ({f.url}) at {raw_path(source, f)}" for f in missing)
        raise InputError(
            f"{source.name} is not downloaded: run `setdpo data download {source.name}`, or "
            f"fetch it another way and put {where}"
        )


def _checked_files(source: Source, digests: dict[str, str] | None) -> dict[str, str]:
    """Every file of `source` in the cache, with its digest (checked where the registry
    knows it); a missing one is an error (`require`)."""
    require(source)
    known = digests or {}
    return {f.name: known.get(f.name) or check_file(raw_path(source, f), f.sha256)
            for f in source.files}  # fmt: skip


def _current(source: Source, folder: Path) -> dict | None:
    """`source.json` if the tables are complete, of this `FORMAT`, and no input file in the
    cache changed since (a file removed to save space is fine)."""
    try:
        info = json.loads((folder / INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if info.get("format") != FORMAT or not all(
        (folder / name).is_file() for name in (INTERACTIONS, ITEMS)
    ):
        return None
    for file in source.files:
        path, seen = raw_path(source, file), info["files"].get(file.name, {})
        if not path.is_file():
            continue
        stat = path.stat()
        if (stat.st_size, stat.st_mtime_ns) != (seen.get("size"), seen.get("mtime_ns")):
            return None
    return info


def _extract_folder(source: Source, folder: Path) -> None:
    """The ratings and movies files of a GroupLens zip into `folder`, atomically."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    archive = raw_path(source, source.files[0])
    tmp = temporary_folder(folder)
    try:
        for layout in (source.interactions.layout, source.titles.layout):
            extract_member(archive, layout.member, tmp / layout.member)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def extract_member(archive: Path, member: str, dest: Path) -> Path:
    """The zip member whose base name is `member` (one, in any folder) copied to `dest`."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as err:
        raise InputError(
            f"{archive}: not a zip file ({err}); remove it and download it again (--force)"
        ) from err
    with zf:
        found = [n for n in zf.namelist() if n.rsplit("/", 1)[-1] == member]
        if len(found) != 1:
            raise InputError(
                f"{archive}: expected one {member} in the zip, found {found or 'none'}"
            )
        with zf.open(found[0]) as src, dest.open("wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    return dest


def _convert(source: Source, folder: Path, digests: dict[str, str], memory_mb: int) -> dict:
    """Write the two tables and `source.json` of `source` (each file renamed into place)."""
    print(f"{source.name}: converting to {folder / INTERACTIONS}", flush=True)
    with scratch_folder(folder / INTERACTIONS) as work:
        work = Path(work)
        con = connect(memory_mb, work)
        try:
            inter = _reader(source, source.interactions, work)
            titles = _reader(source, source.titles, work)
            dropped = _write(con, source, inter, titles, work)
        finally:
            con.close()
        for name in (INTERACTIONS, ITEMS):
            os.replace(work / name, folder / name)
    files = {}
    for file in source.files:
        stat = raw_path(source, file).stat()
        files[file.name] = {"sha256": digests[file.name], "size": stat.st_size,
                            "mtime_ns": stat.st_mtime_ns}  # fmt: skip
    info = {"format": FORMAT, "source": source.name, "dropped": dropped, "files": files}
    atomic_write_json(folder / INFO, info)
    return info


def _reader(source: Source, mapping: InteractionMap | TitleMap, work: Path) -> str:
    """SQL reading the columns `mapping` names from its file, as text, with ``rec`` (the
    record's number, file order)."""
    layout = mapping.layout
    if isinstance(mapping, InteractionMap):
        columns = [mapping.user, mapping.item] + ([mapping.rating] if mapping.rating else [])
        columns.append(mapping.time)
    else:
        columns = [mapping.item, mapping.title]
    path = raw_path(source, source.file(layout.file))
    if layout.member:
        path = extract_member(path, layout.member, work / layout.member)
    if layout.format == "pyliteral":
        path = _literals_to_parquet(path, columns, work / f"{layout.file}.parquet")
        scan = f"read_parquet({_literal(path)})"
    elif layout.format == "jsonl":
        types = ", ".join(f"{_literal(c)}: 'VARCHAR'" for c in columns)
        scan = (f"read_json({_literal(path)}, format = 'newline_delimited', columns = {{{types}}}, "
                "maximum_object_size = 268435456)")  # fmt: skip
    else:
        scan = _delimited(path, layout, columns)
    select = ", ".join(f"CAST({_quoted(c)} AS VARCHAR) AS {_quoted(c)}" for c in columns)
    return f"(SELECT {select}, row_number() OVER () AS rec FROM {scan})"


def _delimited(path: Path, layout: Layout, columns: list[str]) -> str:
    """`read_csv` of a CSV or TSV file (header or `layout.names`); a TSV that is not UTF-8
    is read as Latin-1 (older GroupLens files)."""
    names = list(layout.names) if layout.names else _header(path, layout.format)
    missing = [c for c in columns if c not in names]
    if missing:
        raise InputError(f"{path}: no column {missing[0]!r} (columns: {names})")
    csv_like = layout.format == "csv"
    quote = '"' if csv_like else ""
    types = ", ".join(f"{_literal(n)}: 'VARCHAR'" for n in names)
    args = (
        f"delim = {_literal(',' if csv_like else chr(9))}, quote = {_literal(quote)}, "
        f"escape = {_literal(quote)}, header = {_literal(layout.names is None)}, "
        f"auto_detect = false, null_padding = true, columns = {{{types}}}"
    )
    plain_tsv = not csv_like and path.suffix != ".gz"
    encoding = "latin-1" if plain_tsv and not _is_utf8(path) else "utf-8"
    return f"read_csv({_literal(path)}, {args}, encoding = {_literal(encoding)})"


def _is_utf8(path: Path) -> bool:
    """Whether a (plain) file decodes as UTF-8, read block by block."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with path.open("rb") as handle:
            while block := handle.read(1 << 20):
                decoder.decode(block)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _header(path: Path, fmt: str) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace", newline="") as f:
        line = f.readline().rstrip("\r\n")
    if not line:
        raise InputError(f"{path}: the file is empty")
    if fmt == "csv":
        return next(csv.reader([line]))
    return line.split("\t")


def _literals_to_parquet(path: Path, columns: list[str], out: Path) -> Path:
    """One Python dict literal a line (gzip) -> Parquet of `columns` as text, streaming."""
    schema = pa.schema([(c, pa.string()) for c in columns])
    batch: dict[str, list] = {c: [] for c in columns}
    opener = gzip.open if path.suffix == ".gz" else open
    with (
        opener(path, "rt", encoding="utf-8") as lines,
        pq.ParquetWriter(out, schema) as writer,
        tqdm(desc=f"{path.name} (Python literals)", unit=" lines", delay=1) as bar,
    ):
        try:
            for number, line in enumerate(lines, start=1):
                bar.update()
                if not line.strip():
                    continue
                row = _parse_literal(line, path, number)
                for c in columns:
                    value = row.get(c)
                    batch[c].append(None if value is None else str(value))
                if len(batch[columns[0]]) >= LITERAL_BATCH:
                    writer.write_table(pa.table(batch, schema=schema))
                    batch = {c: [] for c in columns}
        except (UnicodeDecodeError, OSError, EOFError) as err:
            raise InputError(f"{path}: unreadable ({err})") from err
        writer.write_table(pa.table(batch, schema=schema))
    return out


def _parse_literal(line: str, path: Path, number: int) -> dict:
    try:
        row = ast.literal_eval(line.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError) as err:
        raise InputError(
            f"{path}, line {number}: not a Python dict literal ({type(err).__name__})"
        ) from err
    if not isinstance(row, dict):
        raise InputError(f"{path}, line {number}: expected a dict, got {type(row).__name__}")
    return row


def _write(con, source: Source, inter_sql: str, titles_sql: str, work: Path) -> dict[str, int]:
    """The two Parquet files in `work`; returns the counts left out."""
    mapping, titles = source.interactions, source.titles
    rating = f"TRY_CAST({_quoted(mapping.rating)} AS DOUBLE)" if mapping.rating else "NULL"
    value = f"TRY_CAST({_quoted(mapping.time)} AS DOUBLE)"
    time = {"s": value, "ms": f"{value} / 1000"}.get(
        mapping.time_format,
        f"epoch(try_strptime({_quoted(mapping.time)}, {_literal(mapping.time_format)}))",
    )
    try:
        con.execute(
            f"""CREATE TABLE inter AS SELECT trim({_quoted(mapping.user)}) AS "user",
                   trim({_quoted(mapping.item)}) AS item, {rating} AS rating,
                   CAST({time} AS DOUBLE) AS "timestamp", rec FROM {inter_sql}"""
        )
        con.execute(
            f"""CREATE TABLE titles AS SELECT item_id, title, rec FROM (
                SELECT trim({_quoted(titles.item)}) AS item_id,
                       trim({_quoted(titles.title)}) AS title, rec FROM {titles_sql})
                WHERE item_id <> '' AND title <> ''
                QUALIFY row_number() OVER (PARTITION BY item_id ORDER BY rec) = 1"""
        )
    except InputError:
        raise
    except Exception as err:  # duckdb names the line; the file is named here
        files = sorted({mapping.layout.file, titles.layout.file})
        raise InputError(f"{source.name} ({', '.join(files)}): {_first_line(err)}") from err
    complete = """"user" <> '' AND item <> '' AND isfinite("timestamp")"""
    if mapping.rating:
        complete += " AND isfinite(rating)"
    unique = 'QUALIFY row_number() OVER (PARTITION BY "user", item, "timestamp" ORDER BY rec) = 1'
    con.execute(
        f"CREATE TABLE kept AS SELECT * FROM inter WHERE {complete} "
        f"{unique if mapping.distinct else ''}"
    )
    count = lambda sql: con.execute(f"SELECT count(*) FROM {sql}").fetchone()[0]  # noqa: E731
    total, kept = count("inter"), count("kept")
    incomplete = total - count(f"inter WHERE {complete}")
    columns = '"user", item, ' + ("rating, " if mapping.rating else "") + '"timestamp"'
    titled = "kept WHERE item IN (SELECT item_id FROM titles)"
    con.execute(f"COPY (SELECT {columns} FROM {titled} ORDER BY rec) TO "
                f"{_literal(work / INTERACTIONS)} (FORMAT parquet)")  # fmt: skip
    con.execute(
        "COPY (SELECT item_id, title FROM titles WHERE item_id IN (SELECT DISTINCT item FROM "
        f"kept) ORDER BY rec) TO {_literal(work / ITEMS)} (FORMAT parquet)"
    )
    left = count(titled)
    if not left:
        raise InputError(
            f"{source.name}: no interaction left of {total} ({incomplete} incomplete, "
            f"{kept - left} without a title in {titles.layout.file})"
        )
    dropped = {"read": total, "incomplete": incomplete, "no_title": kept - left}
    if mapping.distinct:
        dropped["duplicate"] = total - incomplete - kept
    return dropped
