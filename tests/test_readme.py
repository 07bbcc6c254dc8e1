"""The README's commands are the ones the project runs: each parses, and its Python example runs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from setdpo.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", README, flags=re.DOTALL)


def shell_lines() -> list[str]:
    lines = []
    for lang, body in BLOCKS:
        if lang == "bash":
            lines += [line.split("#")[0].strip() for line in body.splitlines() if line.strip()]
    return [line for line in lines if line]


def test_quick_start_is_make_demo_and_make_test_and_ci_runs_make_test() -> None:
    quick = README.split("## Quick start", 1)[1].split("##", 1)[0]
    assert "make demo" in quick and "make test" in quick
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "setdpo quickstart" in makefile  # make demo runs the main job


@pytest.mark.parametrize("line", [ln for ln in shell_lines() if ln.startswith("setdpo ")])
def test_every_setdpo_command_in_the_readme_parses(line: str) -> None:
    argv = shlex.split(line)[1:]
    if "..." in argv:
        argv = argv[: argv.index("...")]
    args = build_parser().parse_args(argv)
    assert callable(args.func)


@pytest.mark.smollm2
def test_python_api_example_runs(one_torch_thread) -> None:
    (code,) = [body for lang, body in BLOCKS if lang == "python"]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    scores, out = namespace["scores"], namespace["out"]
    assert len(scores) == 1 and len(scores[0]) == 3
    assert all(s < 0 for s in scores[0])  # log-probabilities
    assert 0.0 <= out.metrics["reward_accuracy"] <= 1.0


def test_every_test_the_guarantees_cite_exists() -> None:
    """docs/guarantees.md backs its promises with tests: each one it names is there."""
    text = (ROOT / "docs" / "guarantees.md").read_text(encoding="utf-8")
    cited = re.findall(r"`(tests/\w+\.py)(?:::(\w+))?`", text)
    assert len(cited) >= 8
    for path, name in cited:
        source = (ROOT / path).read_text(encoding="utf-8")
        assert not name or f"def {name}(" in source, (path, name)
