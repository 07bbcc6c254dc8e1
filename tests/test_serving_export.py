"""`setdpo export`: a LoRA run, a full fine-tuning run and a lab run, each loaded by
transformers alone (a subprocess that never imports setdpo), give the run's candidate
log-probs within 1e-4; `--adapter-only` gives them through peft; the card and the refusals."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from setdpo import cli
from setdpo.data import load_split
from setdpo.evaluation.evaluate import EvalConfig, evaluate

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.xdist_group("serving_runs"),  # one worker: the run fixtures are built once
]

QUIET = ["--disable-tqdm", "true", "--seed", "0", "--max-eval-examples", "4"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
N_CONTEXTS = 4

# Scores a folder's candidates with transformers (and peft for an adapter) only: the prompt,
# then " " + title and EOS, summing the title's token log-probs (the model card's recipe).
PLAIN_SCORER = r"""
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

folder, contexts_file = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(folder)
config = json.load(open(folder + "/adapter_config.json")) if len(sys.argv) > 3 else None
if config:
    import os
    from peft import PeftModel
    base = config["base_model_name_or_path"]  # "base": the folder beside the adapter
    base = os.path.join(folder, base) if os.path.isdir(os.path.join(folder, base)) else base
    base = AutoModelForCausalLM.from_pretrained(base)
    model = PeftModel.from_pretrained(base, folder).eval()
else:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
out = []
for ctx in json.load(open(contexts_file)):
    prompt = tok(ctx["prompt"]).input_ids
    scores = []
    for title in ctx["candidates"]:
        ids = tok(ctx["prompt"] + " " + title).input_ids
        assert ids[: len(prompt)] == prompt
        ids = ids + [tok.eos_token_id]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float()
        logp = torch.log_softmax(logits[:-1], -1)[torch.arange(len(ids) - 1), ids[1:]]
        scores.append(logp[len(prompt) - 1 :].sum().item())
    out.append(scores)
assert not [m for m in sys.modules if m.split(".")[0] == "setdpo"], "setdpo was imported"
print(json.dumps(out))
"""


def _train(argv: list[str]) -> None:
    assert cli.main(argv + QUIET) == 0


@pytest.fixture(scope="module")
def runs(ml100k_next_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny LoRA SFT run and a LoRA Mult-DPO run from it (two adapters), a tiny full
    fine-tuning SFT run and a lab (full fine-tuning) SFT run: a few steps each, at a high
    learning rate so that the weights move."""
    root, data = tmp_path_factory.mktemp("runs"), str(ml100k_next_dir)
    steps = ["--max-steps", "3", "--learning-rate", "0.05"]
    out = {name: root / name for name in ("sft", "lora", "full", "lab")}
    _train(["train", "sft", "--data", data, "--model", "tiny", "--out", str(out["sft"]), *steps])
    _train(["train", "pref", "--data", data, "--init", str(out["sft"]), "--loss", "mult",
            "--out", str(out["lora"]), *steps])  # fmt: skip
    for name, model in (("full", "tiny"), ("lab", "lab")):
        _train(["train", "sft", "--data", data, "--model", model, "--peft", "none",
                "--out", str(out[name]), *steps])  # fmt: skip
    return out


def _run_scores(run: Path, data: Path) -> tuple[list[dict], np.ndarray]:
    """The run's test contexts (prompt, candidates) and `setdpo evaluate`'s scores of them."""
    config = EvalConfig(model=str(run), data=str(data), limit=N_CONTEXTS, n_resamples=10,
                        progress=False)  # fmt: skip
    results = evaluate(config)
    examples = {ex.context_id: ex for ex in load_split(data, "test")}
    contexts = [
        {"prompt": examples[c.context_id].prompt, "candidates": examples[c.context_id].candidates}
        for c in results.contexts
    ]
    return contexts, np.array([c.scores for c in results.contexts])


