"""setdpo.model: the tiny model, LoRA, run directories, the reference, loading errors and the
embedded SmolLM2 (marked ``smollm2``)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from peft import PeftModel
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from setdpo.errors import InputError
from setdpo.model import (
    LoraSettings,
    add_lora,
    build_tiny,
    default_target_modules,
    disable_dropout,
    embedded_model_folder,
    load,
    load_reference,
    prepare_preference_model,
    read_run_model,
    resolve_dtype,
    save_run_model,
)

TEXTS = [
    "Toy Story (1995)",
    "GoldenEye (1995)",
    "Four Rooms (1995)",
    "Get Shorty (1995)",
    "The user watched Heat (1995), Casino (1995) and Sabrina (1995). Choose the next movie.",
] * 3
LLAMA_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _logits(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids).logits


def _randomize_lora_b(model: PeftModel, seed: int) -> None:
    """LoRA's B starts at zero (a no-op adapter); nonzero B makes the adapter change outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)


@pytest.fixture(scope="module")
def input_ids() -> torch.Tensor:
    _, tokenizer = build_tiny(TEXTS)
    text = ["The user watched Heat (1995). Choose the next movie. Toy Story (1995)"]
    return tokenizer(text, return_tensors="pt").input_ids  # [1, T]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SFT run: LoRA (r=4, alpha=8) with random nonzero B, saved with base "tiny"."""
    model, tokenizer = load("tiny", tiny_texts=TEXTS)
    policy = add_lora(model, LoraSettings(r=4, alpha=8, dropout=0.0))
    _randomize_lora_b(policy, seed=1)
    run_dir = tmp_path_factory.mktemp("runs") / "sft"
    save_run_model(policy, tokenizer, run_dir, base_model="tiny")
    return run_dir


# ----------------------------------------------------------------------------- tiny


def test_tiny_is_seeded_fast_and_leaves_the_global_rng_alone() -> None:
    rng_before = torch.random.get_rng_state()
    start = time.perf_counter()
    model_a, tokenizer_a = build_tiny(TEXTS, seed=0)
    elapsed = time.perf_counter() - start
    model_b, tokenizer_b = build_tiny(TEXTS, seed=0)
    model_c, _ = build_tiny(TEXTS, seed=1)
    print(f"build_tiny: {elapsed:.3f} s, vocab {len(tokenizer_a)}")
    assert elapsed < 5.0  # about 0.02 s when the machine is idle
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    assert tokenizer_a.backend_tokenizer.to_str() == tokenizer_b.backend_tokenizer.to_str()
    state_a, state_b, state_c = (m.state_dict() for m in (model_a, model_b, model_c))
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert not torch.equal(state_a["lm_head.weight"], state_c["lm_head.weight"])
    config = model_a.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (64, 2, 4)
    assert config.num_key_value_heads == 2 and config.vocab_size == len(tokenizer_a)


def test_tiny_tokenizer_encodes_any_text_with_bos_and_a_chat_template() -> None:
    _, tokenizer = build_tiny(TEXTS)
    # 256 byte symbols + 3 specials, plus the merges the 5 distinct texts allow (< 1024).
    assert 259 < len(tokenizer) < 1024
    text = "Amélie (2001) 千と千尋の神隠し"
    ids = tokenizer(text).input_ids
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer("Toy Story (1995)", add_special_tokens=False).input_ids[0] != (
        tokenizer.bos_token_id
    )
    assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token) == (
        "<pad>",
        "<s>",
        "</s>",
    )
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == "<s>user: hi</s>\nassistant: "
    _, bytes_only = build_tiny(None)
    assert len(bytes_only) == 259


def test_load_tiny_sets_padding_device_and_dtype() -> None:
    model, tokenizer = load("tiny", tiny_texts=TEXTS)
    assert isinstance(model, LlamaForCausalLM) and not model.training
    assert model.config.pad_token_id == tokenizer.pad_token_id == 0
    assert next(model.parameters()).dtype == torch.float32
    assert next(model.parameters()).device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    model16, _ = load("tiny", tiny_texts=TEXTS, device="cpu", dtype="bf16")
    assert next(model16.parameters()).dtype == torch.bfloat16


