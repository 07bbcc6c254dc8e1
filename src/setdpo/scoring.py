"""Candidate log-probabilities given their prompt, with the prompt computed once per context.

``s(y|x) = sum_t log pi(y_t | x, y_<t)``: the log-prob of candidate token t comes from the
logits at the previous position (the last prompt token predicts the first candidate token).

Shared prefix (``share_prefix=True``) has two routes; `shared_route` picks one per call.

The cache route, two forward passes per batch:

1. the prompts [B, P] (right-padded) run once with a key/value cache; their logits are kept
   only at each prompt's last real token (``logits_to_keep``), giving every candidate's
   first-token log-prob;
2. for each chunk of candidates, the candidates of a context are packed side by side into
   one row (all tokens but each candidate's last, whose logits nobody needs) that attends
   to the context's cached prompt and, block-diagonally and causally, to its own
   candidate only. Positions continue from the true prompt length, so RoPE sees each
   candidate exactly as if it followed its prompt alone. Gradients flow through the cached
   prompt keys/values into the prompt pass (training with LoRA uses this).

The packed route, one forward pass per chunk and no cache: each row holds the context's
prompt, then its candidates packed the same way, under one block mask (the prompt causal,
each candidate over the prompt and itself). Gradient checkpointing turns the cache off in
training, and this route is what it uses.

Tokens processed: ``P + n C`` per context instead of ``n (P + C)``.

Why candidates packed in a row over the cache, not the cache expanded over candidates (one
row per candidate, ``DynamicCache.batch_repeat_interleave``): expanding copies the prompt's
keys and values n times in every layer (and GQA repeats them again inside attention).
Measured on SmolLM2-135M (CPU, 1 thread, shared machine; P=300, n=20, C=10, no grad; best
of 3): the candidate pass took 1.38 s packed against 2.78 s with the expanded cache (a
profile of the latter: aten::copy_ 0.82 s and cat 0.35 s beside 1.60 s of matrix products)
and 1.11 s for the same 180 tokens as one plain row; the whole shared call 4.13 s against
52.7 s repeated (12.8x; ideal n(P+C)/(P+nC) = 12.4). The packed route reruns the prompt for
every chunk, which catalog ranking (hundreds of candidates in chunks) cannot afford.

The cache goes to the model as ``cache=`` (transformers >= 5.24; the former
``past_key_values`` is removed in 5.40). Neither route ever falls back to repeating the
prompt: `tests/test_scoring.py` counts the tokens the model reads.

Both need ``sdpa`` or ``eager`` attention and a model that places tokens by position ids
(Llama, Qwen2, Mistral, GPT-2, ...; with sliding window layers only while prompt +
candidate fit in the window); ALiBi models (Bloom, MPT, Falcon with ``alibi``) derive
positions from the attention mask and are refused up front.

Log-probs are float32 whatever the model's dtype or autocast: summing 10-30 token
log-probs in bf16 would lose the differences the objectives compare.

``share_prefix=False`` is the plain reference: one row per candidate holding its prompt and
the candidate, right-padded, no cache, no custom mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from setdpo import faults
from setdpo.tokenization import (
    CandidateCollator,
    TokenizedExample,
    tokenize_candidates,
    tokenize_prompt,
)

TokenIndex = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (context b, candidate j, token t)


ROUTES = ("cache", "packed")  # the two shared-prompt routes, forced by share_prefix=<name>
ALIBI_MODEL_TYPES = ("bloom", "mpt")  # Falcon says so with config.alibi
LOGPROB_ROWS = 1024  # token rows of float32 log-softmax work at a time (bounds memory)


@dataclass(frozen=True)
class ScoringOptions:
    """How candidates are scored, as every caller of `candidate_logps` passes it.

    share_prefix: True = the prompt once per context, by the route `shared_route` picks;
    ``"cache"`` or ``"packed"`` forces one; False = repeated (the reference).
    average: length-average each candidate's log-prob instead of summing.
    chunk_size: at most this many candidates per forward pass (None: all at once).
    """

    share_prefix: bool | str = True
    average: bool = False
    chunk_size: int | None = None

    def __post_init__(self) -> None:
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None, got {self.chunk_size}")
        if self.share_prefix not in (True, False, *ROUTES):
            raise ValueError(
                f"share_prefix must be True, False, 'cache' or 'packed', got {self.share_prefix!r}"
            )

    def values(self) -> dict[str, Any]:
        """What changes a log-prob's value (chunking does not): the key of memoised scores."""
        return {"share_prefix": self.share_prefix, "average": self.average}

    def score(self, model: Any, batch: dict[str, torch.Tensor]) -> CandidateScores:
        """`candidate_logps` of ``batch`` under ``model`` with these options."""
        return candidate_logps(model, batch, self.share_prefix, self.average, self.chunk_size)


