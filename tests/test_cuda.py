"""CUDA checks (marker `cuda`; `benchmarks/gpu_check.sh` runs them): the scorer's shared
routes equal the repeated path on the GPU in float32 and bf16, with gradient checkpointing
too, and a short SFT -> Mult-DPO run of the embedded SmolLM2 in bf16. Without a CUDA device
they are skipped, saying so."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from setdpo.data import load_split, prompts
from setdpo.model import LoraSettings, add_lora, load
from setdpo.scoring import candidate_logps
from setdpo.tokenization import CandidateCollator, tokenize_example
from setdpo.training import PrefConfig, SFTConfig, load_config, train_pref, train_sft

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="no CUDA device here: these run on a GPU machine (benchmarks/gpu_check.sh)",
    ),
]

# (absolute tolerance of log-probs, relative tolerance of gradient norms) per weight dtype:
# float32 is the CPU tests' exact bound (TF32 off); bf16 rounds every product, and the routes
# add in different orders, so its bound is relative to sums of about -30 (see the CPU
# autocast test in test_scoring.py, 1.4% measured there).
TOLERANCE = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (0.6, 5e-2)}


@pytest.fixture(autouse=True)
def no_tf32():
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


def _batch(ml100k_next_dir: Path, tokenizer, contexts: int = 2):
    tokenized = []
    for ex in load_split(ml100k_next_dir, "test")[:contexts]:
        ex.prompt = prompts.render("open", ex.meta["domain"], ex.history, ex.candidates)
        ex.meta = {**ex.meta, "template": "open"}
        tokenized.append(tokenize_example(ex, tokenizer))
    return CandidateCollator(tokenizer.pad_token_id)(tokenized)


def _logps_and_grads(model, batch, params, **kwargs):
    logps = candidate_logps(model, batch, **kwargs).logps
    weights = torch.linspace(-1, 1, logps.numel(), device=logps.device).view_as(logps)
    grads = torch.autograd.grad((weights * logps).sum(), params)
    return logps.detach(), torch.cat([g.float().flatten() for g in grads])


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_shared_routes_equal_repeated(ml100k_next_dir: Path, dtype, checkpointing) -> None:
    model, tokenizer = load("embedded:smollm2-135m", device="cuda", dtype=dtype)
    if checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    model = add_lora(model, LoraSettings(r=4, alpha=8, dropout=0.0))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn_like(param) * 0.3)
    model.train()
    batch = _batch(ml100k_next_dir, tokenizer)
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    atol, grad_rtol = TOLERANCE[dtype]
    repeated, g_repeated = _logps_and_grads(model, batch, lora, share_prefix=False)
    routes = ["packed"] if checkpointing else ["cache", "packed"]
    for route in routes:
        shared, g_shared = _logps_and_grads(model, batch, lora, share_prefix=route)
        assert shared.dtype == torch.float32
        torch.testing.assert_close(shared, repeated, atol=atol, rtol=0)
        assert (g_shared - g_repeated).norm() / g_repeated.norm() < grad_rtol
    with torch.no_grad():  # evaluation: the cache route, in chunks
        model.eval()
        chunked = candidate_logps(model, batch, chunk_size=7).logps
    torch.testing.assert_close(chunked, repeated, atol=atol, rtol=0)


def test_cuda_sft_then_mult_in_bf16(ml100k_next_dir: Path, tmp_path: Path) -> None:
    """Two SFT steps, then two Mult-DPO steps with gradient checkpointing (the packed route):
    finite losses, both run directories written."""
    quiet = {"disable_tqdm": True, "save_strategy": "no", "logging_steps": 1, "seed": 0}
    common = {**quiet, "data": str(ml100k_next_dir), "bf16": True, "max_steps": 2}
    sft = train_sft(
        load_config(
            SFTConfig,
            None,
            {**common, "output_dir": str(tmp_path / "sft"), "max_train_examples": 8},
        )
    )
    pref = train_pref(
        load_config(
            PrefConfig,
            None,
            {
                **common,
                "init": str(sft),
                "output_dir": str(tmp_path / "mult"),
                "loss": "mult",
                "per_device_train_batch_size": 2,
                "max_train_examples": 4,
                "max_eval_examples": 2,
                "activation_checkpointing": True,
                "activation_checkpointing_kwargs": {"use_reentrant": False},
            },
        )
    )
    for run in (sft, pref):
        assert (run / "setdpo_model.json").is_file()
    state = (pref / "trainer_state.json").read_text()
    assert '"loss"' in state and "NaN" not in state