def test_resolve_dtype() -> None:
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(InputError, match="unknown dtype 'float8'"):
        resolve_dtype("float8", torch.device("cpu"))


# ----------------------------------------------------------------------------- LoRA


def test_lora_targets_every_projection_of_llama_and_gpt2() -> None:
    llama, _ = build_tiny(TEXTS)
    assert default_target_modules(llama) == LLAMA_PROJECTIONS
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    assert default_target_modules(gpt2) == ["c_attn", "c_proj", "c_fc"]
    wrapped = add_lora(gpt2, LoraSettings(r=2))
    lora_layers = {n.split(".")[-2] for n, _ in wrapped.named_modules() if n.endswith("lora_A")}
    assert lora_layers == {"c_attn", "c_proj", "c_fc"}


def test_add_lora_trains_only_the_adapter_and_starts_as_the_base(input_ids: torch.Tensor) -> None:
    model, _ = build_tiny(TEXTS)
    before = _logits(model, input_ids)
    policy = add_lora(model, LoraSettings(r=8, alpha=16))
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    # 2 layers x 7 projections x (A, B)
    assert len(trainable) == 28 and all("lora_" in n for n in trainable)
    torch.testing.assert_close(_logits(policy.eval(), input_ids), before, rtol=0, atol=0)
    with pytest.raises(ValueError, match="LoRA rank r must be >= 1, got 0"):
        LoraSettings(r=0)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.5"):
        LoraSettings(dropout=1.5)


# ----------------------------------------------------------------------------- run directories


def test_sft_run_round_trip(sft_run: Path, input_ids: torch.Tensor) -> None:
    record = json.loads((sft_run / "setdpo_model.json").read_text())
    assert record == {
        "base_model": "base",
        "adapters": ["adapters/sft"],
        "trust_remote_code": False,
    }
    model, tokenizer = load(sft_run)
    assert isinstance(model, PeftModel)
    # The same adapter applied by hand, through the `adapter` argument, gives the same logits.
    by_hand, _ = load(sft_run / "base", adapter=sft_run / "adapters/sft")
    torch.testing.assert_close(
        _logits(model, input_ids), _logits(by_hand, input_ids), rtol=0, atol=1e-6
    )
    base, _ = build_tiny(TEXTS)
    assert (_logits(model, input_ids) - _logits(base, input_ids)).abs().max() > 1e-2
    original_tokenizer = build_tiny(TEXTS)[1]
    assert tokenizer.backend_tokenizer.to_str() == original_tokenizer.backend_tokenizer.to_str()
    assert tokenizer.chat_template == original_tokenizer.chat_template


def test_lora_save_load_round_trip_is_exact(tmp_path: Path, input_ids: torch.Tensor) -> None:
    model, tokenizer = load("tiny", tiny_texts=TEXTS)
    policy = add_lora(model, LoraSettings(r=4, alpha=8, dropout=0.0))
    _randomize_lora_b(policy, seed=7)
    expected = _logits(policy.eval(), input_ids)
    save_run_model(policy, tokenizer, tmp_path / "run", base_model="tiny")
    reloaded, _ = load(tmp_path / "run")
    torch.testing.assert_close(_logits(reloaded, input_ids), expected, rtol=0, atol=1e-6)


