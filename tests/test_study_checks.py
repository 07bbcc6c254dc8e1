"""Studies over imported data and the generation metric (`setdpo.study.checks`): the plan of an
``import:`` study (one data set for every seed, `setdpo data import`), what is refused at load,
and a tiny real study over S-DPO LastFM-layout files whose report's GenHR@1 equals a
recomputation from the answers its results store."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from setdpo.cli import main
from setdpo.errors import InputError
from setdpo.study import build_plan, load_study
from setdpo.study.plan import StudyConfig
from setdpo.study.report import load_plan
from setdpo.study.runner import write_plan_files

ARTISTS = [
    "Glee Cast", "New Order", "Daft Punk", "Kylie Minogue", "Avril Lavigne", "All Time Low",
    "James Blunt", "Shakin Stevens", "Cafe Del Mar", "Blue Harbor", "Red Lanterns", "Iron Moth",
    "Velvet Sun", "Paper Wolves", "Quiet Engines", "Silver Ferns", "Golden Tide", "Echo Park",
    "Night Orchard", "Polar Static", "Marble Rooms", "Copper Kites", "Hollow Pines", "Neon Bay",
]  # fmt: skip
FAVOURITE = ARTISTS[0]
# The positive of every training record is the favourite, so that a few SFT steps of the tiny
# model learn to answer it; the test split mixes hits, valid misses and answers naming no
# candidate.
SPLITS = {
    "train": (24, ("hit",)),
    "valid": (4, ("hit",)),
    "test": (8, ("hit", "other", "hit", "absent")),
}


def sdpo_records(n: int, seed: int, kinds: tuple[str, ...]) -> list[dict]:
    """S-DPO's LastFM layout (data/lastfm-sft-cans20/lastfm-*.json): a "::"-joined historyList,
    itemList (5 candidates, no title inside another) and trueSelection. Record i is of kind
    ``kinds[i % len(kinds)]``: ``hit``, the favourite (Glee Cast) is a candidate and the true
    one; ``other``, it is a candidate but another is true; ``absent``, it is no candidate."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        picked = [ARTISTS[j] for j in rng.choice(np.arange(1, len(ARTISTS)), 9, replace=False)]
        history, candidates = picked[:4], picked[4:]
        where, other = rng.choice(len(candidates), 2, replace=False)
        kind = kinds[i % len(kinds)]
        if kind != "absent":
            candidates[where] = FAVOURITE
        true = FAVOURITE if kind == "hit" else candidates[other]
        records.append(
            {"historyList": "::".join(history), "itemList": candidates, "trueSelection": true}
        )
    return records


@pytest.fixture(scope="module")
def sdpo_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("sdpo") / "lastfm-sft-cans20"
    folder.mkdir()
    files = {}
    for i, (split, (n, kinds)) in enumerate(SPLITS.items()):
        files[split] = folder / f"lastfm-{split}.json"
        files[split].write_text(json.dumps(sdpo_records(n, i, kinds), indent=4), "utf-8")
    return files


def study(files: dict[str, Path], **changes) -> dict:
    raw = {
        "description": "tiny study over imported S-DPO LastFM files",
        "seeds": [0, 1],
        "import": {"format": "llara", "files": {k: str(v) for k, v in files.items()}},
        "sft": {"model": "tiny", "max_steps": 40, "per_device_train_batch_size": 4,
                "learning_rate": 1.0e-2, "eval_strategy": "no", "save_strategy": "no",
                "logging_steps": 1, "disable_tqdm": True},
        "pref": {"max_steps": 2, "per_device_train_batch_size": 4, "learning_rate": 1.0e-3,
                 "num_negatives": 0, "max_eval_examples": 4, "eval_strategy": "no",
                 "save_strategy": "no", "logging_steps": 1, "disable_tqdm": True},
        "evaluate": {"progress": False, "generate": True, "max_new_tokens": 8,
                     "sasrec_epochs": 2},
        "grid": {"pref.loss": ["sdpo"], "evaluate.constrained": [False, True]},
        "baselines": ["popularity", "sasrec"],
        "metrics": ["HR@1", "NDCG@5", "GenHR@1", "ValidRatio"],
        "metric": "GenHR@1",
        "n_resamples": 200,
    }  # fmt: skip
    raw.update(changes)
    return raw


def config(files: dict[str, Path], **changes) -> StudyConfig:
    raw = study(files)
    raw["import_"] = raw.pop("import")
    return StudyConfig(**{**raw, **changes})


def test_an_imported_data_set_is_one_data_stage_shared_by_every_seed(
    sdpo_files: dict[str, Path], tmp_path: Path
) -> None:
    plan = build_plan(config(sdpo_files), tmp_path)
    data = [s for s in plan.stages.values() if s.kind == "data"]
    assert [s.name for s in data] == ["data/imported"]
    assert data[0].command[:2] == ["data", "import"]
    assert data[0].settings == {
        "format": "llara",
        "files": {k: str(v) for k, v in sdpo_files.items()},
        "out": str(tmp_path / "data" / "imported"),
    }  # no seed: ImportConfig has none, and the files are the same for every seed
    for seed in (0, 1):
        sft = plan.stages[f"sft/seed={seed}"]
        assert (sft.after, sft.settings["seed"]) == (["data/imported"], seed)
        popularity = plan.stages[f"eval/popularity/constrained=True,seed={seed}"]
        assert popularity.settings["data"] == str(tmp_path / "data" / "imported")
        assert not {"generate", "constrained", "max_new_tokens"} & set(popularity.settings)
        sdpo = plan.stages[f"eval/sdpo/loss=sdpo,constrained=True,seed={seed}"].settings
        assert (sdpo["generate"], sdpo["constrained"], sdpo["seed"]) == (True, True, seed)


