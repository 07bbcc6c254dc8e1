"""setdpo.scoring: shared-prefix scoring equals the repeated reference and a plain forward
pass, in values and gradients, with LoRA on and off, on mixed batches and in chunks."""

from __future__ import annotations

import contextlib
import time
import warnings
from pathlib import Path

import pytest
import torch
from transformers import (
    BloomConfig,
    BloomForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from setdpo import scoring
from setdpo.data import load_split, prompts
from setdpo.losses import compute
from setdpo.model import LoraSettings, add_lora, build_tiny, load
from setdpo.scoring import ScoringOptions, candidate_logps, score_texts, shared_route
from setdpo.tokenization import CandidateCollator, TokenizedExample, tokenize_example

TEXTS = ["Toy Story (1995)", "GoldenEye (1995)", "Heat (1995)", "The user watched"] * 3


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on this shared 2-core machine, 2 threads ran SmolLM2 about 10x slower
    (threads spinning against the other processes) than 1."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _randomize_lora_b(model: torch.nn.Module, seed: int) -> None:
    """LoRA's B starts at zero (a no-op adapter); nonzero B makes the adapter matter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)


@pytest.fixture(scope="module")
def tiny_lora():
    model, tokenizer = build_tiny(TEXTS, seed=0)
    model = add_lora(model, LoraSettings(r=4, alpha=8, dropout=0.0))
    _randomize_lora_b(model, seed=1)
    return model.eval(), tokenizer


def _random_batch(vocab: int, prompt_lens, cand_lens, seed: int = 0) -> dict[str, torch.Tensor]:
    """Contexts with the given prompt lengths and, per context, candidate lengths."""
    g = torch.Generator().manual_seed(seed)

    def ids(k: int) -> list[int]:
        return torch.randint(3, vocab, (k,), generator=g).tolist()

    items = [
        TokenizedExample(ids(p), [ids(c) for c in cs], [1] + [2] * (len(cs) - 1))
        for p, cs in zip(prompt_lens, cand_lens, strict=True)
    ]
    return CandidateCollator(pad_token_id=0)(items)


# prompts of 9, 3 and 15 tokens; 3, 1 and 5 candidates of 1 to 6 tokens
MIXED = ([9, 3, 15], [[3, 1, 5], [2], [4, 6, 2, 2, 3]])


def _grads(model, batch, weights, params, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs [B, n] and the gradient of ``sum(weights * logps)`` w.r.t. ``params``, flat."""
    logps = candidate_logps(model, batch, **kwargs).logps
    grads = torch.autograd.grad((weights * logps).sum(), params, allow_unused=True)
    flat = [
        (g if g is not None else torch.zeros_like(p)).flatten()
        for g, p in zip(grads, params, strict=True)
    ]
    return logps.detach(), torch.cat(flat)


def _assert_grads_close(shared: torch.Tensor, repeated: torch.Tensor) -> None:
    assert repeated.norm() > 0
    assert (shared - repeated).norm() / repeated.norm() < 1e-4


@contextlib.contextmanager
def _base_params_trainable(model):
    """With the adapter disabled, differentiate w.r.t. the (otherwise frozen) base weights."""
    base = [p for n, p in model.named_parameters() if "lora_" not in n]
    for p in base:
        p.requires_grad_(True)
    try:
        yield base
    finally:
        for p in base:
            p.requires_grad_(False)


@pytest.mark.parametrize("route", ["cache", "packed"])
@pytest.mark.parametrize("chunk_size", [None, 1, 3])
@pytest.mark.parametrize("adapter", ["lora", "disabled"])
def test_shared_equals_repeated_values_and_gradients(tiny_lora, route, chunk_size, adapter) -> None:
    model, tokenizer = tiny_lora
    batch = _random_batch(len(tokenizer), *MIXED)
    weights = torch.randn(batch["levels"].shape, generator=torch.Generator().manual_seed(2))
    off = model.disable_adapter() if adapter == "disabled" else contextlib.nullcontext()
    with off:
        params_ctx = (
            _base_params_trainable(model)
            if adapter == "disabled"
            else contextlib.nullcontext([p for n, p in model.named_parameters() if "lora_" in n])
        )
        with params_ctx as params:
            shared = candidate_logps(model, batch, share_prefix=route, chunk_size=chunk_size)
            repeated = candidate_logps(model, batch, share_prefix=False, chunk_size=chunk_size)
            torch.testing.assert_close(shared.logps, repeated.logps, atol=1e-4, rtol=0)
            torch.testing.assert_close(shared.token_logps, repeated.token_logps, atol=1e-4, rtol=0)
            _, g_shared = _grads(
                model, batch, weights, params, share_prefix=route, chunk_size=chunk_size
            )
            _, g_repeated = _grads(model, batch, weights, params, share_prefix=False)
    _assert_grads_close(g_shared, g_repeated)


def test_adapter_changes_the_scores(tiny_lora) -> None:
    """Otherwise the LoRA/disabled cases above would test the same network twice."""
    model, tokenizer = tiny_lora
    batch = _random_batch(len(tokenizer), *MIXED)
    with torch.no_grad():
        on = candidate_logps(model, batch).logps
        with model.disable_adapter():
            off = candidate_logps(model, batch).logps
    assert (on - off).abs().max() > 0.1


def test_gradient_reaches_the_prompt_embeddings(tiny_lora) -> None:
    """The shared prompt runs once; its tokens' embeddings must still get gradient."""
    model, tokenizer = tiny_lora
    batch = _random_batch(len(tokenizer), [6], [[3, 4]])
    with model.disable_adapter(), _base_params_trainable(model):
        emb = model.get_input_embeddings().weight
        (grad,) = torch.autograd.grad(candidate_logps(model, batch).logps.sum(), [emb])
    only_prompt = set(batch["prompt_ids"][0].tolist()) - set(
        batch["candidate_ids"].flatten().tolist()
    )
    assert only_prompt and all(grad[t].abs().sum() > 0 for t in only_prompt)


def test_matches_a_plain_forward_of_prompt_plus_candidate(tiny_lora) -> None:
    model, tokenizer = tiny_lora
    batch = _random_batch(len(tokenizer), *MIXED)
    with torch.no_grad():
        shared = candidate_logps(model, batch, chunk_size=2)
        averaged = candidate_logps(model, batch, average=True)
        for b, (p_len, lens) in enumerate(zip(*MIXED, strict=True)):
            prompt = batch["prompt_ids"][b, :p_len]
            for j, c_len in enumerate(lens):
                cand = batch["candidate_ids"][b, j, :c_len]
                logits = model(input_ids=torch.cat([prompt, cand])[None]).logits[0]
                # token t of the candidate is predicted at position p_len - 1 + t
                logp = logits[p_len - 1 : p_len - 1 + c_len].log_softmax(-1)
                expected = logp[torch.arange(c_len), cand]
                torch.testing.assert_close(
                    shared.token_logps[b, j, :c_len], expected, atol=1e-4, rtol=0
                )
                torch.testing.assert_close(shared.logps[b, j], expected.sum(), atol=1e-4, rtol=0)
                torch.testing.assert_close(averaged.logps[b, j], expected.mean(), atol=1e-4, rtol=0)


def test_padding_candidates_are_masked_and_zero(tiny_lora) -> None:
    model, tokenizer = tiny_lora
    batch = _random_batch(len(tokenizer), *MIXED)
    with torch.no_grad():
        scores = candidate_logps(model, batch)
    assert scores.mask.tolist() == [[True] * 3 + [False] * 2, [True] + [False] * 4, [True] * 5]
    assert scores.logps.shape == (3, 5) and scores.token_logps.shape == (3, 5, 6)
    assert bool((scores.logps[~scores.mask] == 0).all())
    assert bool((scores.token_logps[batch["candidate_mask"] == 0] == 0).all())
    assert bool((scores.logps[scores.mask] < 0).all())


@pytest.mark.parametrize("route", ["cache", "packed"])
def test_hundreds_of_candidates_in_chunks(tiny_lora, route) -> None:
    model, tokenizer = tiny_lora
    g = torch.Generator().manual_seed(3)
    lens = torch.randint(2, 8, (150,), generator=g).tolist()
    batch = _random_batch(len(tokenizer), [12, 20], [lens, lens[:40]])
    with torch.no_grad():
        chunked = candidate_logps(model, batch, share_prefix=route, chunk_size=32)
        repeated = candidate_logps(model, batch, share_prefix=False, chunk_size=64)
    torch.testing.assert_close(chunked.logps, repeated.logps, atol=1e-4, rtol=0)


def test_single_token_candidates(tiny_lora) -> None:
    """Candidates of one token (EOS only) have nothing to pack: only the prompt predicts them."""
    model, tokenizer = tiny_lora
    batch = _random_batch(len(tokenizer), [5, 7], [[1, 1], [1, 3]])
    with torch.no_grad():
        repeated = candidate_logps(model, batch, share_prefix=False).token_logps
        for route in ("cache", "packed"):
            shared = candidate_logps(model, batch, share_prefix=route, chunk_size=1).token_logps
            torch.testing.assert_close(shared, repeated, atol=1e-4, rtol=0)


@pytest.mark.parametrize("route", ["cache", "packed"])
@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_other_families_and_attention_implementations(family, attention, route) -> None:
    """GPT-2 has absolute position embeddings: packed candidates need the right position ids."""
    torch.manual_seed(0)
    if family == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2))
    else:
        config = Qwen2Config(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
        model = Qwen2ForCausalLM(config)
    model.set_attn_implementation(attention)
    model.eval()
    batch = _random_batch(64, *MIXED)
    with torch.no_grad():
        shared = candidate_logps(model, batch, share_prefix=route, chunk_size=4)
        repeated = candidate_logps(model, batch, share_prefix=False)
    torch.testing.assert_close(shared.token_logps, repeated.token_logps, atol=1e-4, rtol=0)


def test_alibi_models_are_refused_up_front() -> None:
    """Bloom places tokens by ALiBi biases computed from the attention mask, not by position
    ids: packed candidates would be scored at the wrong distances (and transformers crashed
    with 'too many values to unpack' on the cache route)."""
    torch.manual_seed(0)
    model = BloomForCausalLM(BloomConfig(vocab_size=64, hidden_size=32, n_layer=2, n_head=2))
    model.eval()
    batch = _random_batch(64, *MIXED)
    with torch.no_grad():
        for route in (True, "cache", "packed"):
            with pytest.raises(ValueError, match="model type 'bloom'.*pass share_prefix=False"):
                candidate_logps(model, batch, share_prefix=route)
        repeated = candidate_logps(model, batch, share_prefix=False)
        # the repeated reference still works: the first candidate by hand
        prompt, cand = batch["prompt_ids"][0, :9], batch["candidate_ids"][0, 0, :3]
        logits = model(input_ids=torch.cat([prompt, cand])[None]).logits[0, 8:11]
        expected = logits.log_softmax(-1)[torch.arange(3), cand].sum()
    torch.testing.assert_close(repeated.logps[0, 0], expected, atol=1e-4, rtol=0)


def test_bad_batches_are_refused(tiny_lora) -> None:
    model, tokenizer = tiny_lora
    batch = _random_batch(len(tokenizer), *MIXED)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        candidate_logps(model, batch, chunk_size=0)
    holed = dict(batch, prompt_mask=batch["prompt_mask"].clone())
    holed["prompt_mask"][0, 1] = 0
    with pytest.raises(ValueError, match="prompt_mask must be right-padded"):
        candidate_logps(model, holed)
    empty = dict(batch, prompt_mask=batch["prompt_mask"].clone())
    empty["prompt_mask"][1] = 0
    with pytest.raises(ValueError, match=r"contexts \[1\] have an empty prompt"):
        candidate_logps(model, empty)


@pytest.mark.parametrize("checkpointing", [True, False])
def test_gradient_checkpointing_shares_the_prompt_in_packed_rows(checkpointing) -> None:
    """With checkpointing (no key/value cache in training) the default route is the packed
    row; values and gradients equal the repeated path with checkpointing on and off."""
    model, tokenizer = build_tiny(TEXTS, seed=0)
    if checkpointing:
        model.activation_checkpointing_enable()
    model.train()  # the tiny model has no dropout: train mode is deterministic
    batch = _random_batch(len(tokenizer), *MIXED)
    weights = torch.randn(batch["levels"].shape, generator=torch.Generator().manual_seed(2))
    params = list(model.parameters())
    assert shared_route(model) == ("packed" if checkpointing else "cache")
    shared, g_shared = _grads(model, batch, weights, params, chunk_size=2)
    repeated, g_repeated = _grads(model, batch, weights, params, share_prefix=False)
    torch.testing.assert_close(shared, repeated, atol=1e-4, rtol=0)
    _assert_grads_close(g_shared, g_repeated)
    if checkpointing:
        with pytest.raises(ValueError, match="needs the model's dynamic key/value cache"):
            candidate_logps(model, batch, share_prefix="cache")


@pytest.mark.parametrize("route", ["cache", "packed"])
def test_the_shared_routes_run_each_prompt_once(tiny_lora, route) -> None:
    """Counted at the embedding layer: a route that quietly repeated the prompt per candidate
    (the same values, n times the work) reads more tokens than prompts + candidates."""
    model, tokenizer = tiny_lora
    batch = _random_batch(len(tokenizer), *MIXED)
    read: list[int] = []
    embeddings = model.get_input_embeddings()
    hook = embeddings.register_forward_pre_hook(lambda _, args: read.append(args[0].numel()))
    try:
        with torch.no_grad():
            candidate_logps(model, batch, share_prefix=route)
            shared = sum(read)
            read.clear()
            candidate_logps(model, batch, share_prefix=False)
    finally:
        hook.remove()
    assert shared <= batch["prompt_ids"].numel() + batch["candidate_ids"].numel() < sum(read)


def test_the_cache_route_uses_the_supported_cache_argument(tiny_lora) -> None:
    """transformers 5.24 deprecates `past_key_values` (removed in 5.40): the route passes
    `cache`, so no deprecation warning is raised."""
    model, tokenizer = tiny_lora
    batch = _random_batch(len(tokenizer), *MIXED)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("error", message=".*past_key_values.*")
        candidate_logps(model, batch, share_prefix="cache")


def test_route_rule(tiny_lora) -> None:
    """Packed only where the cache cannot run: training with gradient checkpointing."""
    model, _ = tiny_lora
    assert shared_route(model) == "cache"
    model.base_model.model.activation_checkpointing_enable()
    try:
        assert shared_route(model) == "cache"  # eval mode: checkpointing is inactive
        model.train()
        assert shared_route(model) == "packed"
    finally:
        model.eval()
        model.base_model.model.activation_checkpointing_disable()
    with pytest.raises(ValueError, match="share_prefix must be True, False, 'cache' or 'packed'"):
        candidate_logps(model, _random_batch(16, [3], [[2]]), share_prefix="kv")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_log_probs_match_log_softmax_in_value_and_gradient(dtype, monkeypatch) -> None:
    """The memory-lean log-prob (float32 work in slices of rows) is log_softmax[target]."""
    monkeypatch.setattr(scoring, "LOGPROB_ROWS", 3)  # several slices
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(7, 50, generator=g) * 4).to(dtype).requires_grad_(True)
    targets = torch.randint(0, 50, (7,), generator=g)
    weights = torch.randn(7, generator=g)
    lean = scoring._log_probs(logits, targets)
    (g_lean,) = torch.autograd.grad((lean * weights).sum(), logits)
    plain = logits.float().log_softmax(-1)[torch.arange(7), targets]
    (g_plain,) = torch.autograd.grad((plain * weights).sum(), logits)
    assert lean.dtype == torch.float32 and g_lean.dtype == dtype
    torch.testing.assert_close(lean, plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        g_lean.float(), g_plain.float(), atol=1e-2 if dtype != torch.float32 else 1e-6, rtol=0
    )


