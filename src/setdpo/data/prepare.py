"""`prepare(config)`: a source's interactions -> a prepared directory (docs/architecture.md)."""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
from tqdm.auto import tqdm

from setdpo.data.audit import AuditError, audit, findings, format_table
from setdpo.data.builders import Built, build, catalog_rows, statistics, timelines
from setdpo.data.config import PrepareConfig
from setdpo.data.examples import Catalog, arrow_table, chunks, json_lines, prompts, write_lines
from setdpo.data.io import (
    SPLITS,
    atomic_directory,
    check_target,
    dumps,
    finish_hf,
    save_hf_split,
    write_json,
    write_jsonl,
)
from setdpo.data.sources import Interactions, load_source


def prepare(config: PrepareConfig, data: Interactions | None = None) -> Path:
    """Build the train/valid/test examples of `config.source` and write them to `config.out`.

    `data`: the source's interactions if already loaded (`sources.load_source(config)`),
    e.g. to prepare several modes from one read. Returns the output directory. It appears
    only once complete and audited (`setdpo.data.audit`; the counts go to `stats.json`
    ``audit``): nothing is left behind if anything fails.
    """
    check_target(config.out, config.overwrite)  # fail before the slow part
    data = data if data is not None else load_source(config)
    built = build(data, config)
    fingerprint = hashlib.sha256(dumps(asdict(config)).encode()).hexdigest()[:16]
    with atomic_directory(config.out, config.overwrite) as tmp:
        for split in SPLITS:
            save_hf_split(tmp, split, write_split(tmp, built, split, config), fingerprint)
        finish_hf(tmp)
        write_json(tmp / "items.json", catalog_rows(built))
        write_jsonl(tmp / "timelines.jsonl", map(dumps, timelines(built)), len(built.seq.user_ids))
        stats = statistics(built)
        write_json(tmp / "stats.json", stats)
        write_json(tmp / "config.json", asdict(config))
        del built  # free its arrays (ML-1M: gigabytes) before the audit reads the files back
        checks = audit(tmp)
        if findings(checks):  # prepare's own rules exclude every finding: a bug, never output
            raise AuditError(f"the prepared data fails its audit:\n{format_table(checks)}")
        write_json(tmp / "stats.json", stats | {"audit": {c.name: c.found for c in checks}})
    return Path(config.out)


def write_split(folder: Path, built: Built, split: str, config: PrepareConfig) -> pa.Table:
    """Write `folder/<split>.jsonl`; return the split as an Arrow table for `hf/`."""
    catalog, tables = Catalog.of(built), []
    part = built.bounds[split]
    with (folder / f"{split}.jsonl").open("wb") as handle:
        progress = tqdm(total=part.stop - part.start, desc=f"{split}.jsonl", unit="ex")
        for chunk in chunks(built, split):
            text, escaped = prompts(chunk, catalog, config)
            write_lines(handle, json_lines(chunk, catalog, config, escaped))
            tables.append(arrow_table(chunk, catalog, config, text))
            progress.update(len(chunk.user))
        progress.close()
    return pa.concat_tables(tables) if tables else pa.table({})