@dataclass
class CandidateScores:
    """logps [B, n]: summed (or length-averaged) log-prob per candidate, 0 at padding;
    mask [B, n] bool: real candidates; token_logps [B, n, C]: per token, 0 at padding."""

    logps: torch.Tensor
    mask: torch.Tensor
    token_logps: torch.Tensor


def candidate_logps(
    model: Any,
    batch: dict[str, torch.Tensor],
    share_prefix: bool | str = True,
    average: bool = False,
    chunk_size: int | None = None,
) -> CandidateScores:
    """Log-prob of each candidate of ``batch`` (`setdpo.tokenization.CandidateCollator`
    layout) under ``model`` (a causal LM, plain or peft).

    share_prefix, average, chunk_size: as `ScoringOptions` describes them (checked there).
    """
    ScoringOptions(share_prefix, average, chunk_size)
    route = shared_route(model) if share_prefix is True else share_prefix
    device = model.get_input_embeddings().weight.device
    prompt_ids, prompt_mask = batch["prompt_ids"].to(device), batch["prompt_mask"].to(device)
    cand_ids, cand_mask = batch["candidate_ids"].to(device), batch["candidate_mask"].to(device)
    prompt_lens = _right_padded_lengths(prompt_mask, "prompt_mask")
    cand_lens = _right_padded_lengths(cand_mask, "candidate_mask")
    if bool((prompt_lens == 0).any()):
        raise ValueError(f"contexts {_where(prompt_lens == 0)} have an empty prompt")
    pairs = (cand_lens > 0).nonzero()  # [N, 2] (b, j) of real candidates, ordered by b then j
    chunks = pairs.split(chunk_size or max(len(pairs), 1))
    if route:
        _check_shareable(model, int((prompt_lens.unsqueeze(1) + cand_lens).max()))
    if route == "cache":
        index, values = _shared(model, prompt_ids, prompt_lens, cand_ids, cand_lens, chunks)
    else:  # one forward pass per chunk, its logits freed before the next
        run = _packed_chunk if route == "packed" else _repeated_chunk
        index, values = _cat_index(
            [run(model, prompt_ids, prompt_lens, cand_ids, cand_lens, c) for c in chunks]
        )
    token_logps = values.new_zeros(cand_ids.shape).index_put(index, values)
    logps = token_logps.sum(-1)  # float32: bf16 sums of 10-30 terms lose the differences
    if average:
        logps = logps / cand_lens.clamp(min=1)
    return CandidateScores(logps=logps, mask=cand_lens > 0, token_logps=token_logps)


def shared_route(model: Any) -> str:
    """The shared-prompt route for a call: ``"packed"`` (one row per context, no cache) when
    the model trains with activation (gradient) checkpointing, which turns the key/value cache
    off (`is_activation_checkpointing`, not its deprecated alias `is_gradient_checkpointing`);
    else ``"cache"``. Measured on SmolLM2-135M (benchmarks/RESULTS.md, "Scoring routes and
    memory"): with gradients the cache was as fast or faster and used less memory; without,
    in chunks (evaluation, catalog ranking) the packed row reruns the prompt per chunk (1.9x
    slower at 5 chunks), and unchunked the two were within 15%.
    """
    if model.training and getattr(model, "is_activation_checkpointing", False):
        return "packed"
    return "cache"


