"""A study's configuration and the stages it expands to.

A study configuration (``configs/studies/*.yaml``) holds one section per command, as a
protocol file does (``prepare``, ``sft``, ``pref``, ``evaluate``: the fields of
`PrepareConfig`, `SFTConfig`, `PrefConfig`, `EvalConfig`), plus a ``grid`` and ``seeds``::

    seeds: [0, 1, 2]
    grid:
      prepare.k: [1, 3, 5]             # an axis over one field: section.field: [values]
      pref.loss: [dpo, sdpo, mult, pl] # the objective axis (required)
      tier:                            # an axis of named bundles of fields
        lab: {sft.model: lab, sft.max_steps: 180}
        llm: {sft.model: "embedded:smollm2-135m", sft.max_steps: 12}

Instead of ``prepare``, an ``import`` section (the fields of `ImportConfig`: ``format``,
``files`` per split, ``items_as``, ...) reads LLaRA / S-DPO JSON, TRL or LlamaFactory files
with `setdpo data import`; the two are exclusive, ``import.*`` axes work as ``prepare.*`` ones,
and the imported data set, the same for every seed, is one data stage every seed shares
(``data/imported``). ``metrics`` may list ``GenHR@1`` (S-DPO's generation HR@1) and
``ValidRatio`` when ``evaluate.generate`` (or ``constrained``) is on; the baselines that cannot
generate are evaluated without it and reported as n/a (`setdpo.study.checks`).

Every combination of the axes' values, times every seed, is a cell. Equal stages are shared:
a stage depends only on the axes that touch its section or an earlier one (data <- prepare or
import; sft <- those and sft; pref <- those, sft and pref; an evaluation <- what it evaluates and the
evaluate section), so one prepared data set per data setting and seed, one SFT run per data
and SFT setting and seed, one preference run per objective, setting and seed. Each stage is
the `setdpo ...` command a user would type, reading a configuration file the study writes
(``DIR/stages/<name>.yaml``).

A ``tune`` section (``pref.beta: [0.05, 0.1]``; only ``pref`` fields, none a grid axis) is
searched per objective, setting and seed on the valid split (`setdpo.study.tune`): one pref run
per combination of its values (tags carry them: ``loss=mult,beta=0.1,seed=0``), each evaluated
on ``valid``, then a selection stage (``setdpo study select``) that reads those results only,
keeps the best ``metric`` (ties: the first combination) and copies that run to the untuned
run's folder: the test evaluation and everything after it are those of an untuned study.

Layout of a study directory::

    study.yaml                   the study's configuration as run   (with --name N: in N/,
    commands.sh                  every stage's command, in order     as the report files are)
    stages/<kind>/<tag>.yaml     a stage's configuration file; <tag>.json: its record
    logs/<kind>/<tag>.log        its output
    data/<tag>/                  prepared data          (setdpo data prepare | import)
    runs/sft/<tag>/  runs/pref/<tag>/                     (setdpo train sft|pref)
    eval/<model>/<tag>.json      test results           (setdpo evaluate)
    valid/<loss>/<tag>.json      with tune: each combination's valid results
    select/<tag>.json            with tune: the choice  (setdpo study select)
    report.md  summary.json  plots/*.png                  (setdpo study report)

Tags name the axis values a stage depends on and the seed: ``k=3,loss=mult,seed=0``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shlex
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from setdpo.errors import InputError
from setdpo.study.checks import (
    absolute_files,
    check_data,
    check_metrics,
    evaluate_settings,
    uses_import,
)
from setdpo.study.tune import SPLIT as TUNE_SPLIT
from setdpo.study.tune import (
    Combination,
    check_evaluations,
    check_valid_split,
    combinations,
)
from setdpo.study.tune import labels as tune_labels

SECTIONS = {
    "prepare": "setdpo.data.config:PrepareConfig",
    "import": "setdpo.data.formats:ImportConfig",
    "sft": "setdpo.training.config:SFTConfig",
    "pref": "setdpo.training.config:PrefConfig",
    "evaluate": "setdpo.evaluation.evaluate:EvalConfig",
}
# Fields the study sets itself (paths between stages, the seed).
OWNED = {
    "prepare": {"out", "seed", "overwrite"},
    "import": {"out", "overwrite"},
    "sft": {"data", "output_dir", "seed"},
    "pref": {"data", "output_dir", "init", "seed"},
    "evaluate": {"data", "model", "seed"},
}
LOSS_AXIS = "pref.loss"
BASELINES = ("random", "popularity", "sasrec", "base")
# Which sections a stage kind depends on (its own and the earlier ones).
DEPENDS = {
    "data": ("prepare", "import"),
    "sft": ("prepare", "import", "sft"),
    "pref": ("prepare", "import", "sft", "pref"),
}


@dataclass
class StudyConfig:
    """What `setdpo study` runs (the file's keys; see the module docstring)."""

    description: str = ""
    notes: str = ""  # a paragraph under the report's title
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    prepare: dict[str, Any] = field(default_factory=dict)
    # the file's ``import`` section (a Python keyword): data imported instead of prepared
    import_: dict[str, Any] = field(default_factory=dict)
    sft: dict[str, Any] = field(default_factory=dict)
    pref: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, Any] = field(default_factory=dict)
    # pref.field: [values], each combination trained and chosen on the valid split
    # (setdpo.study.tune); the test split evaluates the chosen run only
    tune: dict[str, Any] = field(default_factory=dict)
    # combinations left out: each entry maps axis names to values, e.g. {tier: llm, loss: dpo}
    exclude: list[dict[str, Any]] = field(default_factory=list)
    baselines: list[str] = field(default_factory=lambda: ["popularity"])
    metric: str = "NDCG@5"  # the metric of the paired statistics
    metrics: list[str] = field(default_factory=lambda: ["HR@1", "NDCG@5", "MRR"])
    compare_with: list[str] = field(default_factory=lambda: ["sft"])
    threads: int = 1  # torch threads per stage (per process)
    # >1: evaluation stages run under `torchrun --standalone --nproc_per_node N`, each process
    # scoring 1/N of the contexts (setdpo.evaluation.sharding); the results are the same
    evaluate_processes: int = 1
    n_resamples: int = 2000

    def __post_init__(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise InputError(f"seeds must be distinct and non-empty, got {self.seeds}")
        unknown = set(self.baselines) - set(BASELINES)
        if unknown:
            raise InputError(f"baselines must be among {list(BASELINES)}, got {sorted(unknown)}")
        if self.threads < 1 or self.evaluate_processes < 1 or self.n_resamples < 100:
            raise InputError("threads and evaluate_processes must be >= 1, n_resamples >= 100")
        if LOSS_AXIS not in self.grid:
            raise InputError(f"the grid needs the objective axis {LOSS_AXIS!r}: [names]")
        from setdpo.losses import canonical_name

        try:
            self.grid[LOSS_AXIS] = [canonical_name(n) for n in self.grid[LOSS_AXIS]]
        except (KeyError, ValueError, TypeError) as err:
            raise InputError(f"grid {LOSS_AXIS}: {err}") from err
        for name in self.compare_with:
            if name != "sft" and name not in self.baselines:
                raise InputError(f"compare_with {name!r}: not 'sft' nor one of the baselines")
        absolute_files(self.import_, self.grid, os.getcwd())
        self.axes = [_axis(name, values) for name, values in self.grid.items()]
        self.tunings = _tunings(self)
        _check_fields(self)
        check_data(self)
        check_metrics(self)
        labels = {a.name: {v.label for v in a.values} for a in self.axes}
        for entry in self.exclude:
            if not isinstance(entry, dict) or not entry:
                raise InputError(f"exclude: each entry maps axis names to values, got {entry!r}")
            for name, value in entry.items():
                if str(value) not in labels.get(name, set()):
                    raise InputError(
                        f"exclude {entry}: {name}={value} is not a value of an axis; "
                        f"axes: { {k: sorted(v) for k, v in labels.items()} }"
                    )

    def section(self, name: str) -> dict[str, Any]:
        """The fields of a section of `SECTIONS` (``import`` is held as ``import_``)."""
        return getattr(self, "import_" if name == "import" else name)

    def to_file(self) -> dict[str, Any]:
        """The keys of a study file (``import`` without its trailing underscore; only if set)."""
        # without tune, the file of a study written before tune existed
        out = {k: v for k, v in asdict(self).items() if k != "import_" and (k != "tune" or v)}
        return {**out, "import": self.import_} if self.import_ else out

    def excluded(self, labels: dict[str, str]) -> bool:
        """Whether a combination of axis labels is left out."""
        return any(all(labels.get(k) == str(v) for k, v in entry.items()) for entry in self.exclude)


@dataclass(frozen=True, eq=False)
class AxisValue:
    label: str
    settings: dict[str, Any]  # "section.field" -> value


@dataclass(frozen=True, eq=False)  # hashed by identity: one object per axis
class Axis:
    name: str  # the label in tags: the field for a one-field axis, else the grid key
    key: str  # the grid key
    values: tuple[AxisValue, ...]

    @property
    def sections(self) -> set[str]:
        return {k.split(".")[0] for v in self.values for k in v.settings}


def _split_key(key: str, where: str) -> tuple[str, str]:
    section, _, name = key.partition(".")
    if section not in SECTIONS or not name:
        raise InputError(
            f"{where}: {key!r} is not section.field with a section of {list(SECTIONS)}"
        )
    if name in OWNED[section]:
        raise InputError(f"{where}: {key!r} is set by the study itself")
    return section, name


def _axis(key: str, values: Any) -> Axis:
    if isinstance(values, dict):  # named bundles
        out = []
        for label, bundle in values.items():
            if not isinstance(bundle, dict) or not bundle:
                raise InputError(
                    f"grid {key}.{label}: a bundle is a mapping of section.field: value"
                )
            for k in bundle:
                _split_key(k, f"grid {key}.{label}")
            out.append(AxisValue(str(label), dict(bundle)))
        return Axis(key, key, tuple(out))
    if not isinstance(values, list) or not values:
        raise InputError(f"grid {key}: a non-empty list of values (or a mapping of bundles)")
    _split_key(key, f"grid {key}")
    labels = [str(v) for v in values]
    if len(set(labels)) != len(labels):
        raise InputError(f"grid {key}: repeated values {values}")
    return Axis(key.split(".", 1)[1], key, tuple(AxisValue(str(v), {key: v}) for v in values))


def _tunings(config: StudyConfig) -> list[Combination]:
    """The tune section's combinations, after its checks (`setdpo.study.tune`)."""
    for key in config.tune:
        _split_key(str(key), "tune")
    tunings = combinations(config.tune, config.axes)
    if tunings:
        evaluates = [
            config.evaluate
            | {k.split(".", 1)[1]: x for k, x in v.settings.items() if k.startswith("evaluate.")}
            for a in config.axes
            for v in a.values
        ]
        check_evaluations(config.metric, [config.evaluate, *evaluates])
    return tunings


def _check_fields(config: StudyConfig) -> None:
    """Unknown field names fail now, not after an hour of earlier stages."""
    from setdpo.commands.options import config_class

    for section, path in SECTIONS.items():
        known = {f.name for f in fields(config_class(path)) if f.init}
        given = set(config.section(section))
        given |= {k.split(".", 1)[1] for k in config.tune if k.startswith(f"{section}.")}
        for axis in config.axes:
            given |= {
                k.split(".", 1)[1]
                for v in axis.values
                for k in v.settings
                if k.startswith(f"{section}.")
            }
        unknown = sorted(given - known)
        if unknown:
            raise InputError(f"study section {section!r}: unknown fields {unknown}")
        owned = sorted(set(config.section(section)) & OWNED[section])
        if owned:
            raise InputError(f"study section {section!r}: {owned} are set by the study itself")


def load_study(path: str | Path) -> StudyConfig:
    from setdpo.protocol import check_types, read_config_file

    raw = read_config_file(path)
    known = {"import" if f.name == "import_" else f.name for f in fields(StudyConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise InputError(f"{path}: unknown study keys {unknown}; known: {sorted(known)}")
    if "import" in raw:
        raw["import_"] = raw.pop("import")
    check_types(StudyConfig, raw, lambda _: path)
    if isinstance(raw.get("import_"), dict):  # relative to the study file's folder
        absolute_files(raw["import_"], raw.get("grid") or {}, Path(path).parent)
    try:
        return StudyConfig(**raw)
    except InputError as err:
        raise InputError(f"{path}: {err}") from err


@dataclass
class Stage:
    """One command of the study."""

    name: str  # "<kind>/<tag>" (or "eval/<model>/<tag>")
    kind: str  # data | sft | pref | eval
    command: list[str]  # setdpo's arguments, e.g. ["train", "pref", "--config", FILE]
    settings: dict[str, Any]  # the configuration file's fields
    output: Path
    after: list[str]
    # hash of the settings, the command (paths relative to the study) and the upstream keys
    key: str = ""
    legacy_key: str = ""  # the key before it left out where the study lies (older records)
    # >1: launched on this many processes by torchrun; not in the key (the output is the same)
    processes: int = 1

    def command_line(self, threads: int) -> str:
        setdpo = " ".join(["setdpo", *(shlex.quote(a) for a in self.command)])
        if self.processes > 1:
            setdpo = f"torchrun --standalone --nproc_per_node {self.processes} -m {setdpo}"
        return f"OMP_NUM_THREADS={threads} {setdpo}"


@dataclass(frozen=True)
class Cell:
    """One setting (the axis labels but the objective's) and seed: which stage holds which
    model's evaluation."""

    setting: tuple[tuple[str, str], ...]
    seed: int
    evals: dict[str, str]  # model name -> eval stage name
    prefs: dict[str, str]  # objective -> pref stage name


@dataclass
class Plan:
    config: StudyConfig
    out: Path  # the stage directory (data/, runs/, eval/, stages/, logs/)
    stages: dict[str, Stage]  # in dependency order
    cells: list[Cell]
    home: Path  # where study.yaml, commands.sh and the report go: out, or out/<name>

    @property
    def objectives(self) -> list[str]:
        return list(self.config.grid[LOSS_AXIS])

    def settings(self) -> list[tuple[tuple[str, str], ...]]:
        return list(dict.fromkeys(c.setting for c in self.cells))


def _tag(labels: list[tuple[str, str]]) -> str:
    return ",".join(f"{name}={value}" for name, value in labels) or "default"


def build_plan(config: StudyConfig, out: str | Path, name: str | None = None) -> Plan:
    """Every stage of the study, shared where equal, keyed by its content.

    With a ``name``, the study's own files go to ``out/<name>/``: several studies can then
    share one stage directory, and a stage two of them hold equal (same name, same key) runs
    once.
    """
    given = Path(out)
    out = Path(os.path.abspath(out))  # stage files name absolute paths (setdpo.paths)
    if name is not None and (not name or "/" in name or name.startswith(".")):
        raise InputError(f"a study name is a plain folder name, got {name!r}")
    stages: dict[str, Stage] = {}

    def add(stage: Stage) -> str:
        if stage.name not in stages:
            what = [stage.command, stage.settings]
            upstream = [stages[name].key for name in stage.after]
            stage.key = _hash([*_within(what, out, "<study>"), upstream])
            legacy = [stages[name].legacy_key for name in stage.after]
            stage.legacy_key = _hash([*_within(what, out, str(given)), legacy])
            stages[stage.name] = stage
        return stage.name

    cells = []
    for combo in itertools.product(*(a.values for a in config.axes)):
        chosen = dict(zip(config.axes, combo, strict=True))
        if config.excluded({a.name: v.label for a, v in chosen.items()}):
            continue
        for seed in config.seeds:

            def labels(sections: tuple[str, ...], _c=chosen, _s=seed) -> list[tuple[str, str]]:
                picked = [(a.name, v.label) for a, v in _c.items() if a.sections & set(sections)]
                return [*picked, ("seed", str(_s))]

            def section(section_name: str, _c=chosen, _s=seed) -> dict[str, Any]:
                """The section's fields at this cell (``_c``: the axes applied)."""
                values = dict(config.section(section_name))
                for value in _c.values():
                    values.update(
                        {
                            k.split(".", 1)[1]: v
                            for k, v in value.settings.items()
                            if k.startswith(f"{section_name}.")
                        }
                    )
                return {**values, "seed": _s}

            data_stage = _data_stage(config, out, labels(DEPENDS["data"]), section)
            data, data_dir = add(data_stage), data_stage.output
            if config.tunings and not uses_import(config):
                check_valid_split(section("prepare"), data_stage.name)
            sft_tag = _tag(labels(DEPENDS["sft"]))
            sft_dir = out / "runs" / "sft" / sft_tag
            sft_settings = {**section("sft"), "data": str(data_dir), "output_dir": str(sft_dir)}
            sft = add(
                Stage(
                    f"sft/{sft_tag}",
                    "sft",
                    ["train", "sft", "--config", _stage_file(out, f"sft/{sft_tag}")],
                    sft_settings,
                    sft_dir,
                    [data],
                )
            )
            pref_tag = _tag(labels(DEPENDS["pref"]))
            pref_dir = out / "runs" / "pref" / pref_tag
            pref_settings = {**section("pref"), "data": str(data_dir), "init": str(sft_dir)}
            loss = chosen[next(a for a in config.axes if a.key == LOSS_AXIS)].label
            if config.tunings:
                # chosen on the valid split by what the pref run depends on, not evaluate axes
                pref_axes = {a: v for a, v in chosen.items() if a.sections & set(DEPENDS["pref"])}
                valid = {**section("evaluate", pref_axes), "data": str(data_dir)}
                runs = (labels(DEPENDS["pref"]), pref_settings, valid)
                pref = _tuned_stages(add, config, out, loss, runs, sft)
            else:
                pref = add(
                    Stage(
                        f"pref/{pref_tag}",
                        "pref",
                        ["train", "pref", "--config", _stage_file(out, f"pref/{pref_tag}")],
                        {**pref_settings, "output_dir": str(pref_dir)},
                        pref_dir,
                        [sft],
                    )
                )
            models = {name: (name, data, DEPENDS["data"]) for name in config.baselines}
            if "base" in models:
                models["base"] = (
                    sft_settings.get("model", "embedded:smollm2-135m"),
                    data,
                    DEPENDS["sft"],
                )
            models["sft"] = (str(sft_dir), sft, DEPENDS["sft"])
            models[loss] = (str(pref_dir), pref, DEPENDS["pref"])
            evals = {}
            for model_name, (model, upstream, sections) in models.items():
                tag = _tag(labels((*sections, "evaluate")))
                output = out / "eval" / model_name / f"{tag}.json"
                stage_name = f"eval/{model_name}/{tag}"
                command = _evaluate_command(out, stage_name, output, config.threads)
                settings = {**section("evaluate"), "data": str(data_dir), "model": model}
                settings = evaluate_settings(settings, model)
                evals[model_name] = add(
                    Stage(
                        stage_name,
                        "eval",
                        command,
                        settings,
                        output,
                        [upstream],
                        processes=config.evaluate_processes,
                    )
                )
            setting = tuple((a.name, v.label) for a, v in chosen.items() if a.key != LOSS_AXIS)
            cells.append(Cell(setting, seed, evals, {loss: pref}))
    home = out / name if name else out
    return Plan(config, out, _dependency_order(stages), _merge_cells(cells), home)


def _data_stage(
    config: StudyConfig, out: Path, labels: list[tuple[str, str]], section: Any
) -> Stage:
    """`setdpo data prepare` per data setting and seed, or `setdpo data import` per import
    setting: an import reads the same files whatever the seed, so every seed shares it (its
    tag has no seed; ``imported`` without import axes)."""
    if uses_import(config):
        picked = [(name, value) for name, value in labels if name != "seed"]
        command, tag = "import", _tag(picked) if picked else "imported"
        settings = {k: v for k, v in section("import").items() if k != "seed"}
    else:
        command, tag, settings = "prepare", _tag(labels), section("prepare")
    name, folder = f"data/{tag}", out / "data" / tag
    command_line = ["data", command, "--config", _stage_file(out, name)]
    return Stage(name, "data", command_line, {**settings, "out": str(folder)}, folder, [])


def _stage_file(out: Path, stage_name: str) -> str:
    return str(out / "stages" / f"{stage_name}.yaml")


def _evaluate_command(out: Path, stage_name: str, output: Path, threads: int) -> list[str]:
    command = ["evaluate", "--config", _stage_file(out, stage_name), "--out", str(output)]
    return [*command, "--threads", str(threads)]


def _tuned_stages(
    add: Callable[[Stage], str],
    config: StudyConfig,
    out: Path,
    loss: str,
    runs: tuple[list[tuple[str, str]], dict[str, Any], dict[str, Any]],
    sft: str,
) -> str:
    """One objective's stages at one setting and seed under ``tune``: a pref run per
    combination, its evaluation on the valid split, then the selection, which reads those
    evaluations only and copies the chosen run to the untuned run's folder. ``runs``: the
    untuned run's tag labels, its settings and the valid evaluation's. Returns the
    selection's name (the objective's run for everything downstream)."""
    pref_labels, pref_settings, valid_settings = runs
    head, seed = pref_labels[:-1], pref_labels[-1]
    candidates, valid = [], []
    for combination in config.tunings:
        tag = _tag([*head, *tune_labels(combination), seed])
        run = out / "runs" / "pref" / tag
        pref = add(
            Stage(
                f"pref/{tag}",
                "pref",
                ["train", "pref", "--config", _stage_file(out, f"pref/{tag}")],
                {**pref_settings, **dict(combination), "output_dir": str(run)},
                run,
                [sft],
            )
        )
        name, results = f"valid/{loss}/{tag}", out / "valid" / loss / f"{tag}.json"
        settings = {**valid_settings, "split": TUNE_SPLIT, "model": str(run)}
        command = _evaluate_command(out, name, results, config.threads)
        valid.append(
            add(
                Stage(
                    name,
                    "valid",
                    command,
                    settings,
                    results,
                    [pref],
                    processes=config.evaluate_processes,
                )
            )
        )
        candidates.append({"values": dict(combination), "run": str(run), "results": str(results)})
    tag = _tag(pref_labels)
    run, name = out / "runs" / "pref" / tag, f"select/{tag}"
    settings = {
        "metric": config.metric,
        "candidates": candidates,
        "out": str(run),
        "choice": str(out / "select" / f"{tag}.json"),
    }
    command = ["study", "select", "--config", _stage_file(out, name)]
    return add(Stage(name, "select", command, settings, run, valid))


def _hash(what: Any) -> str:
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _within(what: Any, out: Path, prefix: str) -> Any:
    """``what`` with ``prefix`` for the study directory ``out`` in every path inside it
    (``<study>/data/seed=0``): a key that does not depend on where the study lies."""
    if isinstance(what, dict):
        return {k: _within(v, out, prefix) for k, v in what.items()}
    if isinstance(what, list | tuple):
        return [_within(v, out, prefix) for v in what]
    if isinstance(what, str) and (what == str(out) or what.startswith(f"{out}{os.sep}")):
        return prefix + what[len(str(out)) :]
    return what


def _dependency_order(stages: dict[str, Stage]) -> dict[str, Stage]:
    """Stages by kind (data, sft, pref, valid, select, eval): every stage after the ones it
    needs."""
    order = {"data": 0, "sft": 1, "pref": 2, "valid": 3, "select": 4, "eval": 5}
    return dict(sorted(stages.items(), key=lambda item: order[item[1].kind]))


def _merge_cells(cells: list[Cell]) -> list[Cell]:
    """One cell per (setting, seed), holding every objective's runs and evaluations."""
    merged: dict[tuple, Cell] = {}
    for cell in cells:
        key = (cell.setting, cell.seed)
        if key in merged:
            old = merged[key]
            merged[key] = Cell(
                cell.setting, cell.seed, {**old.evals, **cell.evals}, {**old.prefs, **cell.prefs}
            )
        else:
            merged[key] = cell
    return list(merged.values())
