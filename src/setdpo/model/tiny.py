"""The tiny model for tests and smoke runs: a randomly initialised small Llama and a
byte-level BPE tokenizer trained on the data's own texts, built in well under a second."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from tokenizers import Tokenizer, decoders, pre_tokenizers, processors, trainers
from tokenizers.models import BPE
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

TINY = "tiny"


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
    backend = Tokenizer(BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return fit_bpe_tokenizer(backend, texts, vocab_size, model_max_length=2048)


def fit_bpe_tokenizer(
    backend: Tokenizer, texts: Iterable[str], vocab_size: int, model_max_length: int
) -> PreTrainedTokenizerFast:
    """Train ``backend`` (a BPE model whose byte-level pre-tokenizer and decoder are set) on
    ``texts`` and wrap it: ``<s>`` in front of every encoding, ``</s>`` to end answers,
    ``<pad>`` to pad, a minimal chat template. BPE training draws nothing at random: the same
    texts give the same merges."""
    specials = ["<pad>", "<s>", "</s>"]
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
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,  # decode(encode(text)) must give the text back
    )
