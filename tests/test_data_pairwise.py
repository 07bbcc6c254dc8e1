"""Pairwise rows merged into set-wise contexts, against a brute-force reference."""

from __future__ import annotations

import itertools
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from setdpo.data.formats import read_trl
from setdpo.data.pairwise import PairwiseRow, merge, render_messages, shown_lines, trl_fields
from setdpo.errors import InputError

PROMPTS = ["p", "q", "r"]
ANSWERS = ["a", "b", "c", "d", "e"]


def reference(
    rows: list[tuple[str, list[str], list[str]]], first_line: int = 1
) -> dict[str, tuple]:
    """Per prompt, by brute force: ("conflict", lines, rows) when some answer is above itself
    through the rows' pairs, else ("context", {answer: level}); level = 1 + the most pairs on
    a chain of pairs that ends at the answer. Row i is on line first_line + i."""
    groups: dict[str, list[tuple[int, list[str], list[str]]]] = {}
    for line, (prompt, chosen, rejected) in enumerate(rows, start=first_line):
        groups.setdefault(prompt, []).append((line, chosen, rejected))
    out = {}
    for prompt, group in groups.items():
        answers = {a for _, chosen, rejected in group for a in chosen + rejected}
        pairs = {
            (chosen[i], chosen[j], line)
            for line, chosen, _ in group
            for i, j in itertools.combinations(range(len(chosen)), 2)
        } | {(c, r, line) for line, chosen, rejected in group for c in chosen for r in rejected}
        above = {(u, v) for u, v, _ in pairs}
        for k, i, j in itertools.product(answers, repeat=3):  # Warshall: k outermost
            if (i, k) in above and (k, j) in above:
                above.add((i, j))
        lines = sorted({line for u, v, line in pairs if u == v or (v, u) in above})
        if lines:
            out[prompt] = ("conflict", lines, len(group))
            continue
        level = dict.fromkeys(answers, 1)
        for _ in answers:  # Bellman-Ford rounds: enough for the longest chain
            for u, v, _ in pairs:
                level[v] = max(level[v], level[u] + 1)
        out[prompt] = ("context", level)
    return out


answer_lists = st.lists(st.sampled_from(ANSWERS), min_size=0, max_size=3)
rows_strategy = st.lists(
    st.tuples(
        st.sampled_from(PROMPTS),
        st.lists(st.sampled_from(ANSWERS), min_size=1, max_size=3),
        answer_lists,
    ),
    min_size=1,
    max_size=12,
)


def write_rows(folder: str, rows: list[tuple[str, list[str], list[str]]], as_list: bool) -> Path:
    """JSON lines, or a JSON list with a row a line after its "[" line."""
    path = Path(folder) / "rows.json"
    lines = [
        json.dumps({"prompt": p, "chosen": c[0] if len(c) == 1 else c, "rejected": r})
        for p, c, r in rows
    ]
    text = "[\n" + ",\n".join(lines) + "\n]\n" if as_list else "\n".join(lines) + "\n"
    path.write_text(text, "utf-8")
    return path


@settings(max_examples=300, deadline=None)
@given(rows_strategy, st.booleans())
def test_merged_contexts_match_the_brute_force_reference(rows, as_list):
    expected = reference(rows, first_line=2 if as_list else 1)
    conflicts = {p: e for p, e in expected.items() if e[0] == "conflict"}
    with tempfile.TemporaryDirectory() as folder:
        path = write_rows(folder, rows, as_list)
        if conflicts:
            with pytest.raises(InputError) as raised:
                read_trl(path)
            message = str(raised.value)
            assert f"{len(conflicts)} prompts whose rows contradict" in message
            for prompt, (_, lines, _) in conflicts.items():
                assert f"prompt {prompt!r}: lines {shown_lines(lines)} put" in message
        if len(conflicts) == len(expected):
            with pytest.raises(InputError, match="every prompt's rows conflict"):
                read_trl(path, on_conflict="drop")
            return
        read = read_trl(path, on_conflict="drop")
    # contexts in the order of their prompts' first rows, numbered by position
    kept = [p for p in dict.fromkeys(p for p, _, _ in rows) if p not in conflicts]
    assert [ex.prompt for ex in read.examples] == kept
    assert [ex.context_id for ex in read.examples] == [str(i) for i in range(len(kept))]
    for example in read.examples:
        level = dict(zip(example.candidates, example.levels, strict=True))
        assert level == expected[example.prompt][1]
        for prompt, chosen, rejected in rows:  # every row's preferences hold
            if prompt == example.prompt:
                said = [*itertools.combinations(chosen, 2), *itertools.product(chosen, rejected)]
                assert all(level[better] < level[worse] for better, worse in said)
    assert sorted(c.prompt for c in read.dropped) == sorted(conflicts)
    assert [(c.lines, c.rows) for c in sorted(read.dropped, key=lambda c: c.prompt)] == [
        conflicts[p][1:] for p in sorted(conflicts)
    ]
    assert read.counts()["dropped_rows"] == sum(e[2] for e in conflicts.values())
    assert read.counts()["rows"] == len(rows)


def test_three_rows_sharing_a_chosen_answer_are_one_context():
    rows = [PairwiseRow("p", ("a",), (r,), line) for line, r in enumerate("bcd", start=1)]
    (context,), conflicts = merge(rows)
    assert conflicts == []
    assert (context.candidates, context.levels, context.lines) == (
        ["a", "b", "c", "d"],
        [1, 2, 2, 2],
        [1, 2, 3],
    )


def test_chains_give_levels_and_cycles_give_the_lines_on_them():
    chain = [PairwiseRow("p", ("a",), ("b",), 1), PairwiseRow("p", ("b",), ("c",), 2)]
    (context,), _ = merge(chain)
    assert context.levels == [1, 2, 3]
    # lines 1-3 form a cycle a > b > c > a; line 4 (a > d) is off it, line 5 is another prompt
    rows = [
        PairwiseRow("p", ("a",), ("b",), 1),
        PairwiseRow("p", ("b",), ("c",), 2),
        PairwiseRow("p", ("c",), ("a",), 3),
        PairwiseRow("p", ("a",), ("d",), 4),
        PairwiseRow("q", ("x", "y"), ("z",), 5),
    ]
    (context,), (conflict,) = merge(rows)
    assert (context.prompt, context.levels) == ("q", [1, 2, 3])
    assert (conflict.lines, conflict.answers, conflict.rows) == ([1, 2, 3], ["a", "b", "c"], 4)
    (conflict,) = merge([PairwiseRow("p", ("a",), ("a", "b"), 7)])[1]
    assert (conflict.lines, conflict.answers) == ([7], ["a"])


def test_conversational_rows_render_their_messages():
    user = [{"role": "user", "content": "Liked Dune. Next?"}]
    row = {
        "prompt": user,
        "chosen": [{"role": "assistant", "content": "Emma"}],
        "rejected": [{"role": "assistant", "content": "Kim"}],
    }
    assert trl_fields(row, "f, line 1") == ("Liked Dune. Next?", ["Emma"], ["Kim"])
    # implicit prompt: the messages both conversations start with
    system = [{"role": "system", "content": "You recommend books."}]
    implicit = {
        "chosen": system + user + row["chosen"],
        "rejected": system + user + row["rejected"],
    }
    prompt = "system: You recommend books.\nuser: Liked Dune. Next?"
    assert render_messages(system + user) == prompt
    assert trl_fields(implicit, "f, line 2") == (prompt, ["Emma"], ["Kim"])