def test_an_axis_over_an_import_field_makes_one_data_set_per_value(
    sdpo_files: dict[str, Path], tmp_path: Path
) -> None:
    grid = {"import.template": ["listing", "open"], "pref.loss": ["sdpo"]}
    plan = build_plan(config(sdpo_files, grid=grid, seeds=[0, 1, 2]), tmp_path)
    assert sorted(n for n in plan.stages if n.startswith("data/")) == [
        "data/template=listing",
        "data/template=open",
    ]
    sft = plan.stages["sft/template=open,seed=2"]
    assert sft.after == ["data/template=open"]
    generic = {**config(sdpo_files).import_, "domain": "generic"}
    other = build_plan(config(sdpo_files, grid=grid, seeds=[0, 1, 2], import_=generic), tmp_path)
    assert other.stages[sft.name].key != sft.key  # an import field reaches SFT's key


def test_a_study_file_names_its_import_files_relative_to_itself(
    sdpo_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = study(sdpo_files)
    folder = sdpo_files["train"].parent
    raw["import"]["files"] = {k: f"lastfm-sft-cans20/{v.name}" for k, v in sdpo_files.items()}
    path = folder.parent / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)  # not where the study file is
    loaded = load_study(path)
    assert loaded.import_["files"] == {k: str(v) for k, v in sdpo_files.items()}
    plan = build_plan(loaded, tmp_path / "out")
    write_plan_files(plan)
    written = yaml.safe_load((plan.home / "study.yaml").read_text())
    assert "import_" not in written and written["import"]["files"]["test"] == str(
        sdpo_files["test"]
    )
    again = build_plan(load_study(plan.home / "study.yaml"), tmp_path / "out")
    assert {n: s.key for n, s in again.stages.items()} == {n: s.key for n, s in plan.stages.items()}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prepare": {"source": "ml-100k"}}, "'prepare' and 'import' are exclusive"),
        (
            {"grid": {"prepare.k": [1, 2], "pref.loss": ["sdpo"]}},
            "exclusive .* prepare sets \\['prepare.k'\\]",
        ),
        ({"import": {"format": "llara", "files": {}}}, "must name a train file"),
        ({"import": {"format": "parquet", "files": {}}}, "format 'parquet'"),
        (
            {"import": {"format": "llara", "files": {"train": "/no/such/lastfm.json"}}},
            "the train file /no/such/lastfm.json does not exist",
        ),
        ({"import": {"format": "llara", "fles": {}}}, "unknown fields \\['fles'\\]"),
        ({"import": {"format": "llara", "files": {}, "out": "x"}}, "set by the study itself"),
        ({"metrics": ["HR@1", "GenHR@1/valid"]}, "divided by the valid answers"),
        ({"compare_with": ["popularity"]}, "popularity'\\] cannot generate"),
        (
            {"evaluate": {"progress": False}, "grid": {"pref.loss": ["sdpo"]}},
            "set evaluate.generate: true",
        ),
        (
            {"evaluate": {}, "grid": {"pref.loss": ["sdpo"], "evaluate.generate": [True, False]}},
            "in every setting of the grid",
        ),
    ],
)
def test_bad_import_and_generation_studies_are_refused(
    sdpo_files: dict[str, Path], tmp_path: Path, changes: dict, message: str
) -> None:
    raw = study(sdpo_files, **changes)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(InputError, match=message):
        load_study(path)


def test_an_import_without_the_evaluated_split_or_histories_sasrec_needs_is_refused(
    sdpo_files: dict[str, Path], tmp_path: Path
) -> None:
    files = {"train": str(sdpo_files["train"]), "valid": str(sdpo_files["valid"])}
    with pytest.raises(InputError, match="split 'test', which import.files does not name"):
        config(sdpo_files, import_={"format": "llara", "files": files})
    trl = tmp_path / "rows.jsonl"
    trl.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    rows = {"format": "trl", "files": {"train": str(trl), "test": str(trl)}}
    with pytest.raises(InputError, match="sasrec learns from item histories, and trl rows"):
        config(sdpo_files, import_=rows)
    plan = build_plan(config(sdpo_files, import_=rows, baselines=["popularity"]), tmp_path)
    assert plan.stages["data/imported"].settings["format"] == "trl"


