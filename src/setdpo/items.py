"""How an item is written in prompts and as a candidate: its title, one new token, or both.

The one home of the item representation (`ItemRepresentation`, named by a data directory's
``items_as``); data rendering, the tokenizer, the model, scoring, export and serving receive
it and ask it, none of them tests the name:

- ``titles``: the catalog title (the LLaRA / S-DPO prompts). A candidate is its title's
  tokens then EOS.
- ``tokens``: one new token per catalog item, ``<item_17>`` for row 17 of ``items.json``.
  A candidate is that one token (no EOS: nothing follows an item token), so every candidate
  of a context is scored from the one forward pass of its prompt (`setdpo.scoring` reads
  them all from the prompt's last position), and a catalog is ranked by one softmax.
- ``hybrid``: the title followed by its item token (``Heat (1995) <item_17>``): the text a
  pretrained model reads, plus a slot of its own that learns the item's collaborative signal.
  A candidate is the title, the token, then EOS.

The tokens are added to a tokenizer (`add_item_tokens`) as non-special tokens that absorb the
space before them, so ``watched <item_3>, <item_9>`` and ``Answer: <item_9>`` hold the token
alone; `extend_model` adds their embedding rows, initialised from the mean of the title's
token embeddings (input and output), as LC-Rec and TIGER-style vocabularies are. `as_titles`
writes text with item tokens back as titles (generated answers in `setdpo evaluate`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

REPRESENTATIONS = ("titles", "tokens", "hybrid")
ITEM_TOKEN = re.compile(r" ?<item_(\d+)>")


def item_token(row: int) -> str:
    """The token of catalog row ``row`` (its position in ``items.json``)."""
    return f"<item_{row}>"


@dataclass(frozen=True)
class ItemRepresentation:
    """How items are written (see the module docstring); ``kind`` in `REPRESENTATIONS`."""

    kind: str = "titles"

    def __post_init__(self) -> None:
        if self.kind not in REPRESENTATIONS:
            raise ValueError(
                f"item representation {self.kind!r} is not one of {list(REPRESENTATIONS)}"
            )

    @property
    def uses_tokens(self) -> bool:
        """Whether the vocabulary needs one token per catalog item."""
        return self.kind != "titles"

    @property
    def shows_titles(self) -> bool:
        """Whether texts hold titles (a tokenizer fitted to them needs the titles too)."""
        return self.kind != "tokens"

    @property
    def candidate_eos(self) -> bool:
        """Whether a candidate ends with EOS (not after a lone item token)."""
        return self.kind != "tokens"

    def write(self, row: int, title: str) -> str:
        """The text of catalog row ``row`` whose title is ``title``."""
        if self.kind == "titles":
            return title
        if self.kind == "tokens":
            return item_token(row)
        return f"{title} {item_token(row)}"

    def write_all(self, rows: Sequence[int], titles: Sequence[str]) -> list[str]:
        """`write` of each of ``rows``; ``titles`` is the whole catalog's."""
        return [self.write(row, titles[row]) for row in rows]


def write_titles(
    representation: ItemRepresentation, titles: Sequence[str], catalog: Sequence[str]
) -> list[str]:
    """``titles`` written as ``representation`` says; with item tokens each must be one of
    ``catalog``'s titles (a ValueError names the first that is not, by its index)."""
    if not representation.uses_tokens:
        return list(titles)
    rows = {title: row for row, title in reversed(list(enumerate(catalog)))}
    for i, title in enumerate(titles):
        if title not in rows:
            raise ValueError(
                f"[{i}]: {title!r} is not in the catalog (items are written as tokens)"
            )
    return [representation.write(rows[title], title) for title in titles]


def as_titles(text: str, titles: Sequence[str]) -> str:
    """``text`` with every item token written as its title (a hybrid item's title already
    stands before its token, so a token right after that title is dropped)."""

    def title(match: re.Match[str]) -> str:
        row = int(match.group(1))
        name = titles[row] if row < len(titles) else match.group(0).strip()
        return "" if text[: match.start()].endswith(name) else " " + name

    return ITEM_TOKEN.sub(title, text).strip() if ITEM_TOKEN.search(text) else text


