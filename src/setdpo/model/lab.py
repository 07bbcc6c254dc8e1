"""The lab model: a small Llama trained from scratch on a prepared data directory's own texts.

Not a pretrained LLM: a small language model over the catalog, a fast instrument for
comparing objectives on a CPU (SFT on all of ML-100K's training contexts is affordable on two
cores). Its byte-level BPE tokenizer is fitted to the training split's prompts and the
catalog's titles, so that a title takes a few tokens (ML-100K: median 4, mean 5.2 at the
default 4,096 tokens) and reads the same as a candidate as inside a prompt's history. Train
it with full fine-tuning: LoRA on random weights learns little.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from setdpo.data import load_items, load_split
from setdpo.data.store import item_representation, token_catalog
from setdpo.items import add_item_tokens, text_segments
from setdpo.model.tiny import fit_bpe_tokenizer

LAB = "lab"

# Pre-tokens: a word with the space before it, a comma (with the space before it, if any),
# or one whitespace character. Commas stand alone so that "Heat (1995)," in a history and the
# candidate "Heat (1995)" share their tokens; "(1995)" stays one word, so a year can become
# one token. Between item tokens (`setdpo.items`) the separator reads " ," (the tokenizer
# puts a space before every text segment), which then is one token, not two.
_WORDS = Regex(r" ?[^\s,]+| ?,|\s")


@dataclass(frozen=True)
class LabSettings:
    """Size and seed of the lab model. The defaults (4 layers x 256 hidden, 4 heads, MLP
    768, 4,096 tokens, untied embeddings) make 5,507,328 parameters."""

    layers: int = 4
    hidden: int = 256
    heads: int = 4
    mlp: int = 768
    vocab_size: int = 4096
    max_positions: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("layers", "hidden", "heads", "mlp", "max_positions"):
            if getattr(self, name) < 1:
                raise ValueError(f"LabSettings.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden={self.hidden} is not a multiple of heads={self.heads}")
        if self.vocab_size < 259:  # 256 byte symbols + <pad>, <s>, </s>
            raise ValueError(f"vocab_size must be >= 259, got {self.vocab_size}")


def lab_settings(name: str) -> LabSettings | None:
    """The settings a lab model name asks for, None for any other name: ``lab`` (the
    defaults) or ``lab:`` with `LabSettings` fields, e.g. ``lab:layers=2,hidden=192,mlp=576``."""
    if name != LAB and not name.startswith(LAB + ":"):
        return None
    fields = {f.name for f in dataclasses.fields(LabSettings)}
    values: dict[str, int] = {}
    for part in filter(None, name[len(LAB) + 1 :].split(",")):
        key, _, value = part.partition("=")
        if key.strip() not in fields or not value.strip().isdigit():
            raise ValueError(
                f"lab model {name!r}: {part!r} is not field=integer with a field of {sorted(fields)}"
            )
        values[key.strip()] = int(value)
    return LabSettings(**values)


def fit_lab_tokenizer(
    texts: Iterable[str],
    vocab_size: int = LabSettings.vocab_size,
    max_length: int = LabSettings.max_positions,
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer of at most ``vocab_size`` tokens fitted to ``texts``.

    Every encoding starts with a space (then the tokenizer's ``<s>``), so a title encoded
    alone (a candidate) gives the tokens it has after "watched " or ", " in a prompt; the
    decoder drops that one space, so ``decode(encode(text)) == text`` for any text. No
    randomness: the same texts give the same tokenizer.
    """
    backend = Tokenizer(BPE())
    backend.normalizer = normalizers.Prepend(" ")
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(_WORDS, behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Strip(" ", 1, 0)])
    return fit_bpe_tokenizer(backend, texts, vocab_size, model_max_length=max_length)


def lab_texts(data_dir: str | os.PathLike) -> list[str]:
    """The texts the lab tokenizer is fitted to: every training prompt (as the data's template
    rendered it, in the pieces between item tokens: they are added whole, `setdpo.items`) and,
    unless items are written as tokens alone, every catalog title. Nothing from the valid or
    test split."""
    pieces = [
        piece
        for example in load_split(data_dir, "train")
        for piece in text_segments(example.prompt)
    ]
    if not item_representation(data_dir).shows_titles:
        return pieces
    return pieces + [item["title"] for item in load_items(data_dir)]


def build_lab_model(
    data_dir: str | os.PathLike, settings: LabSettings = LabSettings()
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A randomly initialised Llama (seeded by ``settings.seed``, the global RNG untouched)
    and its tokenizer fitted to ``lab_texts(data_dir)``; the model is in eval mode.

    When the data writes items as tokens, they are part of the vocabulary from the start and
    their rows are initialised like every other row: the mean of a title's random BPE rows
    (`setdpo.items.extend_model`, for pretrained models) would start related items close
    together for no reason, and measured slower to train.
    """
    tokenizer = fit_lab_tokenizer(lab_texts(data_dir), settings.vocab_size, settings.max_positions)
    titles = token_catalog(data_dir)
    if titles is not None:
        add_item_tokens(tokenizer, len(titles))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden,
        intermediate_size=settings.mlp,
        num_hidden_layers=settings.layers,
        num_attention_heads=settings.heads,
        num_key_value_heads=settings.heads,
        max_position_embeddings=settings.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = LlamaForCausalLM(config)
    return model.eval(), tokenizer
