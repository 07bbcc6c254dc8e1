"""From a run to a service: `export` (a Hugging Face folder any transformers or vLLM user
loads) and `serve` (an HTTP ranking service over the one scoring loop)."""