def test_score_texts_shared_equals_repeated_and_restores_the_mode(tiny_lora) -> None:
    model, tokenizer = tiny_lora
    prompts_ = ["The user watched Heat (1995).", "The user watched"]
    candidates = [["Toy Story (1995)", "GoldenEye (1995)"], ["Heat (1995)"]]
    model.train()
    try:
        shared = score_texts(model, tokenizer, prompts_, candidates, batch_size=1)
        assert model.training
        repeated = score_texts(
            model, tokenizer, prompts_, candidates, ScoringOptions(share_prefix=False)
        )
    finally:
        model.eval()
    assert [len(s) for s in shared] == [2, 1]
    torch.testing.assert_close(
        torch.tensor(shared[0]), torch.tensor(repeated[0]), atol=1e-4, rtol=0
    )
    # by hand: the summed log-prob of " Heat (1995)</s>" after "<s>The user watched"
    prompt = tokenizer(prompts_[1])["input_ids"]
    joint = tokenizer(f"{prompts_[1]} {candidates[1][0]}")["input_ids"]
    assert joint[: len(prompt)] == prompt
    cand = joint[len(prompt) :] + [tokenizer.eos_token_id]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + cand])).logits[0]
    logp = logits[len(prompt) - 1 : -1].log_softmax(-1)[torch.arange(len(cand)), torch.tensor(cand)]
    assert shared[1][0] == pytest.approx(logp.sum().item(), abs=1e-4)
    with pytest.raises(ValueError, match="prompt 1 has no candidates"):
        score_texts(model, tokenizer, prompts_, [["Heat (1995)"], []])


