"""setdpo.model.lab: the lab model's tokenizer, size, save/reload and full-parameter training."""

from __future__ import annotations

import copy
import statistics
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from setdpo.data import load_items, load_split
from setdpo.errors import InputError
from setdpo.model import (
    LabSettings,
    LoraSettings,
    add_lora,
    build_lab_model,
    fit_lab_tokenizer,
    load,
    read_run_model,
    save_run_model,
)
from setdpo.model.lab import lab_texts
from setdpo.scoring import candidate_logps
from setdpo.tokenization import CandidateCollator, TokenizedExample, tokenize_example

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lab(ml100k_next_dir: Path) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    return build_lab_model(ml100k_next_dir)


def _logits(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids).logits


def test_lab_texts_are_the_training_prompts_and_every_title(ml100k_next_dir: Path) -> None:
    texts = lab_texts(ml100k_next_dir)
    train = [example.prompt for example in load_split(ml100k_next_dir, "train")]
    titles = [item["title"] for item in load_items(ml100k_next_dir)]
    assert texts == train + titles
    held_out = {
        ex.prompt for split in ("valid", "test") for ex in load_split(ml100k_next_dir, split)
    }
    assert not held_out & set(texts)


def test_tokenizer_is_deterministic_compact_and_round_trips(ml100k_next_dir: Path) -> None:
    texts = lab_texts(ml100k_next_dir)
    first, second = fit_lab_tokenizer(texts), fit_lab_tokenizer(texts)
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()
    assert len(first) == 4096
    titles = [item["title"] for item in load_items(ml100k_next_dir)]
    valid = [example.prompt for example in load_split(ml100k_next_dir, "valid")]
    for text in texts + valid + ["Amélie (2001) 千と千尋の神隠し", " two  spaces\n", ""]:
        assert first.decode(first(text, add_special_tokens=False).input_ids) == text
    lengths = [len(first(title, add_special_tokens=False).input_ids) for title in titles]
    # Fitted to 200 prompts and the 1,682 titles: median 4 tokens a title, mean about 5.
    assert statistics.median(lengths) <= 4 and statistics.mean(lengths) < 6
    year = first("Toy Story (1995)", add_special_tokens=False).input_ids
    assert first.convert_ids_to_tokens(year) == ["ĠToy", "ĠStory", "Ġ(1995)"]


def test_a_candidate_reads_as_the_same_tokens_as_in_a_history(
    ml100k_next_dir: Path, lab: tuple[LlamaForCausalLM, PreTrainedTokenizerFast]
) -> None:
    _, tokenizer = lab
    example = load_split(ml100k_next_dir, "train")[0]
    tokenized = tokenize_example(example, tokenizer)
    assert tokenized.prompt_ids[0] == tokenizer.bos_token_id
    assert tokenizer.pad_token_id not in (tokenizer.bos_token_id, tokenizer.eos_token_id)
    for title, ids in zip(example.candidates, tokenized.candidate_ids, strict=True):
        assert ids[-1] == tokenizer.eos_token_id and tokenizer.bos_token_id not in ids
        # The answer follows the prompt after a space, with no special token but EOS.
        text = tokenizer.decode(tokenized.prompt_ids + ids, skip_special_tokens=True)
        assert text == f"{example.prompt} {title}"
    # ... and a title in the history has the tokens it has as a candidate.
    prompt, title = tokenized.prompt_ids, tokenizer(example.history[0], add_special_tokens=False)
    width = len(title.input_ids)
    assert any(prompt[i : i + width] == title.input_ids for i in range(len(prompt)))


def test_default_settings_make_a_seeded_5_5m_parameter_llama(
    ml100k_next_dir: Path, lab: tuple[LlamaForCausalLM, PreTrainedTokenizerFast]
) -> None:
    model, tokenizer = lab
    # 2 x 4096 x 256 (embeddings, untied head) + 4 x (4 x 256^2 + 3 x 256 x 768 + 2 x 256) + 256
    assert sum(p.numel() for p in model.parameters()) == 5_507_328
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (4, 256, 768)
    assert config.num_attention_heads == config.num_key_value_heads == 4
    assert config.vocab_size == len(tokenizer) == 4096 and not model.training
    rng_before = torch.random.get_rng_state()
    again, _ = build_lab_model(ml100k_next_dir)
    other, _ = build_lab_model(ml100k_next_dir, LabSettings(seed=1))
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    weight = model.lm_head.weight
    assert torch.equal(again.lm_head.weight, weight)
    assert not torch.equal(other.lm_head.weight, weight)
    with pytest.raises(ValueError, match="multiple of heads"):
        LabSettings(hidden=100, heads=3)


def test_load_lab_needs_its_data_directory(ml100k_next_dir: Path) -> None:
    with pytest.raises(InputError, match="lab_data=DIR"):
        load("lab")
    model, tokenizer = load("lab", lab_data=ml100k_next_dir, device="cpu")
    assert model.config.pad_token_id == tokenizer.pad_token_id


@pytest.mark.parametrize("peft", [False, True])
def test_a_lab_run_reloads_with_identical_logits(
    ml100k_next_dir: Path,
    lab: tuple[LlamaForCausalLM, PreTrainedTokenizerFast],
    tmp_path: Path,
    peft: bool,
) -> None:
    """Full fine-tuning saves the whole model as `base/`; with LoRA, `lab` (built from data,
    not loadable by name alone) still saves its base weights inside the run."""
    model, tokenizer = lab
    if peft:
        # a copy: peft edits the model in place
        model = add_lora(copy.deepcopy(model), LoraSettings(r=4, dropout=0.0)).eval()
        with torch.no_grad():  # nonzero B: the adapter changes the outputs
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn_like(param) * 0.1)
    save_run_model(model, tokenizer, tmp_path, base_model="lab")
    assert read_run_model(tmp_path).base_model == str(tmp_path.resolve() / "base")
    reloaded, reloaded_tokenizer = load(tmp_path, device="cpu")
    ids = torch.tensor([tokenizer(load_split(ml100k_next_dir, "test")[0].prompt).input_ids])
    torch.testing.assert_close(_logits(reloaded, ids), _logits(model, ids), rtol=0, atol=0)
    backend = reloaded_tokenizer.backend_tokenizer.to_str()
    assert backend == tokenizer.backend_tokenizer.to_str()
    assert reloaded_tokenizer.decode(ids[0], skip_special_tokens=True) == tokenizer.decode(
        ids[0], skip_special_tokens=True
    )


def test_full_parameter_training_lowers_the_sft_loss(
    ml100k_next_dir: Path, lab: tuple[LlamaForCausalLM, PreTrainedTokenizerFast]
) -> None:
    """Plain AdamW on every weight, the loss the positives' token-averaged NLL."""
    model, tokenizer = build_lab_model(ml100k_next_dir)  # a copy the other tests do not share
    rows = [tokenize_example(ex, tokenizer) for ex in load_split(ml100k_next_dir, "train")[:8]]
    positives = [
        TokenizedExample(row.prompt_ids, [row.candidate_ids[row.levels.index(1)]], [1])
        for row in rows
    ]
    batch = CandidateCollator(tokenizer.pad_token_id)(positives)
    tokens = batch["candidate_mask"].sum()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    losses = []
    for _ in range(6):
        loss = -candidate_logps(model, batch).logps.sum() / tokens
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    print("SFT loss per step:", [round(value, 3) for value in losses])
    assert losses[-1] < losses[0] - 1.0
