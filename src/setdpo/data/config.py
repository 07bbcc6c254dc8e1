"""`PrepareConfig`: every option of `setdpo data prepare`, validated once on construction.

`config.json` in a prepared directory is `dataclasses.asdict` of the config that built it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from setdpo.data import registry
from setdpo.data.protocols import SplitProtocol, split_protocol
from setdpo.errors import InputError
from setdpo.items import REPRESENTATIONS

SOURCES = ("ml-100k", "ml-1m", "file", "recbole")  # and every name of `registry`
MODES = ("next", "next-k", "rated", "levels")
SAMPLINGS = ("uniform", "popularity")
TEMPLATES = ("listing", "open")
DOMAINS = ("movie", "music", "book", "generic")
PREPROCESSING = ("none", "usual")
FILE_FORMATS = ("auto", "csv", "tsv", "parquet", "jsonl")
SPLIT_RATIOS = (0.8, 0.1, 0.1)


def _help(text: str, default: object) -> object:
    return field(default=default, metadata={"help": text})


@dataclass
class PrepareConfig:
    """How to turn interactions into `PreferenceExample` splits (docs/data.md)."""

    source: str = _help(
        "ml-100k | ml-1m | file | recbole (a folder of RecBole atomic files: --interactions "
        "FOLDER) | a downloaded source (`setdpo data download --list`): ml-10m, ml-20m, "
        "ml-32m, amazon2018:CATEGORY, amazon2023:CATEGORY, goodreads:GENRE, steam, lastfm",
        "ml-100k",
    )
    out: str = _help("output directory (created atomically)", "prepared")
    overwrite: bool = _help("replace an existing output directory", False)
    mode: str = _help("next | next-k | rated | levels", "next")
    k: int = _help("target window: next-k positives; rated/levels read the next k items", 3)
    candidates: int = _help("candidates per example: positives plus negatives", 20)
    negatives: str = _help("negative sampling: uniform | popularity (train counts + 1)", "uniform")
    split: str = _help(
        "chrono (one time cut for all users, 8:1:1 by target time) | leave-last-out (per user: "
        "the last context is test, the one before valid; also leave-one-out)",
        "chrono",
    )
    split_ratios: tuple[float, float, float] = _help(
        "train/valid/test shares (chrono only)", SPLIT_RATIOS
    )
    history_window: int = _help("at most this many history items (the latest)", 10)
    min_history: int = _help("skip contexts with fewer history items", 3)
    positive_rating: float = _help("rated: ratings >= this are positives", 4.0)
    negative_rating: float = _help("rated/levels: ratings <= this are explicit negatives", 2.0)
    level_ratings: tuple[float, ...] = _help(
        "levels: rating cut-offs, best first (5 > 4 > 3 > unobserved)", (5.0, 4.0, 3.0)
    )
    template: str = _help("prompt template: listing | open", "listing")
    domain: str | None = _help(
        "prompt wording: movie | music | book | generic (default: the downloaded source's, "
        "else movie)",
        None,
    )
    items_as: str = _help(
        "how items are written in prompts and as candidates: titles | tokens (one new token "
        "per catalog item) | hybrid (the title, then its token); setdpo.items",
        "titles",
    )
    seed: int = _help("seed of the example selection, negatives and shuffling", 0)
    max_examples: int | None = _help("keep a seeded sample of at most this many per split", None)
    max_examples_per_split: dict[str, int] | None = _help(
        "per-split caps: {'train': 200, ...} in a config file, train=200,valid=50 on the CLI", None
    )
    interactions: str | None = _help(
        "file source: the interaction file; recbole: the folder of NAME.inter (or that file)", None
    )
    items: str | None = _help(
        "file source: the items file (id, title); recbole: NAME.item beside NAME.inter unless "
        "given",
        None,
    )
    file_format: str = _help("auto (by extension) | csv | tsv | parquet | jsonl", "auto")
    # The columns of a file source; of a recbole source, its field names (a header's
    # "user_id:token" is field user_id), whose defaults are RecBole's.
    user_col: str = _help("file/recbole source: user column", "user_id")
    item_col: str = _help("file/recbole source: item column of the interactions", "item_id")
    rating_col: str | None = _help(
        "file/recbole source: rating column (none: implicit feedback)", None
    )
    time_col: str = _help("file/recbole source: timestamp column (numeric)", "timestamp")
    item_id_col: str = _help("file/recbole source: item id column of the items file", "item_id")
    title_col: str = _help("file/recbole source: title column of the items file", "title")
    year_col: str | None = _help(
        "file/recbole source: a year column of the items file, written 'Title (Year)' (none: "
        "no year)",
        None,
    )
    min_rating: float | None = _help(
        "leave out interactions rated below this before building contexts (none: keep all)",
        None,
    )
    kcore: int = _help(
        "leave out users and items with fewer than this many interactions, repeated until "
        "none is left (the k-core; 0: none); after min_rating; stats.json `filtered` counts",
        0,
    )
    preprocess: str = _help(
        "none | usual: a downloaded source's usual preprocessing (docs/data.md: 5-core, as "
        "SASRec) sets kcore / min_rating where left unset",
        "none",
    )
    memory_limit_mb: int = _help(
        "memory for reading and sorting the interactions (DuckDB spills past it to disk)", 1024
    )

    def __post_init__(self) -> None:
        self.split_ratios = tuple(float(r) for r in self.split_ratios)
        self.level_ratings = tuple(float(r) for r in self.level_ratings)
        protocol = split_protocol(self.split)  # checked first: an alias -> its name
        self.split = protocol.name
        source = self._resolve_source()
        if self.domain is None:
            self.domain = source.domain if source else "movie"
        if self.preprocess not in PREPROCESSING:
            raise InputError(f"preprocess {self.preprocess!r} is not one of {list(PREPROCESSING)}")
        if self.preprocess == "usual":
            if source is None:
                raise InputError(
                    f"preprocess 'usual' is a downloaded source's; {self.source!r} is not one: "
                    "set --kcore / --min-rating"
                )
            for name, value in source.usual:  # where not set explicitly
                if getattr(self, name) in (0, None):
                    setattr(self, name, value)
        for name, allowed in (
            ("mode", MODES),
            ("negatives", SAMPLINGS),
            ("template", TEMPLATES),
            ("domain", DOMAINS),
            ("items_as", REPRESENTATIONS),
            ("file_format", FILE_FORMATS),
        ):
            if getattr(self, name) not in allowed:
                raise InputError(f"{name} {getattr(self, name)!r} is not one of {list(allowed)}")
        self._check_sizes(protocol)
        if self.source == "file" and not (self.interactions and self.items):
            raise InputError("source 'file' needs both an interactions file and an items file")
        if self.source == "recbole" and not self.interactions:
            raise InputError(
                "source 'recbole' needs --interactions: a folder of RecBole atomic files "
                "(NAME.inter, NAME.item) or its .inter file"
            )
        if self.source == "recbole" and self.file_format != "auto":
            raise InputError("source 'recbole' reads RecBole's format; leave file_format auto")

    def _resolve_source(self) -> registry.Source | None:
        """The registry entry `source` names (None: a source of this module's own); an
        unknown name or category is an error."""
        if registry.is_registered(self.source):
            return registry.resolve(self.source)
        if self.source not in SOURCES:
            raise InputError(
                f"source {self.source!r} is not one of {list(SOURCES) + registry.names()}; an "
                "interaction file goes in with --source file --interactions FILE --items FILE, "
                "a folder of RecBole atomic files with --source recbole --interactions FOLDER, "
                "ready-made example sets (LLaRA / S-DPO JSON, TRL rows) with `setdpo data "
                "import --format llara|trl --train FILE`"
            )
        return None

    def _check_sizes(self, protocol: SplitProtocol) -> None:
        if self.k < 1:
            raise InputError(f"k must be >= 1, got {self.k}")
        if self.min_history < 0 or self.history_window < max(1, self.min_history):
            raise InputError(
                f"need history_window >= max(1, min_history); got {self.history_window}, "
                f"{self.min_history}"
            )
        if self.candidates < 2:
            raise InputError(f"candidates must be >= 2, got {self.candidates}")
        if self.mode != "next" and self.candidates <= self.k:
            raise InputError(
                f"candidates ({self.candidates}) must exceed the target window k ({self.k}) "
                f"in mode {self.mode!r}"
            )
        if len(self.split_ratios) != 3 or min(self.split_ratios) < 0 or sum(self.split_ratios) <= 0:
            raise InputError(f"split_ratios must be three shares >= 0, got {self.split_ratios}")
        if not protocol.takes_ratios and self.split_ratios != SPLIT_RATIOS:
            raise InputError(
                f"split_ratios {list(self.split_ratios)} are the shares of split 'chrono'; "
                f"split {self.split!r} is decided per user (the last context test, the one "
                "before valid) and takes none: leave split_ratios out"
            )
        if not self.level_ratings or list(self.level_ratings) != sorted(self.level_ratings)[::-1]:
            raise InputError(f"level_ratings must be decreasing, got {self.level_ratings}")
        if self.kcore < 0:
            raise InputError(f"kcore must be >= 0, got {self.kcore}")
        if self.min_rating is not None and not math.isfinite(self.min_rating):
            raise InputError(f"min_rating must be a number, got {self.min_rating}")
        if self.memory_limit_mb < 64:
            raise InputError(f"memory_limit_mb must be >= 64, got {self.memory_limit_mb}")
        if self.max_examples is not None and self.max_examples < 1:
            raise InputError(f"max_examples must be >= 1, got {self.max_examples}")

    def split_cap(self, split: str) -> int | None:
        """The most examples kept in `split` (None: all)."""
        caps = self.max_examples_per_split or {}
        return caps.get(split, self.max_examples)
