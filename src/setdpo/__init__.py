"""setdpo: align LLM recommenders with set-wise preferences."""

__version__ = "0.1.0"