@pytest.mark.smollm2
def test_smollm2_shared_equals_repeated_on_ml100k(ml100k_next_dir: Path) -> None:
    """Two real listing prompts (ML-100K test split), each re-rendered with its positive and
    its first 2 negatives, oldest history dropped to fit 96 tokens; LoRA r=4 with random B."""
    start = time.perf_counter()
    model, tokenizer = load("embedded:smollm2-135m", device="cpu")
    model = add_lora(
        model, LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=("q_proj", "v_proj"))
    )
    _randomize_lora_b(model, seed=0)
    model.eval()
    examples = load_split(ml100k_next_dir, "test")[:2]
    tokenized = []
    for ex in examples:
        keep = [ex.levels.index(1)] + [j for j, g in enumerate(ex.levels) if g > 1][:2]
        ex.candidates = [ex.candidates[j] for j in keep]
        ex.levels = [ex.levels[j] for j in keep]
        ex.prompt = prompts.render(
            ex.meta["template"], ex.meta["domain"], ex.history, ex.candidates
        )
        tokenized.append(tokenize_example(ex, tokenizer, max_prompt_length=96))
    assert all(t.dropped_history > 0 and len(t.prompt_ids) <= 96 for t in tokenized)
    assert len({len(t.prompt_ids) for t in tokenized}) == 2  # prompts of different lengths
    batch = CandidateCollator(tokenizer.pad_token_id)(tokenized)
    weights = torch.randn(batch["levels"].shape, generator=torch.Generator().manual_seed(0))
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    on_shared, g_shared = _grads(model, batch, weights, lora, chunk_size=3)
    on_repeated, g_repeated = _grads(model, batch, weights, lora, share_prefix=False)
    torch.testing.assert_close(on_shared, on_repeated, atol=1e-4, rtol=0)
    _assert_grads_close(g_shared, g_repeated)
    # adapter disabled: gradient w.r.t. a first-layer base weight, back through every layer
    (first,) = [
        p for n, p in model.named_parameters() if n.endswith("layers.0.self_attn.k_proj.weight")
    ]
    first.requires_grad_(True)
    try:
        with model.disable_adapter():
            off_shared, g_shared = _grads(model, batch, weights, [first])
            off_repeated, g_repeated = _grads(model, batch, weights, [first], share_prefix=False)
    finally:
        first.requires_grad_(False)
    torch.testing.assert_close(off_shared, off_repeated, atol=1e-4, rtol=0)
    _assert_grads_close(g_shared, g_repeated)
    assert (on_shared - off_shared).abs().max() > 0.01  # the adapter is active in the first pair
    print(f"smollm2 scoring test: {time.perf_counter() - start:.1f} s")