def test_reference_is_the_sft_model_not_the_base(sft_run: Path, input_ids: torch.Tensor) -> None:
    sft_model, _ = load(sft_run)
    sft_logits = _logits(sft_model, input_ids)
    base_logits = _logits(build_tiny(TEXTS)[0], input_ids)
    policy, _ = prepare_preference_model(sft_run, LoraSettings(r=4, alpha=8, dropout=0.0))
    policy.eval()
    with policy.disable_adapter():
        reference_logits = _logits(policy, input_ids)
    torch.testing.assert_close(reference_logits, sft_logits, rtol=0, atol=1e-5)
    assert (reference_logits - base_logits).abs().max() > 1e-2
    # The fresh adapter's B is zero: policy == reference at the first step (rewards 0).
    torch.testing.assert_close(_logits(policy, input_ids), sft_logits, rtol=0, atol=1e-5)
    frozen = load_reference(sft_run)
    assert isinstance(frozen, LlamaForCausalLM)
    assert not any(p.requires_grad for p in frozen.parameters())
    torch.testing.assert_close(_logits(frozen, input_ids), sft_logits, rtol=0, atol=1e-5)


def test_two_adapter_chain(sft_run: Path, tmp_path: Path, input_ids: torch.Tensor) -> None:
    policy, tokenizer = prepare_preference_model(sft_run, LoraSettings(r=4, alpha=8, dropout=0.0))
    _randomize_lora_b(policy, seed=2)
    expected = _logits(policy.eval(), input_ids)
    pref_run = tmp_path / "pref"
    save_run_model(policy, tokenizer, pref_run, init_run=sft_run)
    record = json.loads((pref_run / "setdpo_model.json").read_text())
    assert record["base_model"] == "base"
    assert record["adapters"] == ["adapters/sft", "adapters/pref"]
    assert read_run_model(pref_run).adapters == (
        pref_run.resolve() / "adapters/sft",
        pref_run.resolve() / "adapters/pref",
    )
    chained, _ = load(pref_run)
    assert isinstance(chained, PeftModel)
    torch.testing.assert_close(_logits(chained, input_ids), expected, rtol=0, atol=1e-6)
    merged, _ = load(pref_run, merge_all=True)
    assert isinstance(merged, LlamaForCausalLM)
    torch.testing.assert_close(_logits(merged, input_ids), expected, rtol=0, atol=1e-5)
    # Hand-derived: merged W = W0 + (alpha / r) * (B_sft A_sft + B_pref A_pref), alpha/r = 2.
    w0 = build_tiny(TEXTS)[0].model.layers[0].self_attn.q_proj.weight
    delta = torch.zeros_like(w0)
    for name in ("sft", "pref"):
        state = _adapter_state(pref_run / "adapters" / name)
        a = state["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
        b = state["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
        delta += 2.0 * b @ a
    torch.testing.assert_close(
        merged.model.layers[0].self_attn.q_proj.weight, w0 + delta, rtol=0, atol=1e-6
    )


def _adapter_state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


def test_full_fine_tuning_saves_the_whole_model(tmp_path: Path, input_ids: torch.Tensor) -> None:
    model, tokenizer = load("tiny", tiny_texts=TEXTS)
    with torch.no_grad():
        model.lm_head.weight.mul_(3.0)  # stands for trained weights
    save_run_model(model, tokenizer, tmp_path / "full", base_model="tiny")
    record = json.loads((tmp_path / "full" / "setdpo_model.json").read_text())
    assert (record["base_model"], record["adapters"]) == ("base", [])
    reloaded, _ = load(tmp_path / "full")
    torch.testing.assert_close(
        _logits(reloaded, input_ids), _logits(model, input_ids), rtol=0, atol=0
    )


def test_full_fine_tuning_preference_model_is_the_merged_sft_model(
    sft_run: Path, tmp_path: Path, input_ids: torch.Tensor
) -> None:
    policy, tokenizer = prepare_preference_model(sft_run, None)
    assert isinstance(policy, LlamaForCausalLM)  # no adapter: every weight trains
    assert all(p.requires_grad for p in policy.parameters())
    sft_logits = _logits(load(sft_run)[0], input_ids)
    torch.testing.assert_close(_logits(policy, input_ids), sft_logits, rtol=0, atol=1e-5)
    with torch.no_grad():
        policy.lm_head.weight.mul_(2.0)  # stands for trained weights
    save_run_model(policy, tokenizer, tmp_path / "pref", init_run=sft_run)
    record = json.loads((tmp_path / "pref" / "setdpo_model.json").read_text())
    assert (record["base_model"], record["adapters"]) == ("base", [])  # self-contained
    reloaded, _ = load(tmp_path / "pref")
    torch.testing.assert_close(
        _logits(reloaded, input_ids), _logits(policy, input_ids), rtol=0, atol=0
    )


def test_disable_dropout_zeroes_modules_and_attention_rates_but_not_lora() -> None:
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64))
    policy = add_lora(gpt2, LoraSettings(r=2, dropout=0.05))
    # embd + per layer (attn_dropout, resid_dropout, mlp dropout) = 1 + 2 x 3
    assert disable_dropout(policy) == 7
    drops = {n: m.p for n, m in policy.named_modules() if isinstance(m, torch.nn.Dropout)}
    assert all(p == 0.0 for n, p in drops.items() if "lora_dropout" not in n)
    assert {p for n, p in drops.items() if "lora_dropout" in n} == {0.05}  # set on purpose
    assert gpt2.config.resid_pdrop == 0.1  # a saved model keeps its own dropout
    sizes = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64}
    config = LlamaConfig(num_hidden_layers=2, num_attention_heads=2, attention_dropout=0.1, **sizes)
    llama = LlamaForCausalLM(config)
    assert disable_dropout(llama) == 2  # a float rate per attention layer, no modules
    assert all(layer.self_attn.attention_dropout == 0.0 for layer in llama.model.layers)