def _check_shareable(model: Any, total_length: int) -> None:
    """Refuse models the shared routes cannot run exactly, before any forward pass.

    total_length: the longest prompt + candidate of the batch."""
    config = model.config
    if config.model_type in ALIBI_MODEL_TYPES or getattr(config, "alibi", False):
        raise ValueError(
            f"shared-prefix scoring places candidates by position ids, which model type "
            f"{config.model_type!r} ignores (ALiBi positions come from the attention mask): "
            f"pass share_prefix=False"
        )
    attention = getattr(config, "_attn_implementation", None)
    if attention not in ("sdpa", "eager"):
        raise ValueError(
            f"shared-prefix scoring needs sdpa or eager attention (custom 4D masks), the model "
            f"uses {attention!r}: load it with attn_implementation='sdpa' or pass share_prefix=False"
        )
    layer_types = getattr(config, "layer_types", None)
    sliding = "sliding_attention" in layer_types if layer_types else True
    window = getattr(config, "sliding_window", None) if sliding else None
    if window and getattr(config, "use_sliding_window", True) and total_length > window:
        raise ValueError(
            f"prompt + candidate ({total_length} tokens) exceed the model's sliding window "
            f"({window}): pass share_prefix=False"
        )


def _right_padded_lengths(mask: torch.Tensor, name: str) -> torch.Tensor:
    """Real-token counts of a right-padded 0/1 mask [..., L]; a hole in it is an error."""
    lengths = mask.sum(-1)
    expected = torch.arange(mask.shape[-1], device=mask.device) < lengths.unsqueeze(-1)
    if not torch.equal(mask.bool(), expected):
        raise ValueError(f"{name} must be right-padded (1s then 0s) in every row")
    return lengths


def _where(flags: torch.Tensor) -> list[int]:
    return flags.nonzero().flatten().tolist()


class _TokenLogProbs(torch.autograd.Function):
    """log softmax(logits)[target] in float32: logits [T, V], targets [T] -> [T].

    Keeps the logits (in the model's dtype) for the backward instead of a float32
    log-softmax [T, V], and does the float32 work ``LOGPROB_ROWS`` rows at a time, so a
    bf16 model never holds a full float32 copy of its logits.
    """

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        lse = torch.cat(
            [torch.logsumexp(part.float(), -1) for part in logits.split(LOGPROB_ROWS)]
            or [logits.new_zeros(0, dtype=torch.float32)]
        )
        ctx.save_for_backward(logits, targets, lse)
        return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1).float() - lse

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        logits, targets, lse = ctx.saved_tensors
        parts = []
        for start in range(0, len(logits), LOGPROB_ROWS):
            rows = slice(start, start + LOGPROB_ROWS)
            g = grad[rows].unsqueeze(-1)
            part = -(logits[rows].float() - lse[rows].unsqueeze(-1)).exp() * g  # -softmax * g
            part.scatter_add_(-1, targets[rows].unsqueeze(-1), g)
            parts.append(part.to(logits.dtype))
        return torch.cat(parts) if parts else torch.zeros_like(logits), None


def _log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return _TokenLogProbs.apply(logits, targets)


def _tokens_of(lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For items of ``lengths`` [N], each token's item [T] and index within its item [T]."""
    item = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)
    starts = lengths.cumsum(0) - lengths
    return item, torch.arange(len(item), device=lengths.device) - starts[item]


def _cat_index(parts: Sequence[tuple[TokenIndex, torch.Tensor]]) -> tuple[TokenIndex, torch.Tensor]:
    index = tuple(torch.cat([p[0][k] for p in parts]) for k in range(3))
    return index, torch.cat([p[1] for p in parts])


# --- repeated: the reference ------------------------------------------------------------