def test_a_generation_metric_without_generation_is_refused_even_without_import(
    tmp_path: Path,
) -> None:
    smoke = yaml.safe_load((Path(__file__).parents[1] / "configs/studies/smoke.yaml").read_text())
    with pytest.raises(InputError, match="GenHR@1.*set evaluate.generate: true"):
        StudyConfig(**{**smoke, "metrics": ["NDCG@5", "GenHR@1"]})
    generating = {**smoke, "metrics": ["NDCG@5", "GenHR@1"], "evaluate": {"generate": True}}
    plan = build_plan(StudyConfig(**generating), tmp_path)
    assert "generate" not in plan.stages["eval/popularity/seed=0"].settings
    assert plan.stages["eval/sft/seed=0"].settings["generate"] is True


# --- a tiny study over the imported files, run for real ---------------------------------


def sdpo_answer(answer: str, candidates: list[str], true: str) -> tuple[float, float]:
    """S-DPO's (valid, hit) of one answer, as its evaluate_batch.py computes it and without
    setdpo: valid when exactly one candidate is a substring of the answer, a hit when the true
    one is. (setdpo matches whole words after normalising case and punctuation, the longest
    of nested titles winning; on these titles, none inside another, the two agree.)"""
    valid = sum(1 for c in candidates if c in answer) == 1
    return float(valid), float(valid and true in answer)


@pytest.fixture(scope="module")
def imported_study(sdpo_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("imported_study")
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study(sdpo_files)))
    out = folder / "out"
    assert main(["study", "--config", str(path), "--out", str(out), "--jobs", "2"]) == 0
    return out


@pytest.mark.slow
def test_a_study_over_imported_sdpo_files_reports_gen_hr_at_1(
    imported_study: Path, sdpo_files: dict[str, Path]
) -> None:
    out = imported_study
    records = {p.relative_to(out / "stages").as_posix() for p in (out / "stages").rglob("*.json")}
    assert {r for r in records if r.startswith("data/")} == {"data/imported.json"}
    command = json.loads((out / "stages" / "data" / "imported.json").read_text())["command"]
    assert "setdpo data import --config" in command
    assert len(records) == 1 + 2 + 2 + 2 * 2 * 4  # data; sft, sdpo per seed; 4 models x 2 x 2
    test = {str(i): r for i, r in enumerate(json.loads(sdpo_files["test"].read_text()))}
    plan = load_plan(out)
    summary = json.loads((out / "summary.json").read_text())
    report = (out / "report.md").read_text()
    kinds: set[tuple[str, float, float]] = set()  # (setting, valid, hit)
    for row in summary["cells"]:
        model, setting = row["model"], tuple(row["setting"].items())
        if model in ("popularity", "sasrec"):  # they score candidates, they do not generate
            assert row["GenHR@1"] is None and row["ValidRatio"] is None
            assert row["HR@1"]["interval"]["value"] >= 0
            continue
        per_seed = []
        for cell in (c for c in plan.cells if c.setting == setting):
            results = json.loads(plan.stages[cell.evals[model]].output.read_text())
            assert [c["context_id"] for c in results["contexts"]] == list(test)
            recomputed = []
            for c in results["contexts"]:
                record = test[c["context_id"]]
                valid, hit = sdpo_answer(
                    c["generation"]["answer"], record["itemList"], record["trueSelection"]
                )
                assert (c["values"]["ValidRatio"], c["values"]["GenHR@1"]) == (valid, hit), c
                recomputed.append(hit)
                kinds.add((row["setting"]["constrained"], valid, hit))
            per_seed.append(np.mean(recomputed))
        assert row["GenHR@1"]["seed_values"] == pytest.approx(per_seed, abs=1e-12)
    # free answers: valid hits, valid misses and answers naming no candidate; constrained
    # ones are always one whole candidate
    assert {k for k in kinds if k[0] == "False"} == {("False", 1.0, 1.0), ("False", 1.0, 0.0),
                                                    ("False", 0.0, 0.0)}  # fmt: skip
    assert {k for k in kinds if k[0] == "True"} == {("True", 1.0, 1.0), ("True", 1.0, 0.0)}
    pairs = summary["pairs"]
    assert summary["metric"] == "GenHR@1" and [(p["a"], p["b"]) for p in pairs] == [
        ("sdpo", "sft"),
        ("sdpo", "sft"),
    ]
    assert "| popularity | 2 |" in report and "| n/a | n/a |" in report
    assert "n/a: GenHR@1, ValidRatio does not apply to popularity, sasrec" in report
    assert "Every seed reads the same imported data" in report
    assert "S-DPO's rule" in report


def test_the_readme_import_block_is_a_study_fragment_that_loads(
    sdpo_files: dict[str, Path], tmp_path: Path
) -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", readme, re.DOTALL) if "import:" in b]
    raw = yaml.safe_load(block)
    folder = tmp_path / "lastfm-sft-cans20"
    folder.mkdir()
    for path in sdpo_files.values():
        (folder / path.name).write_bytes(path.read_bytes())
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**raw, "grid": {"pref.loss": ["sdpo"]}, "seeds": [0]}))
    plan = build_plan(load_study(path), tmp_path / "out")
    assert plan.stages["data/imported"].settings["files"]["test"] == str(
        folder / "lastfm-test.json"
    )
    assert "GenHR@1" in plan.config.metrics