def test_save_run_model_needs_exactly_one_starting_point(sft_run: Path, tmp_path: Path) -> None:
    model, tokenizer = load(sft_run)
    with pytest.raises(ValueError, match="exactly one of base_model and init_run"):
        save_run_model(model, tokenizer, tmp_path, base_model="tiny", init_run=sft_run)
    with pytest.raises(ValueError, match="exactly one of base_model and init_run"):
        save_run_model(model, tokenizer, tmp_path)


def test_run_dir_errors(sft_run: Path, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    remote.mkdir()
    record = {"base_model": str(sft_run / "base"), "adapters": [], "trust_remote_code": True}
    (remote / "setdpo_model.json").write_text(json.dumps(record))
    with pytest.raises(InputError, match=r"trust_remote_code=True: pass trust_remote_code=True"):
        load(remote)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "setdpo_model.json").write_text(json.dumps({"base_model": "base", "adapters": ["x"]}))
    with pytest.raises(InputError, match=r"adapter folder .*x has no adapter_config.json"):
        load(broken)


# ----------------------------------------------------------------------------- local folders

_FAMILIES = {
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, LLAMA_PROJECTIONS),
    "mistral": (MistralConfig, MistralForCausalLM, LLAMA_PROJECTIONS),
    "gpt2": (GPT2Config, GPT2LMHeadModel, ["c_attn", "c_proj", "c_fc"]),
}


@pytest.mark.parametrize("family", sorted(_FAMILIES))
def test_local_folder_of_each_family_loads_with_eos_padding(
    family: str, tmp_path: Path, input_ids: torch.Tensor
) -> None:
    config_class, model_class, projections = _FAMILIES[family]
    _, tokenizer = build_tiny(TEXTS)
    tokenizer.pad_token = None  # as GPT-2's tokenizer: load must fall back to EOS
    sizes = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
    sizes |= {"num_attention_heads": 2, "num_key_value_heads": 1}
    if family == "gpt2":
        sizes = {"n_embd": 32, "n_layer": 1, "n_head": 2}
    torch.manual_seed(0)
    original = model_class(config_class(vocab_size=len(tokenizer), **sizes))
    original.save_pretrained(tmp_path / family)
    tokenizer.save_pretrained(tmp_path / family)
    model, loaded_tokenizer = load(tmp_path / family, device="cpu")
    assert type(model) is model_class
    assert loaded_tokenizer.pad_token == "</s>"
    assert model.config.pad_token_id == loaded_tokenizer.eos_token_id
    torch.testing.assert_close(
        _logits(model, input_ids), _logits(original.eval(), input_ids), rtol=0, atol=0
    )
    assert default_target_modules(model) == projections