def _repeated_chunk(
    model: Any,
    prompt_ids: torch.Tensor,
    prompt_lens: torch.Tensor,
    cand_ids: torch.Tensor,
    cand_lens: torch.Tensor,
    pairs: torch.Tensor,
) -> tuple[TokenIndex, torch.Tensor]:
    """One row per candidate of the chunk: its prompt then the candidate (all but its last
    token), right-padded, no cache, no custom mask."""
    b, j = pairs.unbind(1)
    lens, clens = prompt_lens[b], cand_lens[b, j]
    width = int((lens + clens).max()) - 1
    ids = torch.nn.functional.pad(prompt_ids[b], (0, max(width - prompt_ids.shape[1], 0)))
    ids = ids[:, :width].clone()
    item, t = _tokens_of(clens)  # every candidate token, [T]
    row, col = item, lens[item] + t  # where token t of the candidate sits in its row
    inputs = t < clens[item] - 1
    ids[row[inputs], col[inputs]] = cand_ids[b[item], j[item], t][inputs]
    mask = torch.arange(width, device=ids.device) < (lens + clens - 1).unsqueeze(1)
    # logits only over the span where some row predicts a candidate token
    first = int(lens.min()) - 1
    keep = torch.arange(first, width, device=ids.device)
    logits = model(input_ids=ids, attention_mask=mask.long(), logits_to_keep=keep).logits
    values = _log_probs(logits[row, col - 1 - first], cand_ids[b[item], j[item], t])
    return (b[item], j[item], t), values


# --- shared prompt: packing ---------------------------------------------------------------


@dataclass
class _Packing:
    """The candidates of a chunk packed side by side, one row per context, each candidate's
    tokens but its last (whose logits nobody needs).

    contexts [R]: the context of each row; row_of [N]: the row of each candidate;
    ids, positions, segment [R, Q]: token ids, position ids (continuing from the true prompt
    length), and which candidate each column holds (-1: padding); per packed token [T]:
    its row and col, and (b, j, t): it is token t of candidate j of context b, so its
    logits predict token t + 1.
    """

    contexts: torch.Tensor
    row_of: torch.Tensor
    ids: torch.Tensor
    positions: torch.Tensor
    segment: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    b: torch.Tensor
    j: torch.Tensor
    t: torch.Tensor


def _pack(
    cand_ids: torch.Tensor, cand_lens: torch.Tensor, prompt_lens: torch.Tensor, pairs: torch.Tensor
) -> _Packing:
    b, j = pairs.unbind(1)
    seg_lens = cand_lens[b, j] - 1  # inputs: all tokens but the last
    contexts, row_of = torch.unique(b, return_inverse=True)  # sorted: pairs come ordered by b
    item, t = _tokens_of(seg_lens)
    starts = seg_lens.cumsum(0) - seg_lens  # offsets as if all rows were one
    row_start = starts[torch.searchsorted(row_of, torch.arange(len(contexts), device=b.device))]
    row, col = row_of[item], starts[item] - row_start[row_of[item]] + t
    shape = (len(contexts), int(col.max()) + 1 if len(col) else 0)
    ids = torch.zeros(shape, dtype=torch.long, device=b.device).index_put(
        (row, col), cand_ids[b[item], j[item], t]
    )
    positions = torch.zeros_like(ids).index_put((row, col), prompt_lens[b[item]] + t)
    segment = torch.full_like(ids, -1).index_put((row, col), item)
    return _Packing(contexts, row_of, ids, positions, segment, row, col, b[item], j[item], t)


def _candidate_rows(prompt_mask: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
    """Which keys each packed candidate token sees [R, Q, P + Q]: the real prompt tokens and
    the earlier tokens of its own candidate. segment [R, Q] (-1: padding, which sees the
    earlier padding, so that no query row is fully masked)."""
    q = torch.arange(segment.shape[1], device=segment.device)
    own = (segment.unsqueeze(2) == segment.unsqueeze(1)) & (q.unsqueeze(1) >= q.unsqueeze(0))
    prompt = (segment >= 0).unsqueeze(2) & prompt_mask.unsqueeze(1)
    return torch.cat([prompt, own], dim=2)


def _as_mask(allowed: torch.Tensor, model: Any) -> torch.Tensor:
    """[R, Q, K] booleans -> the attention mask [R, 1, Q, K]: boolean for sdpa, additive for
    eager."""
    allowed = allowed.unsqueeze(1)
    if model.config._attn_implementation == "sdpa":
        return allowed
    dtype = model.get_input_embeddings().weight.dtype
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )


def _first_token_logps(last_logits: torch.Tensor) -> torch.Tensor:
    """Log-softmax [R, V], float32, of each prompt's last position: every candidate's first
    token is read from it (a row per context, not per candidate: catalogs are long)."""
    return last_logits.float().log_softmax(-1)


