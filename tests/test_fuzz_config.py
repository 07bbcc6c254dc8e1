"""Fuzzing configuration: YAML/JSON files (`--config FILE`, flat or a protocol file's section)
and `--field value` options, for every configured command, through the one path from file
and flags to a configuration (`setdpo.commands.options.build_config`, as `setdpo.cli.main`
takes it before running the command).

A configuration is either built, or refused with `InputError` naming the file or the field;
an option value argparse cannot parse exits 2 naming the option. Any other exception fails.
Counts: `fuzz: ...` lines in pytest's summary (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from setdpo.cli import build_parser
from setdpo.commands.options import build_config, config_class
from setdpo.errors import InputError

FUZZ = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# command -> (its argv, its configuration class, the fields of a minimal valid configuration)
COMMANDS = {
    "data prepare": (["data", "prepare"], "setdpo.data.config:PrepareConfig", {}),
    "data import": (["data", "import"], "setdpo.data.formats:ImportConfig",
                    {"files": {"train": "rows.jsonl"}, "format": "trl"}),
    "train sft": (["train", "sft"], "setdpo.training.config:SFTConfig",
                  {"data": "prepared", "output_dir": "runs/sft"}),
    "train pref": (["train", "pref"], "setdpo.training.config:PrefConfig",
                   {"data": "prepared", "output_dir": "runs/pref", "init": "runs/sft"}),
    "evaluate": (["evaluate", "--out", "results.json"], "setdpo.evaluation.evaluate:EvalConfig",
                 {"data": "prepared", "model": "random"}),
    "recommend": (["recommend"], "setdpo.evaluation.recommend:RecommendConfig",
                  {"model": "runs/sft", "history": ["Heat (1995)"],
                   "candidates": ["Jaws (1975)", "Up (2009)"]}),
    "serve": (["serve"], "setdpo.serving.service:ServeConfig", {"model": "runs/sft"}),
    "quickstart": (["quickstart"], "setdpo.quickstart:QuickstartConfig", {}),
}  # fmt: skip
FIELDS = {
    command: sorted(f.name for f in dataclasses.fields(config_class(cls)) if f.init)
    for command, (_, cls, _) in COMMANDS.items()
}
# Values a hand-edited file or a shell typo gives a field.
VALUES = st.one_of(
    st.sampled_from([0, -1, 1, 2**63, -(10**30), 0.5, -0.0, float("nan"), float("inf"), True,
                     False, None, "", "abc", "1e3", "-1", "none", [], {}, [1, "a"], {"a": 1},
                     "train=1", "train=x", ["a", "b"], [5.0, 4.0, 3.0], [0.8, 0.1, 0.1]]),
    st.text(max_size=8),
    st.integers(-5, 50),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.integers(-2, 5) | st.floats(-1, 10) | st.text(max_size=3), max_size=4),
    st.dictionaries(st.sampled_from(["train", "valid", "test", "x"]), st.integers(-2, 99) | st.text(max_size=3), max_size=3),
)  # fmt: skip


def _build(argv: list[str]) -> Any:
    """The command's configuration from `argv`, as `cli.main` builds it before running."""
    return build_config(build_parser().parse_args(argv))


