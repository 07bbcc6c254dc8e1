"""Evaluation with the embedded SmolLM2-135M on real ML-100K contexts (marker smollm2)."""

from __future__ import annotations

import pytest
import torch

from setdpo.data import load_split
from setdpo.evaluation.evaluate import EvalConfig, evaluate


@pytest.fixture
def one_thread():
    """One torch thread: on a CPU shared by several test workers, two threads spend most of
    their time waiting for each other (a 2x576 @ 576x1536 product took 20x longer)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.smollm2
@pytest.mark.usefixtures("one_thread")
def test_constrained_decoding_on_smollm2_always_answers_a_candidate(ml100k_next_dir):
    # Two contexts, prompts cut to 128 tokens (oldest history dropped): under a minute on CPU.
    config = EvalConfig(model="embedded:smollm2-135m", data=str(ml100k_next_dir), limit=2,
                        max_prompt_length=128, constrained=True, n_resamples=100,
                        progress=False)  # fmt: skip
    results = evaluate(config).to_dict()
    examples = {ex.context_id: ex for ex in load_split(ml100k_next_dir, "test")}
    assert results["metrics"]["ValidRatio"]["value"] == 1.0
    for ctx in results["contexts"]:
        ex = examples[ctx["context_id"]]
        # The decoded answer is exactly the title of the candidate it walked through the trie.
        assert ctx["generation"]["answer"] == ex.candidates[ctx["generation"]["matched"]]
        # Log-probs of real titles under a real model: finite, negative, not all equal.
        assert all(s < 0 for s in ctx["scores"]) and len(set(ctx["scores"])) == len(ex.candidates)