def item_row(text: str) -> int | None:
    """The catalog row of an item written with its token (``<item_17>``, or a hybrid
    ``Heat (1995) <item_17>``); None for a title alone."""
    match = ITEM_TOKEN.search(text)
    return int(match.group(1)) if match and match.end() == len(text) else None


def text_segments(text: str) -> list[str]:
    """The pieces of ``text`` between its item tokens, as a tokenizer that holds them encodes
    them (each piece on its own, the space before a token stripped): what a tokenizer's BPE
    is fitted to, so that the separator between two item tokens gets merged like any text."""
    return [piece for piece in ITEM_TOKEN.sub("\0", text).split("\0") if piece]


def add_item_tokens(tokenizer: Any, n_items: int) -> list[int]:
    """Add the tokens of catalog rows ``0..n_items-1`` to ``tokenizer`` (those it has already
    are kept) and return their ids, in row order."""
    from tokenizers import AddedToken

    names = [item_token(row) for row in range(n_items)]
    missing = [name for name in names if name not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(
            [AddedToken(name, lstrip=True, normalized=False, special=False) for name in missing]
        )
    return tokenizer.convert_tokens_to_ids(names)


def item_tokens(tokenizer: Any) -> list[int]:
    """Ids of the item tokens ``tokenizer`` holds (none for a titles-only tokenizer)."""
    vocab = tokenizer.get_added_vocab()
    return sorted(token for name, token in vocab.items() if ITEM_TOKEN.fullmatch(name))


def extend_model(model: Any, tokenizer: Any, titles: Sequence[str]) -> list[int]:
    """Add one token per title to ``tokenizer`` and ``model``; each new input and output
    embedding row starts as the mean of its title's token rows. Returns the new token ids.

    A model whose embeddings already hold every item token (a trained run) is left as it is.
    """
    ids = add_item_tokens(tokenizer, len(titles))
    embeddings = model.get_input_embeddings()
    if embeddings.weight.shape[0] >= len(tokenizer):
        return ids
    old = embeddings.weight.shape[0]
    title_ids = [tokenizer(" " + title, add_special_tokens=False)["input_ids"] for title in titles]
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    tables = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight.data_ptr() != tables[0].data_ptr():
        tables.append(output.weight)
    with torch.no_grad():
        for table in tables:
            for token, pieces in zip(ids, title_ids, strict=True):
                if token >= old:
                    known = [p for p in pieces if p < old] or [0]
                    table[token] = table[known].mean(0)
    return ids


def set_item_rows(model: Any, ids: Sequence[int], vectors: torch.Tensor, seed: int) -> None:
    """Start the item tokens ``ids`` (input and output rows) from ``vectors`` [len(ids), d],
    collaborative embeddings (a trained SASRec's item table, as LLaRA feeds an LLM):
    projected to the model's width by a fixed random Gaussian matrix (seeded; inner products
    kept up to a scale, Johnson-Lindenstrauss), then scaled so that the rows' mean norm is
    the mean norm the table's item rows had (the model's own scale)."""
    if vectors.shape[0] != len(ids):
        raise ValueError(f"{vectors.shape[0]} vectors for {len(ids)} item tokens")
    tables = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight.data_ptr() != tables[0].data_ptr():
        tables.append(output.weight)
    generator = torch.Generator().manual_seed(seed)
    width = tables[0].shape[1]
    projection = torch.randn(vectors.shape[1], width, generator=generator, dtype=torch.float32)
    projected = vectors.detach().float().cpu() @ projection
    index = torch.tensor(list(ids))
    with torch.no_grad():
        for table in tables:
            scale = table[index].norm(dim=1).mean() / projected.norm(dim=1).mean()
            table[index] = (projected * scale).to(table.device, table.dtype)