def _real_batch(ml100k_next_dir: Path, tokenizer, template: str, contexts: int, max_len: int):
    """The first test contexts of the shared ML-100K split, every candidate (1 + 19), the
    prompt re-rendered with ``template``, oldest history dropped to fit ``max_len`` tokens."""
    tokenized = []
    for ex in load_split(ml100k_next_dir, "test")[:contexts]:
        ex.prompt = prompts.render(template, ex.meta["domain"], ex.history, ex.candidates)
        ex.meta = {**ex.meta, "template": template}
        tokenized.append(tokenize_example(ex, tokenizer, max_prompt_length=max_len))
    return CandidateCollator(tokenizer.pad_token_id)(tokenized)


@pytest.mark.smollm2
def test_smollm2_checkpointed_training_shares_the_prompt(ml100k_next_dir: Path) -> None:
    """Acceptance of the packed route: SmolLM2 with gradient checkpointing, LoRA, train mode,
    two real ML-100K prompts (open template, <= 96 tokens) with all 1 + 19 candidates:
    Mult-DPO loss within 1e-4 of the repeated path and LoRA gradients within 1e-4 relative."""
    start = time.perf_counter()
    model, tokenizer = load("embedded:smollm2-135m", device="cpu")
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model = add_lora(
        model, LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=("q_proj", "v_proj"))
    )
    _randomize_lora_b(model, seed=0)
    batch = _real_batch(ml100k_next_dir, tokenizer, "open", contexts=2, max_len=96)
    assert batch["levels"].shape == (2, 20)
    with torch.no_grad(), model.disable_adapter():
        ref = candidate_logps(model, batch).logps
    model.train()
    assert shared_route(model) == "packed"
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    results = {}
    for route in (True, False):
        logps = candidate_logps(model, batch, share_prefix=route).logps
        loss = compute("mult", logps, ref, batch["levels"], beta=1.0).loss
        grads = torch.autograd.grad(loss, lora)
        results[route] = loss.detach(), torch.cat([g.flatten() for g in grads])
    model.eval()
    (shared_loss, g_shared), (repeated_loss, g_repeated) = results[True], results[False]
    torch.testing.assert_close(shared_loss, repeated_loss, atol=1e-4, rtol=0)
    _assert_grads_close(g_shared, g_repeated)
    print(f"smollm2 checkpointing test: {time.perf_counter() - start:.1f} s")


