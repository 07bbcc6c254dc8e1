"""Pairwise preference rows (TRL, LlamaFactory) merged into set-wise contexts.

A row says, for one prompt: its chosen answers, a ranking best first, are each preferred to
the next, and the last chosen is preferred to every rejected answer (rejected answers are not
ordered among themselves). Rows are grouped by the exact prompt text; a group's answers are
its candidates (each once, in order of first appearance) and the "preferred over" graph of
its rows gives their levels: an answer's level is 1 + the number of preferences on the
longest chain that ends at it (level 1: no answer is preferred to it). Every row's
preference holds in the levels (a > b gives level(a) < level(b)); answers that no chain
orders may get different levels. Three rows "a > b", "a > c", "a > d" give one context: a at
level 1, b, c and d at level 2; "a > b" and "b > c" give a, b, c at levels 1, 2, 3.

A group whose preferences go round a cycle (a > b in one row, b > a in another, or one
answer both chosen and rejected in a row) is a conflict: `merge` returns it, with the lines
of the rows whose preferences lie on the cycle, instead of a context.

Conversational rows hold messages (``{"role", "content"}``); `render_messages` turns them
into text: one message is its content, several are ``role: content`` lines.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from setdpo.errors import InputError

Answer = str | list[dict[str, str]]  # a text, or one conversation's messages
# How much of a conflict the error message shows
SHOWN_CONFLICTS, SHOWN_LINES, SHOWN_CHARS = 5, 10, 40


@dataclass(frozen=True)
class PairwiseRow:
    """One row: ``chosen`` (a ranking, best first) over each of ``rejected``, at ``line``."""

    prompt: str
    chosen: tuple[str, ...]
    rejected: tuple[str, ...]
    line: int
    context_id: str | None = None

    def edges(self) -> list[tuple[str, str]]:
        """(preferred, other) pairs whose transitive closure is everything the row says."""
        chain = [*zip(self.chosen, self.chosen[1:], strict=False)]
        return chain + [(self.chosen[-1], r) for r in self.rejected]


@dataclass
class Context:
    """A merged group: its candidates (first appearance order), levels and rows' lines."""

    prompt: str
    candidates: list[str]
    levels: list[int]
    lines: list[int]
    context_id: str | None


@dataclass
class Conflict:
    """A group whose rows contradict each other: the lines of the rows whose preferences
    lie on a cycle, the answers on it, and the group's number of rows."""

    prompt: str
    lines: list[int]
    answers: list[str]
    rows: int


def ranked_levels(n_chosen: int, n_rejected: int) -> list[int]:
    """The levels one row gives chosen + rejected: 1..n_chosen, then n_chosen + 1."""
    return [*range(1, n_chosen + 1), *[n_chosen + 1] * n_rejected]


def merge(rows: Iterable[PairwiseRow]) -> tuple[list[Context], list[Conflict]]:
    """Group rows by prompt (groups in order of their first row); each group becomes a
    `Context` or, when its preferences go round a cycle, a `Conflict`."""
    groups: dict[str, list[PairwiseRow]] = defaultdict(list)
    for row in rows:
        groups[row.prompt].append(row)
    contexts: list[Context] = []
    conflicts: list[Conflict] = []
    for prompt, group in groups.items():
        merged = _merge_group(prompt, group)
        (contexts if isinstance(merged, Context) else conflicts).append(merged)
    return contexts, conflicts


