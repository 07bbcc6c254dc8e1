"""The data side: sources -> contexts and candidates -> `PreferenceExample` splits on disk."""

from setdpo.data.config import PrepareConfig
from setdpo.data.io import load_items, load_split
from setdpo.data.prepare import prepare
from setdpo.data.schema import PreferenceExample

__all__ = ["PreferenceExample", "PrepareConfig", "load_items", "load_split", "prepare"]