def _plain_scores(folder: Path, contexts: list[dict], tmp: Path, adapter: bool = False):
    path = tmp / "contexts.json"
    path.write_text(json.dumps(contexts))
    argv = [sys.executable, "-c", PLAIN_SCORER, str(folder), str(path)] + (["peft"] * adapter)
    env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"}  # setdpo is not on the path
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return np.array(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("name", ["lora", "full", "lab"])
def test_export_loads_with_transformers_alone_and_matches_the_run(
    runs: dict[str, Path], ml100k_next_dir: Path, tmp_path: Path, name: str
) -> None:
    out = tmp_path / "export"
    assert cli.main(["export", str(runs[name]), "--out", str(out)]) == 0
    for file in ("model.safetensors", "config.json", "generation_config.json", "README.md",
                 "setdpo.json", "items.json", "tokenizer_config.json"):  # fmt: skip
        assert (out / file).is_file(), file
    assert not list(out.glob("adapter*"))  # merged: nothing for peft to apply
    contexts, expected = _run_scores(runs[name], ml100k_next_dir)
    plain = _plain_scores(out, contexts, tmp_path)
    np.testing.assert_allclose(plain, expected, atol=1e-4, rtol=0)
    record = json.loads((out / "setdpo.json").read_text())
    assert (record["template"], record["domain"]) == ("listing", "movie")
    assert record["objective"] == ("mult" if name == "lora" else "sft")
    if name == "lora":  # the preference adapter is in the export: the SFT run scores otherwise
        _, sft = _run_scores(runs["sft"], ml100k_next_dir)
        assert np.abs(sft - plain).max() > 1e-3


def test_adapter_only_is_one_lora_adapter_equal_to_the_run(
    runs: dict[str, Path], ml100k_next_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "adapter"
    assert cli.main(["export", str(runs["lora"]), "--out", str(out), "--adapter-only"]) == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 16 and config["lora_alpha"] == 16  # SFT rank 8 + preference rank 8
    assert config["base_model_name_or_path"] == "base"  # the run's tiny base, copied in
    assert (out / "base" / "model.safetensors").is_file()
    assert not (out / "model.safetensors").exists()
    contexts, expected = _run_scores(runs["lora"], ml100k_next_dir)
    plain = _plain_scores(out, contexts, tmp_path, adapter=True)
    np.testing.assert_allclose(plain, expected, atol=1e-4, rtol=0)


def test_card_names_the_run_and_its_test_metrics(
    runs: dict[str, Path], ml100k_next_dir: Path, tmp_path: Path
) -> None:
    results = tmp_path / "lab.json"
    argv = ["evaluate", "--model", str(runs["lab"]), "--data", str(ml100k_next_dir)]
    assert cli.main(argv + ["--limit", "5", "--out", str(results), "--no-progress"]) == 0
    out = tmp_path / "export"
    assert cli.main(["export", str(runs["lab"]), "--out", str(out), "--results", str(results)]) == 0
    card = (out / "README.md").read_text()
    hr1 = json.loads(results.read_text())["metrics"]["HR@1"]
    assert f"| HR@1 | {hr1['value']:.4f} | [{hr1['low']:.4f}, {hr1['high']:.4f}] |" in card
    assert "- base model: `lab`" in card and "- objective: `sft`" in card
    assert "Choose the answer from the following {n_candidates} movie titles" in card
    assert "learning_rate: 0.05" in card  # the resolved configuration
    # Without --results, an evaluation of this run in an ancestor's eval/ (a study's layout,
    # eval/<model>/<tag>.json) is found; one of another model is not.
    found = runs["lab"].parent / "eval" / "lab" / "seed=0.json"
    found.parent.mkdir(parents=True)
    found.write_text(results.read_text())
    other = json.loads(results.read_text())
    other["protocol"]["model"], other["metrics"]["HR@1"]["value"] = str(runs["full"]), 0.123456
    (found.parent / "other.json").write_text(json.dumps(other))
    auto = tmp_path / "auto"
    assert cli.main(["export", str(runs["lab"]), "--out", str(auto)]) == 0
    card = (auto / "README.md").read_text()
    assert f"| HR@1 | {hr1['value']:.4f} |" in card and "0.1235" not in card
    assert "`eval/lab/seed=0.json`" in card and str(found) not in card
    shutil.rmtree(found.parent.parent)


def _absolute_paths_in(folder: Path, *roots: Path) -> list[str]:
    """Files of ``folder`` holding one of ``roots`` (as `grep -r` finds them)."""
    needles = {str(root).encode() for root in roots} | {
        str(root.resolve()).encode() for root in roots
    }
    return [str(f) for f in folder.rglob("*") if f.is_file()
            for n in needles if n in f.read_bytes()]  # fmt: skip


@pytest.mark.parametrize("adapter_only", [False, True], ids=["merged", "adapter-only"])
def test_an_export_names_no_local_path_and_its_card_the_real_rank(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, adapter_only: bool
) -> None:
    from setdpo.model import cache_dir
    from setdpo.serving.service import RankingService, ServeConfig

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "exp" / "missing" / "lab-mult"  # parents created
    argv = ["export", str(runs["lora"]), "--out", "exp/missing/lab-mult"]
    assert cli.main(argv + ["--adapter-only"] * adapter_only) == 0
    roots = (runs["lora"].parents[1], tmp_path, cache_dir(), Path.home(), Path.cwd())
    assert _absolute_paths_in(out, *roots) == []
    card = (out / "README.md").read_text()
    assert "`sft` (r 8, alpha 16), `pref` (r 8, alpha 16)" in card
    if adapter_only:
        assert "One LoRA adapter of rank 16 and alpha 16" in card
        adapter = json.loads((out / "adapter_config.json").read_text())
        assert (adapter["r"], adapter["lora_alpha"]) == (16, 16)
    described = json.dumps(RankingService(ServeConfig(model=str(out), device="cpu")).describe())
    served_run = RankingService(ServeConfig(model=str(runs["lora"]), device="cpu")).describe()
    for text in (described, json.dumps(served_run)):  # /v1/model
        assert str(tmp_path) not in text and str(runs["lora"].parents[1]) not in text


def test_export_refuses_an_existing_folder_and_leaves_nothing_on_failure(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "export"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert cli.main(["export", str(runs["full"]), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    # A failing export (a full fine-tuning run has no adapter) writes nothing at all.
    failed = tmp_path / "failed"
    assert cli.main(["export", str(runs["full"]), "--out", str(failed), "--adapter-only"]) == 2
    assert "no adapter" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    assert cli.main(["export", str(runs["full"]), "--out", str(out), "--overwrite"]) == 0
    assert (out / "model.safetensors").is_file() and not (out / "keep.txt").exists()


def test_the_vllm_check_says_why_it_skips_without_vllm() -> None:
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed: benchmarks/gpu_check.sh runs the real check")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "benchmarks/vllm_check.py"], cwd=root, env=ENV,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "vllm check skipped: vLLM is not installed" in done.stdout


def test_a_run_whose_data_is_gone_is_refused(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import yaml

    run = tmp_path / "moved"
    shutil.copytree(runs["full"], run, ignore=shutil.ignore_patterns("checkpoint-*"))
    config = yaml.safe_load((run / "resolved_config.yaml").read_text())
    config["data"] = str(tmp_path / "deleted-data")
    (run / "resolved_config.yaml").write_text(yaml.safe_dump(config))
    assert cli.main(["export", str(run), "--out", str(tmp_path / "export")]) == 2
    err = capsys.readouterr().err
    assert "deleted-data has no config.json" in err and "template" in err
    assert not (tmp_path / "export").exists()


def test_dtype_bfloat16_halves_the_weights(runs: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    sizes = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / dtype
        assert cli.main(["export", str(runs["lab"]), "--out", str(out), "--dtype", dtype]) == 0
        weights = load_file(out / "model.safetensors")
        assert {str(w.dtype) for w in weights.values()} == {f"torch.{dtype}"}
        sizes[dtype] = (out / "model.safetensors").stat().st_size
    assert 0.45 < sizes["bfloat16"] / sizes["float32"] < 0.55


# Loads the adapter by the base its config names, from a Hugging Face cache (HF_HUB_CACHE,
# offline), in a process that imports neither setdpo nor finds a setdpo cache; prints the
# last-position logits of one text.
HUB_LOADER = r"""
import json, sys
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

folder = sys.argv[1]
name = json.load(open(folder + "/adapter_config.json"))["base_model_name_or_path"]
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(name), folder).eval()
ids = AutoTokenizer.from_pretrained(folder)("Heat (1995), Casino (1995)").input_ids
with torch.no_grad():
    print(json.dumps(model(torch.tensor([ids])).logits[0, -1, :50].tolist()))
"""


@pytest.mark.smollm2
def test_an_adapter_only_export_of_the_embedded_smollm2_loads_from_the_hub_id(
    ml100k_next_dir: Path, tmp_path: Path
) -> None:
    """An untrained LoRA (B nonzero) over the embedded SmolLM2 as a run; its adapter-only
    export names the hub id and loads with peft from a hub cache holding that model, where
    no setdpo cache exists."""
    import torch
    import yaml

    from setdpo.model import LoraSettings, add_lora, embedded_model_folder, load, save_run_model

    model, tokenizer = load("embedded:smollm2-135m", device="cpu")
    model = add_lora(model, LoraSettings(r=4, alpha=8))
    torch.manual_seed(0)
    for name, weight in model.named_parameters():
        if "lora_B" in name:
            weight.data.normal_(0, 0.02)
    run = tmp_path / "run"
    save_run_model(model, tokenizer, run, base_model="embedded:smollm2-135m")
    (run / "resolved_config.yaml").write_text(yaml.safe_dump({"data": str(ml100k_next_dir)}))
    out = tmp_path / "export"
    assert cli.main(["export", str(run), "--out", str(out), "--adapter-only"]) == 0
    hub_id = "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (
        json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == hub_id
    )
    assert (
        "huggingface-cli download HuggingFaceTB/SmolLM2-135M-Instruct"
        in (out / "README.md").read_text()
    )
    # A hub cache holding the model (here: the embedded weights under the hub id's layout).
    snapshot = tmp_path / "hub" / "models--HuggingFaceTB--SmolLM2-135M-Instruct"
    (snapshot / "refs").mkdir(parents=True)
    (snapshot / "refs" / "main").write_text("0" * 40)
    shutil.copytree(embedded_model_folder()[0], snapshot / "snapshots" / ("0" * 40))
    env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"}
    env |= {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1",
            "SETDPO_CACHE": str(tmp_path / "no-setdpo-cache")}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", HUB_LOADER, str(out)], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (tmp_path / "no-setdpo-cache").exists()
    served, _ = load(run, device="cpu", merge_all=True)
    ids = tokenizer("Heat (1995), Casino (1995)", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = served(ids).logits[0, -1, :50]
    got = torch.tensor(json.loads(done.stdout.strip().splitlines()[-1]))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert _absolute_paths_in(out, tmp_path, Path.home()) == []
    from setdpo.serving.info import adapter_base

    assert adapter_base(out) == "embedded:smollm2-135m"  # setdpo serve: the run's exact base