def _merge_group(prompt: str, rows: list[PairwiseRow]) -> Context | Conflict:
    answers = list(dict.fromkeys(a for r in rows for a in (*r.chosen, *r.rejected)))
    edges = [(u, v, r.line) for r in rows for u, v in r.edges()]
    after: dict[str, list[str]] = {a: [] for a in answers}
    for u, v, _ in edges:
        after[u].append(v)
    components = _components(answers, after)
    component = {a: i for i, members in enumerate(components) for a in members}
    # an edge lies on a cycle iff both its ends are in one component (a self-loop included)
    cyclic = [(u, v, line) for u, v, line in edges if component[u] == component[v]]
    if cyclic:
        return Conflict(
            prompt,
            lines=sorted({line for _, _, line in cyclic}),
            answers=list(dict.fromkeys(a for u, v, _ in cyclic for a in (u, v))),
            rows=len(rows),
        )
    before: dict[str, list[str]] = {a: [] for a in answers}
    for u, v, _ in edges:
        before[v].append(u)
    level: dict[str, int] = {}
    # Tarjan emits a component after every component it reaches: reversed, the (single-answer)
    # components come in topological order, each after everything preferred to it
    for (answer,) in reversed(components):
        level[answer] = 1 + max((level[u] for u in before[answer]), default=0)
    ids = {r.context_id for r in rows}
    return Context(
        prompt,
        candidates=answers,
        levels=[level[a] for a in answers],
        lines=[r.line for r in rows],
        context_id=ids.pop() if len(ids) == 1 else None,
    )


def _components(nodes: list[str], after: dict[str, list[str]]) -> list[list[str]]:
    """Strongly connected components (Tarjan's algorithm, without recursion), each listed
    after every component it reaches."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)

    for root in nodes:
        if root in index:
            continue
        visit(root)
        work = [(root, iter(after[root]))]
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    visit(child)
                    work.append((child, iter(after[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                members = []
                while not members or members[-1] != node:
                    members.append(stack.pop())
                    on_stack.discard(members[-1])
                found.append(members)
    return found


def _short(text: str) -> str:
    """``text`` quoted, cut to SHOWN_CHARS characters."""
    return repr(text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "...")


def shown_lines(lines: list[int]) -> str:
    """ "1, 4, 9" (the first SHOWN_LINES, then how many more)."""
    shown = ", ".join(map(str, lines[:SHOWN_LINES]))
    return shown + (f" and {len(lines) - SHOWN_LINES} more" if len(lines) > SHOWN_LINES else "")


def conflict_message(path: Path, conflicts: list[Conflict]) -> str:
    """One line naming each conflicting prompt (the first few), the lines of the rows on
    its cycle and the answers on it."""
    shown = "; ".join(
        f"prompt {_short(c.prompt)}: lines {shown_lines(c.lines)} put "
        f"{', '.join(map(_short, c.answers))} in a cycle"
        for c in conflicts[:SHOWN_CONFLICTS]
    )
    more = len(conflicts) - SHOWN_CONFLICTS
    return (
        f"{path}: {len(conflicts)} prompts whose rows contradict each other (an answer both "
        f"above and below another): {shown}"
        + (f"; and {more} more" if more > 0 else "")
        + "; pass --on-conflict drop to leave these prompts out"
    )


def render_messages(messages: list[dict[str, str]]) -> str:
    """One message: its content; several: ``role: content`` lines."""
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _messages(value: Any, where: str, key: str) -> list[dict[str, str]]:
    for i, message in enumerate(value):
        if (
            not isinstance(message, dict)
            or not isinstance(message.get("role"), str)
            or not isinstance(message.get("content"), str)
        ):
            raise InputError(
                f"{where}: {key!r} message {i} must be an object with string 'role' and 'content'"
            )
    return value


def _is_conversation(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict)


def answers_of(value: Any, where: str, key: str) -> list[Answer]:
    """A ``chosen`` / ``rejected`` value as its answers: a string, a list of messages (one
    answer), or a list of those (a ranking, best first)."""
    items = [value] if isinstance(value, str) or _is_conversation(value) else value
    if not isinstance(items, list) or not all(
        isinstance(item, str) or _is_conversation(item) for item in items
    ):
        raise InputError(
            f"{where}: {key!r} must be a string, a list of messages, or a list of those"
        )
    return [item if isinstance(item, str) else _messages(item, where, key) for item in items]


def _texts(chosen: list[Answer], rejected: list[Answer], where: str) -> tuple[list[str], list[str]]:
    if not chosen:
        raise InputError(f"{where}: 'chosen' is empty")
    return [_text(a, where, "chosen") for a in chosen], [
        _text(a, where, "rejected") for a in rejected
    ]


def _text(value: Answer, where: str, key: str) -> str:
    text = value if isinstance(value, str) else render_messages(value)
    if not text.strip():
        raise InputError(f"{where}: {key!r} has an empty text")
    return text


def _implicit_prompt(
    chosen: list[Answer], rejected: list[Answer], where: str
) -> tuple[list[dict[str, str]], list[Answer], list[Answer]]:
    """TRL's implicit prompt: the messages every conversation of the row starts with."""
    answers = chosen + rejected
    if not all(isinstance(a, list) for a in answers):
        raise InputError(
            f"{where}: missing 'prompt' (rows without one must hold whole conversations)"
        )
    shared = 0
    while all(len(a) > shared + 1 and a[shared] == answers[0][shared] for a in answers):
        shared += 1
    if shared == 0:
        raise InputError(f"{where}: no 'prompt' and the conversations share no first message")
    return (
        answers[0][:shared],
        [a[shared:] for a in chosen],
        [a[shared:] for a in rejected],
    )