# --- shared prompt, cache route -----------------------------------------------------------


def _shared(
    model: Any,
    prompt_ids: torch.Tensor,
    prompt_lens: torch.Tensor,
    cand_ids: torch.Tensor,
    cand_lens: torch.Tensor,
    chunks: Sequence[torch.Tensor],
) -> tuple[TokenIndex, torch.Tensor]:
    """The prompts once (with a cache), then each chunk of candidates packed over it."""
    first_logps, kv = _prompt_pass(model, prompt_ids, prompt_lens)
    pairs = torch.cat(list(chunks))
    b, j = pairs.unbind(1)
    parts = [((b, j, torch.zeros_like(b)), first_logps[b, cand_ids[b, j, 0]])]
    prompt_mask = torch.arange(prompt_ids.shape[1], device=b.device) < prompt_lens.unsqueeze(1)
    for chunk in chunks:
        part = _cached_chunk(
            model, kv, prompt_mask, cand_ids, _pack(cand_ids, cand_lens, prompt_lens, chunk)
        )
        if part is not None:
            parts.append(part)
    return _cat_index(parts)


def _prompt_pass(
    model: Any, prompt_ids: torch.Tensor, prompt_lens: torch.Tensor
) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Log-probs of the next token after each prompt [B, V] and the per-layer prompt
    keys/values [B, heads, P, head_dim]."""
    last, which = torch.unique(prompt_lens - 1, return_inverse=True)
    mask = torch.arange(prompt_ids.shape[1], device=prompt_ids.device) < prompt_lens.unsqueeze(1)
    out = model(
        input_ids=prompt_ids, attention_mask=mask.long(), use_cache=True, logits_to_keep=last
    )
    cache = out.cache
    if cache is None or any(not isinstance(layer, DynamicLayer) for layer in cache.layers):
        raise ValueError(
            f"the cache route of shared-prefix scoring needs the model's dynamic key/value "
            f"cache, got {type(cache).__name__}: pass share_prefix=True or 'packed'"
        )
    rows = torch.arange(len(prompt_ids), device=prompt_ids.device)
    first_logps = _first_token_logps(out.logits[rows, which])
    return first_logps, [(layer.keys, layer.values) for layer in cache.layers]


def _cached_chunk(
    model: Any,
    kv: list[tuple[torch.Tensor, torch.Tensor]],
    prompt_mask: torch.Tensor,
    cand_ids: torch.Tensor,
    pack: _Packing,
) -> tuple[TokenIndex, torch.Tensor] | None:
    """Tokens 2.. of a chunk's candidates: one packed row per context over its cached prompt."""
    if pack.ids.shape[1] == 0:
        return None
    mask = _as_mask(_candidate_rows(prompt_mask[pack.contexts], pack.segment), model)
    cache = DynamicCache([(k[pack.contexts], v[pack.contexts]) for k, v in kv])
    logits = model(
        input_ids=pack.ids, attention_mask=mask, position_ids=pack.positions, cache=cache
    ).logits
    targets = cand_ids[pack.b, pack.j, pack.t + 1]
    return (pack.b, pack.j, pack.t + 1), _log_probs(logits[pack.row, pack.col], targets)


# --- shared prompt, packed route ----------------------------------------------------------