@st.composite
def config_files(draw: st.DrawFn, command: str) -> tuple[str, dict[str, Any]]:
    """A configuration file's text for `command` (YAML or JSON, flat or a protocol section),
    the valid fields with 0..4 changed, added or unknown, sometimes damaged text."""
    values = dict(COMMANDS[command][2])
    for _ in range(draw(st.integers(0, 4))):
        key = draw(st.sampled_from(FIELDS[command]) | st.sampled_from(["unknown", "Seed", "k "]))
        values[key] = draw(VALUES)
    document: Any = values
    if draw(st.booleans()):
        section = {"data prepare": "prepare", "data import": "import", "train sft": "sft",
                   "train pref": "pref"}.get(command, command)  # fmt: skip
        document = {section: values} | draw(st.sampled_from([{}, {}, {"description": "x"},
                                                             {"other": {}}, {"sft": 3}]))  # fmt: skip
    document = draw(st.sampled_from([document] * 8 + [[values], "text", 3, None]))
    if draw(st.booleans()):
        text = json.dumps(document)
    else:
        text = yaml.safe_dump(document, allow_unicode=True, sort_keys=False)
    text = draw(st.sampled_from([text] * 8 + [
        text[: len(text) // 2],
        "base: &b {seed: 1}\nother: *b\n" + text,  # anchors and aliases
        "seed: !!python/object/apply:os.getpid []\n",  # a tag safe_load must refuse
        "!!binary aGVsbG8=\n",
        "\ufeff" + text,
        "a: [unclosed\n",
        "{'seed': 1, 'seed': 2}",
    ]))  # fmt: skip
    return text, values


@pytest.mark.parametrize("command", sorted(COMMANDS))
@FUZZ
@given(data=st.data())
def test_configuration_files(fuzz, command, data) -> None:
    text, values = data.draw(config_files(command))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, data.draw(st.sampled_from(["config.yaml", "config.json"])))
        path.write_text(text, "utf-8")
        argv = COMMANDS[command][0] + ["--config", str(path)]
        fuzz.check(f"config file: {command}", lambda: _build(argv), path, *values)


@st.composite
def options(draw: st.DrawFn, command: str) -> tuple[list[str], list[str]]:
    """`--field value` options: the valid fields, then 0..3 fields with any text as value."""
    argv, fields = [], []
    for name, value in COMMANDS[command][2].items():
        if isinstance(value, dict):
            value = [",".join(f"{k}={v}" for k, v in value.items())]
        argv += [f"--{name}", *map(str, value if isinstance(value, list) else [value])]
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(FIELDS[command]))
        fields.append(name)
        spelled = draw(st.sampled_from([name, name.replace("_", "-")]))
        text = draw(st.sampled_from(["0", "-1", "1e400", "nan", "inf", "x", "", "true", "None",
                                     "train=1,valid", "a=b=c", "9" * 30, "1.5", "🎬"])
                    | st.text(max_size=6).filter(lambda s: "\x00" not in s))  # fmt: skip
        argv.append(f"--{spelled}={text}")
    return argv, fields


@pytest.mark.parametrize("command", sorted(COMMANDS))
@FUZZ
@given(data=st.data())
def test_command_line_values(fuzz, command, data) -> None:
    given_argv, fields = data.draw(options(command))
    argv = COMMANDS[command][0] + given_argv
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            fuzz.check(f"options: {command}", lambda: _build(argv), *fields, *COMMANDS[command][2])
    except SystemExit as exit:  # argparse: a value it cannot parse, naming the option
        assert exit.code == 2 and "error: argument --" in err.getvalue(), err.getvalue()
        fuzz.count(f"options: {command}", accepted=False)


def test_yaml_tags_are_not_executed(tmp_path: Path) -> None:
    """`safe_load`: a Python tag is refused, not run."""
    path = tmp_path / "config.yaml"
    path.write_text("seed: !!python/object/apply:os.getpid []\n", "utf-8")
    with pytest.raises(InputError, match="cannot read the configuration"):
        _build(["data", "prepare", "--config", str(path)])


# What the fuzzing found, each as the input that raised something other than InputError.
FOUND = {
    "a null where a number belongs": (
        ["evaluate", "--out", "r.json"],
        "data: prepared\nmodel: random\nbatch_size: null\n",
        "field 'batch_size' must be int, got None",
    ),
    "a list where a list of titles belongs": (
        ["recommend"],
        "model: m\nhistory: [Heat]\ncandidates: 0\n",
        "field 'candidates' must be",
    ),
    "an int transformers opens as a file": (
        ["train", "sft"],
        "data: d\noutput_dir: o\naccelerator_config: 0\n",
        "field 'accelerator_config' must be",
    ),
}