def trl_fields(row: dict[str, Any], where: str) -> tuple[str, list[str], list[str]]:
    """A TRL row's prompt, chosen (a ranking) and rejected texts: standard rows (strings),
    conversational ones (messages) and conversational ones with an implicit prompt."""
    if "chosen" not in row or "rejected" not in row:
        raise InputError(f"{where}: missing 'chosen' or 'rejected'")
    chosen = answers_of(row["chosen"], where, "chosen")
    rejected = answers_of(row["rejected"], where, "rejected")
    if "prompt" in row:
        prompt = row["prompt"]
        if not isinstance(prompt, str) and not _is_conversation(prompt):
            raise InputError(f"{where}: 'prompt' must be a string or a list of messages")
        if not isinstance(prompt, str):
            prompt = _messages(prompt, where, "prompt")
    else:
        prompt, chosen, rejected = _implicit_prompt(chosen, rejected, where)
    return (_text(prompt, where, "prompt"), *_texts(chosen, rejected, where))


def llamafactory_fields(record: dict[str, Any], where: str) -> tuple[str, list[str], list[str]]:
    """A LlamaFactory (alpaca layout) preference record's prompt, chosen and rejected texts.

    The prompt is ``instruction``, then a newline and ``input`` when that is not empty (as
    LlamaFactory joins them), after the optional ``system`` and ``history`` ([query,
    response] pairs) as messages; the answers are ``chosen`` / ``rejected`` or ``output``
    (a list, best first: the last is the rejected one).
    """
    fields = {"instruction": "", "input": "", "system": ""}
    for key in fields:
        value = record.get(key, "")
        if not isinstance(value, str):
            raise InputError(f"{where}: {key!r} must be a string")
        fields[key] = value
    if not fields["instruction"].strip():
        raise InputError(f"{where}: missing 'instruction'")
    history = record.get("history") or []
    if not isinstance(history, list) or not all(
        isinstance(turn, list) and len(turn) == 2 and all(isinstance(t, str) for t in turn)
        for turn in history
    ):
        raise InputError(f"{where}: 'history' must be a list of [query, response] pairs")
    query = "\n".join(text for text in (fields["instruction"], fields["input"]) if text)
    messages = [{"role": "system", "content": fields["system"]}] if fields["system"] else []
    for said, answered in history:
        messages += [{"role": "user", "content": said}, {"role": "assistant", "content": answered}]
    messages.append({"role": "user", "content": query})
    if ("output" in record) == ("chosen" in record or "rejected" in record):
        raise InputError(f"{where}: give either 'chosen' and 'rejected', or 'output'")
    if "output" in record:
        output = record["output"]
        if not isinstance(output, list) or len(output) < 2:
            raise InputError(f"{where}: 'output' must list at least two answers, best first")
        chosen, rejected = output[:-1], output[-1]
    elif "chosen" in record and "rejected" in record:
        chosen, rejected = record["chosen"], record["rejected"]
    else:
        raise InputError(f"{where}: missing 'chosen' or 'rejected'")
    return (
        render_messages(messages),
        *_texts(
            answers_of(chosen, where, "chosen"), answers_of(rejected, where, "rejected"), where
        ),
    )
