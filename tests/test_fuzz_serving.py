"""Fuzzing the HTTP request bodies of `setdpo serve`, in process (FastAPI's TestClient over
`create_app`): bodies of the wrong JSON types, missing or extra fields, huge lists, unicode,
truncated or non-JSON text, and wrong content types, sent to /v1/rank and /v1/recommend.

Every answer is 200 with a ranking or a 4xx JSON error (`{"error": {"status", "field",
"message"}}`); a 5xx or a traceback fails. Counts: `fuzz: ...` in pytest's summary.
The model is the tiny random Llama, exported by hand (`setdpo.json`, items.json).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from setdpo.model.tiny import build_tiny
from setdpo.serving.app import create_app
from setdpo.serving.info import EXPORT_FILE, EXPORT_VERSION
from setdpo.serving.service import RankingService, ServeConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TITLES = ["Heat (1995)", "Jaws (1975)", "Up (2009)", "Alien (1979)", "M (1931)", "Ran (1985)"]
MAX_BODY = 4096


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    folder = tmp_path_factory.mktemp("fuzz-export")
    model, tokenizer = build_tiny(TITLES)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    items = [{"item_id": str(i), "title": title} for i, title in enumerate(TITLES)]
    Path(folder, "items.json").write_text(json.dumps(items), "utf-8")
    info = {"setdpo_export": EXPORT_VERSION, "template": "listing", "domain": "movie",
            "catalog": "items.json", "max_prompt_length": None, "chat_template": False,
            "average": False, "base_model": "tiny", "objective": "sft", "data": None,
            "mode": None, "source": None, "run": "fuzz"}  # fmt: skip
    Path(folder, EXPORT_FILE).write_text(json.dumps(info), "utf-8")
    config = ServeConfig(model=str(folder), device="cpu", max_candidates=8,
                         max_prompt_tokens=300, max_body_bytes=MAX_BODY)  # fmt: skip
    with TestClient(create_app(RankingService(config))) as client:
        yield client


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
ITEM = st.one_of(
    *[st.sampled_from(TITLES)] * 6,
    st.text(max_size=12),
    st.builds(lambda i: {"item_id": i}, st.sampled_from(["0", "5", "99", "", " "]) | st.integers()),
    JSON,
)


@st.composite
def bodies(draw: st.DrawFn, route: str) -> Any:
    """A request body for `route` with 0..2 damages, sometimes not an object."""
    body: dict[str, Any] = {"history": draw(st.lists(ITEM, min_size=1, max_size=4))}
    if route == "/v1/rank":  # distinct titles, one of them perhaps anything
        candidates = draw(st.lists(st.sampled_from(TITLES), min_size=1, max_size=6, unique=True))
        at = draw(st.integers(0, 2 * len(candidates)))
        if at < len(candidates):
            candidates[at] = draw(ITEM)
        body["candidates"] = candidates
    if draw(st.booleans()):
        body["top"] = draw(st.integers(1, 10) | st.sampled_from([0, -1, 10**30, "3", 2.5, None]))
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from(["history", "candidates", "top", "extra", "item_id"]))
        op = draw(st.sampled_from(["remove", "replace", "huge"]))
        if op == "remove":
            body.pop(key, None)
        elif op == "replace":
            body[key] = draw(JSON)
        else:
            body[key] = [draw(st.sampled_from(TITLES))] * draw(st.sampled_from([9, 300, 5000]))
    return draw(st.sampled_from([body] * 6 + [[body], "text", 3, None]))


CONTENT_TYPES = ["application/json"] * 6 + ["text/plain", "", "application/x-www-form-urlencoded",
                                            "application/json; charset=latin-1"]  # fmt: skip


@FUZZ
@given(data=st.data())
def test_request_bodies(fuzz, client, data) -> None:
    route = data.draw(st.sampled_from(["/v1/rank", "/v1/recommend"]))
    body = data.draw(bodies(route))
    content = json.dumps(body).encode()
    content = data.draw(st.sampled_from([content] * 8 + [content[: len(content) // 2], b"",
                                                         b"\xff\xfe{", b"{'a': 1}"]))  # fmt: skip
    headers = {"content-type": data.draw(st.sampled_from(CONTENT_TYPES))}
    response = client.post(route, content=content, headers=headers)
    assert response.status_code == 200 or 400 <= response.status_code < 500, response.text
    answer = response.json()
    if response.status_code == 200:
        assert answer["ranking"] and all(entry["title"] for entry in answer["ranking"])
    else:
        error = answer["error"]
        assert error["status"] == response.status_code and error["field"] and error["message"]
    fuzz.count(f"serve {route} bodies", accepted=response.status_code == 200)


def test_a_body_that_is_not_utf8_is_a_400_naming_the_body(client) -> None:
    """Found by the fuzzing: FastAPI's own 400 came back with an empty field."""
    response = client.post(
        "/v1/rank", content=b"\xff\xfe{", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "body"