@pytest.mark.parametrize("case", sorted(FOUND))
def test_found_config_files(tmp_path: Path, case: str) -> None:
    argv, text, message = FOUND[case]
    path = tmp_path / "config.yaml"
    path.write_text(text, "utf-8")
    with pytest.raises(InputError, match=re.escape(message)) as err:
        _build(argv + ["--config", str(path)])
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "sft", "--data", "d", "--out", "o", "--accelerator_config=0"], "No such file"),
        (["quickstart", "--llm_losses=0"], "llm_losses: unknown loss '0'"),
        (["evaluate", "--out", "r.json", "--data", "d", "--metrics=0"], "metrics: unknown metric"),
    ],
)
def test_found_options(argv: list[str], message: str) -> None:
    with pytest.raises(InputError, match=re.escape(message)):
        _build(argv)


def test_serve_model_option_before_other_options() -> None:
    """Found by the fuzzing: `setdpo serve --model DIR` and `serve --port 8001 DIR` exited 2,
    the positional MODEL taking the option's value."""
    assert _build(["serve", "--model", "runs/a", "--port=1"]).model == "runs/a"
    assert _build(["serve", "runs/b"]).model == "runs/b"
    config = _build(["serve", "--port", "8001", "runs/c"])
    assert (config.model, config.port) == ("runs/c", 8001)


STUDY = yaml.safe_load(Path(__file__).parents[1].joinpath("configs/studies/smoke.yaml").read_text())
STUDY_KEYS = sorted(STUDY) + ["exclude", "metric", "metrics", "compare_with", "threads", "notes"]
STUDY_KEYS += ["tune"]
TUNE_KEYS = ["pref.beta", "pref.learning_rate", "pref.loss", "sft.max_steps", "pref.x", "pref.init"]


@st.composite
def study_files(draw: st.DrawFn) -> str:
    """The smoke study with 0..3 keys (or grid axes, section fields, tune fields) set to any
    value."""
    study = json.loads(json.dumps(STUDY))
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(["top", "top", "grid", "section", "tune"]))
        if where == "tune" and isinstance(study.setdefault("tune", {}), dict):
            study["tune"][draw(st.sampled_from(TUNE_KEYS))] = draw(VALUES | st.lists(VALUES))
        elif where == "top":
            study[draw(st.sampled_from(STUDY_KEYS))] = draw(VALUES)
        elif where == "grid" and isinstance(study.get("grid"), dict):
            axis = draw(st.sampled_from(["pref.loss", "prepare.k", "sft.max_steps", "tier", "x.y"]))
            study["grid"][axis] = draw(VALUES | st.lists(VALUES, max_size=3))
        elif where == "section":
            section = draw(st.sampled_from(["prepare", "sft", "pref", "evaluate"]))
            if isinstance(study.get(section), dict):
                study[section][draw(st.sampled_from(["k", "max_steps", "loss", "out", "seed"]))] = (
                    draw(VALUES)
                )
    return yaml.safe_dump(study, allow_unicode=True)


@FUZZ
@given(text=study_files())
def test_study_files(fuzz, text) -> None:
    from setdpo.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "study.yaml")
        path.write_text(text, "utf-8")
        argv = ["study", "--config", str(path), "--out", f"{tmp}/out", "--print-commands"]
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
        assert code == 0 or (code == 2 and str(path) in err.getvalue()), err.getvalue()
        fuzz.count("study file", accepted=code == 0)


@pytest.mark.parametrize("key", ["exclude", "baselines", "evaluate"])
def test_found_study_files(tmp_path: Path, key: str) -> None:
    """Found by the fuzzing: `exclude: 0` (or `baselines: 0`, a section `0`) was a TypeError."""
    from setdpo.study import load_study

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(STUDY | {key: 0}), "utf-8")
    with pytest.raises(InputError, match=re.escape(f"{path}: StudyConfig field {key!r} must be")):
        load_study(path)


def test_fuzzing_draws_the_same_examples_unless_exploring(pytestconfig) -> None:
    """Found by a newcomer's `make test` without `CI`: hypothesis drew new examples each run
    and replayed a failure from `.hypothesis/` ever after. Now every run draws the same ones
    and no run reads or writes an example database, unless exploration is asked for."""
    from conftest import EXPLORE

    exploring = bool(os.environ.get(EXPLORE)) or pytestconfig.getoption("hypothesis_seed")
    assert settings.default.database is None
    assert settings.default.derandomize is not exploring
    assert FUZZ.database is None and FUZZ.derandomize is not exploring
