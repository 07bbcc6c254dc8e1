"""`prepare(config)`: a source's interactions -> a prepared directory (docs/architecture.md)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from setdpo.data.builders import build, catalog_rows, iter_rows, statistics
from setdpo.data.config import PrepareConfig
from setdpo.data.io import check_target, write_prepared
from setdpo.data.sources import load_source


def prepare(config: PrepareConfig) -> Path:
    """Build the train/valid/test examples of `config.source` and write them to `config.out`.

    Returns the output directory. Nothing is left behind if anything fails.
    """
    check_target(config.out, config.overwrite)  # fail before the slow part
    data = load_source(config)
    built = build(data, config)
    sizes = {name: part.stop - part.start for name, part in built.bounds.items()}
    return write_prepared(
        config.out,
        lambda split: iter_rows(built, split, config),
        sizes,
        catalog_rows(built),
        statistics(built),
        asdict(config),
        overwrite=config.overwrite,
    )
