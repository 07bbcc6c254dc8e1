"""The data side: sources -> contexts and candidates -> compact splits on disk, read back as
`PreferenceExample`s (`load_split`: all of a split; `open_split`: one at a time)."""

from setdpo.data.config import PrepareConfig
from setdpo.data.io import load_items, load_split
from setdpo.data.prepare import prepare
from setdpo.data.schema import PreferenceExample
from setdpo.data.store import open_split

__all__ = [
    "PreferenceExample",
    "PrepareConfig",
    "load_items",
    "load_split",
    "open_split",
    "prepare",
]
