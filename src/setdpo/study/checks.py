"""A study's data source (prepared or imported) and its generation metric, checked at load.

**Imported data.** A study reads its data either from ``prepare`` (`setdpo data prepare`, one
data set per data setting and seed: the seed draws the negatives and the sample) or from
``import`` (`setdpo data import`: LLaRA / S-DPO JSON, TRL or LlamaFactory rows, exported
JSON lines; the fields of `setdpo.data.formats.ImportConfig`), never both. An import reads
the same files whatever the seed, so its data stage is shared by every seed (its tag has no
``seed=``; `data/imported` without import axes); SFT, preference and every evaluation still
run per seed. ``import.files`` (split -> file) are made absolute when the study is loaded:
relative to the study file's folder (else to the working directory, as `setdpo.paths` reads
configuration files), so the stage files and ``study.yaml`` name them wherever the study runs.
The import's files must exist, name a train file and the split the evaluations read.

**Baselines on imported data.** ``random`` and ``popularity`` (``items.json``'s train
counts, which an import writes) work on any import; ``sasrec`` learns from histories, which
TRL and LlamaFactory rows do not carry (only prompt text), so a study importing them with the
``sasrec`` baseline is refused; ``base`` is a model like the others.

**Generation metrics.** ``metrics`` (and ``metric``) may list ``GenHR@1`` (S-DPO's rule, its
evaluate_batch.py: a hit when the greedy answer names exactly one candidate and it is the
positive, divided by all contexts) and ``ValidRatio`` (the answer names exactly one candidate),
which `setdpo evaluate` stores per context, with the answer, when ``generate`` (or
``constrained``) is on. "Names" is `setdpo.evaluation.matching`'s: whole words after
normalising case, accents and punctuation, the longest of nested titles winning, where S-DPO
counts case-sensitive substrings; the two agree on answers that write titles as the catalog
does when no title is inside another. A study that lists one without
generation on in every setting is refused at load rather than switched on behind the user's
back: generation costs time, and whether it is constrained is the user's choice.
``GenHR@1/valid`` (LLaRA's, divided by the valid answers) is refused: the study's statistics
average per-context values, and its per-context values are not a mean. The baselines that
only score candidates (``random``, ``popularity``, ``sasrec``) are evaluated without the
generation fields (`evaluate_settings`); the report says the metric does not apply to them,
and a study whose paired metric is a generation metric cannot compare with them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from setdpo.errors import InputError
from setdpo.paths import resolved

if TYPE_CHECKING:
    from setdpo.study.plan import StudyConfig

GENERATION_FIELDS = ("generate", "constrained", "max_new_tokens")
NO_HISTORY_FORMATS = ("trl", "llamafactory")  # rows with prompt text, no item history


def scoring_only() -> tuple[str, ...]:
    """The baselines that score candidates but cannot generate answers."""
    from setdpo.evaluation.scorers import BASELINES

    return BASELINES


def generation_metrics() -> dict[str, Any]:
    from setdpo.evaluation.metrics import GENERATION_METRICS

    return GENERATION_METRICS


def absolute_files(section: dict[str, Any], grid: dict[str, Any], folder: str | Path) -> None:
    """Make every ``import.files`` path (the section's, the grid's) absolute, in place:
    relative to ``folder`` (the study file's), else to the working directory."""

    def fix(files: Any) -> Any:
        if not isinstance(files, dict):
            return files  # ImportConfig refuses it, naming the field
        return {split: resolved(str(path), folder) for split, path in files.items()}

    if "files" in section:
        section["files"] = fix(section["files"])
    for key, values in grid.items():
        if key == "import.files" and isinstance(values, list):
            grid[key] = [fix(v) for v in values]
        elif isinstance(values, dict):  # bundles
            for bundle in values.values():
                if isinstance(bundle, dict) and "import.files" in bundle:
                    bundle["import.files"] = fix(bundle["import.files"])


def combinations(config: StudyConfig, names: tuple[str, ...]) -> Iterator[dict[str, dict]]:
    """Per combination of the axes' values (those not excluded): the fields of the named
    sections with the axes' values applied."""
    for combo in itertools.product(*(a.values for a in config.axes)):
        if config.excluded({a.name: v.label for a, v in zip(config.axes, combo, strict=True)}):
            continue
        out = {name: dict(config.section(name)) for name in names}
        for value in combo:
            for key, setting in value.settings.items():
                section, _, name = key.partition(".")
                if section in out:
                    out[section][name] = setting
        yield out


def uses_import(config: StudyConfig) -> bool:
    """Whether the study imports its data (an ``import`` section or an axis over it)."""
    return bool(config.section("import")) or any("import" in a.sections for a in config.axes)


def check_data(config: StudyConfig) -> None:
    """``prepare`` and ``import`` are exclusive; an import's files exist and name the
    evaluated split; a baseline that needs histories is refused on rows without them."""
    if not uses_import(config):
        return
    prepared = sorted(config.prepare) + sorted(
        k for a in config.axes for v in a.values for k in v.settings if k.startswith("prepare.")
    )
    if prepared:
        raise InputError(
            "the study sections 'prepare' and 'import' are exclusive (the data is prepared by "
            "`setdpo data prepare` or imported by `setdpo data import`); prepare sets "
            f"{sorted(set(prepared))}"
        )
    from setdpo.data.formats import ImportConfig

    for sections in combinations(config, ("import", "evaluate")):
        try:
            imported = ImportConfig(**{**sections["import"], "out": "imported"})
        except TypeError as err:
            raise InputError(f"study section 'import': {err}") from err
        except InputError as err:
            raise InputError(f"study section 'import': {err}") from err
        for split, path in imported.files.items():
            if not Path(path).is_file():
                raise InputError(f"study section 'import': the {split} file {path} does not exist")
        split = sections["evaluate"].get("split", "test")
        if split not in imported.files:
            raise InputError(
                f"study section 'import': the evaluations read split {split!r}, which "
                f"import.files does not name (it names {sorted(imported.files)})"
            )
        if "sasrec" in config.baselines and imported.format in NO_HISTORY_FORMATS:
            raise InputError(
                f"baseline sasrec learns from item histories, and {imported.format} rows carry "
                "none (only prompt text): leave sasrec out of baselines for this import"
            )


def check_metrics(config: StudyConfig) -> None:
    """A generation metric in ``metrics`` or ``metric`` needs generation on in every setting;
    one divided by the valid answers is refused; the paired metric's comparisons need models
    that generate."""
    registered = generation_metrics()
    listed = [m for m in dict.fromkeys([*config.metrics, config.metric]) if m in registered]
    if not listed:
        return
    ratios = [m for m in listed if registered[m].denominator is not None]
    if ratios:
        raise InputError(
            f"metrics {ratios}: divided by the valid answers, not by the contexts, so not a mean "
            "of per-context values, which is what the study's statistics resample; list GenHR@1 "
            "(hits over all contexts, S-DPO's) and ValidRatio"
        )
    for sections in combinations(config, ("evaluate",)):
        evaluate = sections["evaluate"]
        if not (evaluate.get("generate") or evaluate.get("constrained")):
            raise InputError(
                f"metrics {listed} are values of generated answers: set evaluate.generate: true "
                "(free greedy answers; evaluate.constrained: true to the candidate titles), in "
                "every setting of the grid"
            )
    if config.metric in listed:
        unable = [m for m in config.compare_with if m in scoring_only()]
        if unable:
            raise InputError(
                f"metric {config.metric} is a generation metric and the baselines {unable} "
                "cannot generate: compare_with cannot pair them on it"
            )


def evaluate_settings(settings: dict[str, Any], model: str) -> dict[str, Any]:
    """An evaluation stage's fields: a baseline that cannot generate leaves generation's out
    (its report says the generation metrics do not apply to it)."""
    if model not in scoring_only():
        return settings
    return {k: v for k, v in settings.items() if k not in GENERATION_FIELDS}