@pytest.mark.smollm2
def test_smollm2_bf16_autocast_sums_in_float32(ml100k_next_dir: Path) -> None:
    """CPU bf16 autocast on two real prompts (40 candidates): log-probs come out float32,
    summed in float32. The bf16 forward itself moves them (its logits are bf16, whose step
    near 20 is 0.125): measured here up to 0.44 nats on sums of about -30, 1.4% relative,
    so the bound is relative, 2e-2. Summing the same token log-probs in bf16 would add
    up to about 0.1 more (the bf16 step near 30 is 0.125); float32 sums add nothing."""
    model, tokenizer = load("embedded:smollm2-135m", device="cpu")
    model.eval()
    batch = _real_batch(ml100k_next_dir, tokenizer, "open", contexts=2, max_len=96)
    with torch.no_grad():
        full = candidate_logps(model, batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = candidate_logps(model, batch)
    assert mixed.logps.dtype == mixed.token_logps.dtype == torch.float32
    assert (mixed.logps - full.logps).abs().max() > 0  # bf16 did run
    torch.testing.assert_close(mixed.logps, full.logps, atol=0, rtol=2e-2)
    exact = mixed.token_logps.double().sum(-1)
    assert (mixed.logps.double() - exact).abs().max() < 1e-4
    in_bf16 = mixed.token_logps.bfloat16().sum(-1, dtype=torch.bfloat16).double()
    assert (in_bf16 - exact).abs().max() > 1e-2  # what a bf16 sum would have cost


def test_score_all_is_candidate_logps_per_example_in_any_batching(tiny_lora) -> None:
    """The one batched loop: per example, the row of `candidate_logps` over its own batch,
    whatever the batch size and chunking; the model's mode is restored."""
    model, tokenizer = tiny_lora
    batch = _random_batch(len(tokenizer), *MIXED)
    whole = candidate_logps(model, batch).logps
    items = [
        TokenizedExample(
            batch["prompt_ids"][b, : int(batch["prompt_mask"][b].sum())].tolist(),
            [
                batch["candidate_ids"][b, j, : int(batch["candidate_mask"][b, j].sum())].tolist()
                for j in range(int((batch["levels"][b] > 0).sum()))
            ],
            batch["levels"][b, : int((batch["levels"][b] > 0).sum())].tolist(),
        )
        for b in range(len(MIXED[0]))
    ]
    model.train()
    try:
        for options, batch_size in [(ScoringOptions(), 3), (ScoringOptions(chunk_size=2), 1)]:
            rows = scoring.score_all(model, items, options, pad_token_id=0, batch_size=batch_size)
            assert model.training
            for b, row in enumerate(rows):
                n = len(MIXED[1][b])
                torch.testing.assert_close(row, whole[b, :n], rtol=1e-5, atol=1e-5)
    finally:
        model.eval()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"chunk_size": 0}, "chunk_size must be >= 1 or None, got 0"),
        ({"share_prefix": "kv"}, "share_prefix must be True, False, 'cache' or 'packed'"),
    ],
)
def test_scoring_options_are_checked_on_construction(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        ScoringOptions(**kwargs)