def _packed_chunk(
    model: Any,
    prompt_ids: torch.Tensor,
    prompt_lens: torch.Tensor,
    cand_ids: torch.Tensor,
    cand_lens: torch.Tensor,
    pairs: torch.Tensor,
) -> tuple[TokenIndex, torch.Tensor]:
    """Row r: the prompt of context r right-padded to the chunk's longest prompt (W), then
    its candidates packed (`_pack`). Attention: the prompt is causal over its real tokens; a
    candidate token sees the real prompt tokens and the earlier tokens of its candidate.
    Logits are kept at each prompt's last token (first candidate tokens) and over the
    candidate columns only."""
    pack = _pack(cand_ids, cand_lens, prompt_lens, pairs)
    lens = prompt_lens[pack.contexts]
    width, rows, device = int(lens.max()), len(pack.contexts), lens.device
    p = torch.arange(width, device=device)
    prompt_mask = p < lens.unsqueeze(1)  # [R, W]
    causal = p.unsqueeze(1) >= p.unsqueeze(0)
    # a padding query sees itself too (a fully masked row would give NaN)
    prompt_rows = causal & (
        prompt_mask.unsqueeze(1) | torch.eye(width, dtype=torch.bool, device=device)
    )
    prompt_rows = torch.cat([prompt_rows, prompt_rows.new_zeros(rows, width, pack.ids.shape[1])], 2)
    allowed = torch.cat([prompt_rows, _candidate_rows(prompt_mask, pack.segment)], 1)
    last, which = torch.unique(lens - 1, return_inverse=True)
    keep = torch.cat([last, width + torch.arange(pack.ids.shape[1], device=device)])
    logits = model(
        input_ids=torch.cat([prompt_ids[pack.contexts, :width], pack.ids], 1),
        attention_mask=_as_mask(allowed, model),
        position_ids=torch.cat([p.expand(rows, width), pack.positions], 1),
        logits_to_keep=keep,
        use_cache=False,
    ).logits  # [R, len(keep), V]
    b, j = pairs.unbind(1)
    first = _first_token_logps(logits[torch.arange(rows, device=device), which])
    targets = cand_ids[pack.b, pack.j, pack.t + 1]
    rest = _log_probs(logits[pack.row, len(last) + pack.col], targets)
    index = (
        torch.cat([b, pack.b]),
        torch.cat([j, pack.j]),
        torch.cat([torch.zeros_like(b), pack.t + 1]),
    )
    return index, torch.cat([first[pack.row_of, cand_ids[b, j, 0]], rest])


# --- many examples ------------------------------------------------------------------------


@torch.no_grad()
def score_all(
    model: Any,
    tokenized: Sequence[TokenizedExample],
    options: ScoringOptions,
    pad_token_id: int,
    batch_size: int = 4,
    desc: str = "scoring",
    progress: bool = False,
) -> list[torch.Tensor]:
    """Per example, the float32 log-prob of each candidate [n] (on the CPU): ``batch_size``
    contexts per `candidate_logps` call. The one batched scoring loop: evaluation, plain
    text and recommendation go through it.

    The model runs in eval mode (dropout off) and is put back in its previous mode.
    """
    collate = CandidateCollator(pad_token_id)
    was_training = model.training
    model.eval()
    out: list[torch.Tensor] = []
    try:
        starts = range(0, len(tokenized), batch_size)
        for start in tqdm(starts, desc=desc, disable=not progress):
            faults.reached("score.batch")
            group = tokenized[start : start + batch_size]
            logps = options.score(model, collate(list(group))).logps.float().cpu()
            out.extend(logps[i, : len(t.candidate_ids)] for i, t in enumerate(group))
    finally:
        model.train(was_training)
    return out


# --- plain text ---------------------------------------------------------------------------


def score_texts(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    candidates: Sequence[Sequence[str]],
    options: ScoringOptions = ScoringOptions(),
    *,
    chat_template: bool = False,
    batch_size: int = 4,
    eos: bool = True,
) -> list[list[float]]:
    """Summed (``options.average``: length-averaged) log-prob of each candidate title (+ EOS
    unless ``eos`` is False: lone item tokens, `setdpo.items`) given its prompt:
    ``[prompt][candidate]`` (each title tokenized as it follows its prompt,
    `setdpo.tokenization.tokenize_candidates`).

    Prompts are tokenized as `setdpo.tokenization` does (no truncation); scored by `score_all`.
    """
    if len(prompts) != len(candidates):
        raise ValueError(f"{len(prompts)} prompts but {len(candidates)} candidate lists")
    for i, titles in enumerate(candidates):
        if not titles:
            raise ValueError(f"prompt {i} has no candidates")
    tokenized = [
        TokenizedExample(
            prompt_ids=tokenize_prompt(tokenizer, prompt, chat_template),
            candidate_ids=tokenize_candidates(tokenizer, prompt, titles, chat_template, eos),
            levels=[1] * len(titles),
        )
        for prompt, titles in zip(prompts, candidates, strict=True)
    ]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return [row.tolist() for row in score_all(model, tokenized, options, pad, batch_size)]