# ----------------------------------------------------------------------------- loading errors


def test_offline_hub_id_names_the_id_and_the_missing_network(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads HF_HUB_OFFLINE once, at import: set its module value too.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)  # so the id cannot name a local folder
    with pytest.raises(InputError) as error:
        load("setdpo-tests/no-such-model-7f3a", device="cpu")
    message = str(error.value)
    print(message)
    assert "'setdpo-tests/no-such-model-7f3a'" in message
    assert "no network" in message and "local cache" in message


def test_folder_without_weights_or_config_is_refused(tmp_path: Path, sft_run: Path) -> None:
    model, _ = build_tiny(TEXTS)
    model.config.save_pretrained(tmp_path / "config-only")
    with pytest.raises(InputError, match=r"config-only has no weights: expected model.safetensors"):
        load(tmp_path / "config-only")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty has no config.json"):
        load(tmp_path / "empty")
    with pytest.raises(InputError, match=r"model folder ./no/such/folder does not exist"):
        load("./no/such/folder")
    with pytest.raises(InputError, match=r"sft is a LoRA adapter, not a model: load its base"):
        load(sft_run / "adapters" / "sft")
    with pytest.raises(InputError, match=r"unknown embedded model 'embedded:nope'"):
        load("embedded:nope")


# ----------------------------------------------------------------------------- embedded SmolLM2

_HOLD_LOCK = """
import os, sys, time
from pathlib import Path
from filelock import FileLock
models = Path(sys.argv[1])
with FileLock(str(models / "smollm2-135m-instruct.lock")):
    print("locked", flush=True)
    time.sleep(1.0)
    work = models / ".converting"
    work.mkdir()
    (work / "config.json").write_text("{}")
    os.replace(work, models / "smollm2-135m-instruct")
"""


def test_a_second_process_waits_for_the_conversion_lock_and_does_not_convert(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holds the conversion lock and publishes the folder; this one waits for
    the lock, finds the folder and does not convert (a conversion takes 20-70 s here)."""
    models = tmp_path / "models"
    models.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(models)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "locked"
    monkeypatch.setenv("SETDPO_CACHE", str(tmp_path))
    start = time.perf_counter()
    folder, converted = embedded_model_folder()
    waited = time.perf_counter() - start
    assert holder.wait(timeout=60) == 0
    assert (folder, converted) == (models / "smollm2-135m-instruct", False)
    assert waited > 0.5  # it blocked on the holder's lock (held 1 s) instead of converting
    assert json.loads((folder / "config.json").read_text()) == {}


@pytest.mark.smollm2
def test_embedded_loads_offline_and_generates_readable_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    folder, converted = embedded_model_folder()  # converts into the default cache once
    print(f"embedded_model_folder: converted={converted} in {time.perf_counter() - start:.1f} s")
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert embedded_model_folder() == (folder, False)
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime
    model, tokenizer = load(device="cpu")
    assert isinstance(model, LlamaForCausalLM)
    assert getattr(model.config, "quantization_config", None) is None
    # SmolLM2-135M: 30 layers, hidden 576, 9 heads, 3 kv heads, vocabulary 49152.
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (30, 576, 49152)
    assert tokenizer.pad_token_id == model.config.pad_token_id
    assert "<|im_start|>assistant" in tokenizer.chat_template  # the GGUF's template is kept
    messages = [
        {
            "role": "user",
            "content": "I enjoyed Star Wars (1977), Raiders of the Lost Ark (1981) and "
            "Back to the Future (1985). Which movie should I watch next? Answer in one sentence.",
        }
    ]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    start = time.perf_counter()
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    text = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    print(f"greedy answer ({time.perf_counter() - start:.1f} s): {text!r}")
    words = re.findall(r"[A-Za-z]{2,}", text)
    assert len(words) >= 8
    assert sum(c.isascii() and (c.isalnum() or c in " .,'!?()-:\n") for c in text) >= 0.9 * len(
        text
    )
