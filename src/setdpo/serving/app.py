"""The HTTP layer of `setdpo serve`: FastAPI routes over `RankingService` and `Batcher`.

Routes: ``POST /v1/rank``, ``POST /v1/recommend``, ``GET /v1/model``, ``GET /health``;
OpenAPI at ``/docs`` (`setdpo.serving.docs`). Every error is JSON, ``{"error": {"status", "field", "message"}}``,
``field`` naming what is wrong (``history[2].item_id``, ``candidates``, ``body``); no stack
trace is ever sent. With an API key every route but ``/health`` and the docs needs
``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import sys
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictInt,
    StringConstraints,
    Tag,
    field_validator,
)
from starlette.exceptions import HTTPException as StarletteHTTPException

from setdpo.serving.batching import Admitted, Batcher, Overloaded
from setdpo.serving.docs import REQUEST_ERRORS, add_docs, is_open, responses
from setdpo.serving.service import (
    API_KEY_ENV,
    LOCAL_HOSTS,
    RankingService,
    RequestError,
    ServeConfig,
    ranking,
)

log = logging.getLogger("setdpo.serve")
_FIELDS = {"history", "candidates", "top", "item_id"}

MAX_TOP = 1000  # the most entries a ranking returns, on both routes


def _no_nul(text: str) -> str:
    if "\x00" in text:
        raise ValueError("NUL characters are not allowed")
    return text


NoNul = AfterValidator(_no_nul)
Title = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500), NoNul
]


class ItemId(BaseModel):
    """A catalog item by its id (``items.json``'s ``item_id``)."""

    model_config = ConfigDict(extra="forbid")
    item_id: Annotated[str, StringConstraints(min_length=1, max_length=100), NoNul] | StrictInt

    @field_validator("item_id", mode="before")
    @classmethod
    def _typed(cls, value: Any) -> Any:
        if not isinstance(value, str | int) or isinstance(value, bool):
            kind = "null" if value is None else type(value).__name__
            raise ValueError(f"an item id is a string or an integer, got {kind}")
        return value


# A title or an {"item_id"} object, told apart by the JSON type: an object's errors name its
# item_id, not "should be a valid string" from the title branch.
Item = Annotated[
    Annotated[Title, Tag("title")] | Annotated[ItemId, Tag("item")],
    Discriminator(lambda v: "item" if isinstance(v, dict | ItemId) else "title"),
]
# Strict: true and "2" are not integers; capped as on every route.
Top = Annotated[StrictInt, Field(ge=1, le=MAX_TOP)]


class RankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    history: list[Item] = Field(min_length=1, description="titles or {item_id}, oldest first")
    candidates: list[Item] = Field(min_length=1, description="titles or {item_id} to rank")
    top: Top | None = Field(None, description="how many to return (default: all)")


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    history: list[Item] = Field(min_length=1, description="titles or {item_id}, oldest first")
    top: Top = Field(10, description="how many catalog items to return")


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def _disconnected(receive: Callable[[], Awaitable[dict]]) -> None:
    """Return once the client disconnects (the body was read: every later message is that)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def error_response(status: int, field: str, message: str, **headers: str) -> JSONResponse:
    body = {"error": {"status": status, "field": field, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers or None)


def _field(loc: tuple[Any, ...], kind: str) -> str:
    """``("body", "history", 2, "ItemId", "item_id")`` -> ``history[2].item_id`` (union
    member tags dropped)."""
    path = ""
    parts = list(loc[1:]) if loc and loc[0] == "body" else list(loc)
    for i, part in enumerate(parts):
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in _FIELDS or (kind == "extra_forbidden" and i == len(parts) - 1):
            path += f".{part}" if path else str(part)
    return path or "body"


def create_app(service: RankingService) -> FastAPI:
    """The FastAPI application serving ``service``; its batcher runs inside the app's loop."""
    config = service.config
    batcher = Batcher(service.score, config.max_batch, config.batch_window_ms / 1000,
                      config.max_queue)  # fmt: skip

    # Prompts are rendered and tokenized off the event loop (a catalog takes ~0.2 s), in one
    # thread: a tokenizer is not to be used by two threads at once.
    tokenizing = ThreadPoolExecutor(1, thread_name_prefix="setdpo-tokenize")

    async def build(method: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(tokenizing, method, *args)

    async def scored(http: Request, request: Admitted, job: Any) -> list[float]:
        """The job's scores from the batcher; once the client disconnects, the request is
        cancelled (dropped before it is scored, or between the chunks of a catalog)."""
        scoring = asyncio.ensure_future(batcher.submit(request, job))
        leaving = asyncio.ensure_future(_disconnected(http.receive))
        try:
            await asyncio.wait({scoring, leaving}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            leaving.cancel()
        if not scoring.done():
            scoring.cancel()
            raise ClientGone()
        return scoring.result()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        # Admission control needs the speed from the first request on (unknown, a cold server
        # admitted a whole burst and answered it 504): the time of one small ranking.
        warm_up = await build(service.warm_up_job)
        await batcher.calibrate(warm_up, len(warm_up.titles))
        yield
        await batcher.stop()
        tokenizing.shutdown(wait=True)

    app = FastAPI(
        title="setdpo ranking service",
        description="Rank candidates and recommend catalog items with a setdpo model.",
        lifespan=lifespan,
        docs_url=None,  # add_docs: local assets
        redoc_url=None,
    )
    add_docs(app, bool(config.api_key))
    app.state.batcher, app.state.service = batcher, service
    _add_error_handlers(app)
    app.add_middleware(GuardMiddleware, api_key=config.api_key, max_body=config.max_body_bytes,
                       body_timeout_s=config.body_timeout_s)  # fmt: skip

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Up; the requests scored, dropped (client gone or deadline passed) and refused (503)
        since the start, and those queued and being scored now."""
        stats = batcher.stats
        counts = {"scored": stats.scored, "dropped": stats.dropped, "refused": stats.refused,
                  "queued": batcher.queued, "scoring": batcher.running}  # fmt: skip
        return {"status": "ok", "requests": counts}

    @app.get("/v1/model", responses=responses(401, 500))
    async def model() -> dict[str, Any]:
        stats = batcher.stats
        return service.describe() | {"batches": stats.__dict__.copy()}

    @app.post("/v1/rank", responses=responses(*REQUEST_ERRORS))
    async def rank(request: RankRequest, http: Request) -> dict[str, Any]:
        """The candidates ordered by score (the summed log-prob of each title after the
        prompt training used), each with its log-prob."""
        history = service.titles_of("history", request.history)
        candidates = service.titles_of("candidates", request.candidates)
        service.check_candidates(candidates)
        # admitted or refused (503) as it arrives: a refusal waits for no tokenizing
        with batcher.admit(len(candidates), config.timeout_s) as admitted:
            job = await build(service.rank_job, history, candidates)
            scores = await scored(http, admitted, job)
        return {"ranking": ranking(job, scores, request.top), "n_candidates": len(job.titles)}

    @app.post("/v1/recommend", responses=responses(*REQUEST_ERRORS, 409))
    async def recommend(request: RecommendRequest, http: Request) -> dict[str, Any]:
        """The top of the catalog for the history (history items excluded), open prompt."""
        history = service.titles_of("history", request.history)
        # the catalog bounds the cost (the history's titles are left out of the ranking)
        with batcher.admit(len(service.catalog_titles), config.timeout_s) as admitted:
            job = await build(service.recommend_job, history)
            scores = await scored(http, admitted, job)
        return {"ranking": ranking(job, scores, request.top), "n_ranked": len(job.titles)}

    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": ("body",), "type": "", "msg": "invalid"}
        if first.get("type") == "json_invalid":
            return error_response(400, "body", f"malformed JSON: {first.get('msg')}")
        kind = request.headers.get("content-type", "")
        if tuple(first.get("loc", ())) == ("body",) and "json" not in kind:
            message = (
                f"the body must be JSON sent with 'Content-Type: application/json' (got {kind!r})"
            )
            return error_response(415, "Content-Type", message)
        field = _field(tuple(first.get("loc", ())), first.get("type", ""))
        message = str(first.get("msg")).removeprefix("Value error, ")
        return error_response(422, field, f"{field}: {message}")

    @app.exception_handler(RequestError)
    async def bad_request(request: Request, exc: RequestError) -> JSONResponse:
        return error_response(exc.status, exc.field, f"{exc.field}: {exc.message}")

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        return error_response(503, "", str(exc), **{"Retry-After": str(exc.retry_after)})

    @app.exception_handler(ClientGone)
    async def gone(request: Request, exc: ClientGone) -> JSONResponse:
        return error_response(499, "", "the client closed the connection")  # read by no one

    @app.exception_handler(TimeoutError)
    async def timed_out(request: Request, exc: TimeoutError) -> JSONResponse:
        return error_response(504, "", "the request was not scored within the timeout")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # 400: FastAPI could not read the body (not UTF-8, say); 404, 405: the route.
        field = "body" if exc.status_code == 400 else ""
        return error_response(exc.status_code, field, str(exc.detail))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("error while answering %s", request.url.path)
        return error_response(500, "", f"internal error ({type(exc).__name__}); see the log")


class GuardMiddleware:
    """Checks the API key (all paths but `OPEN_PATHS`) and the body size (413) before the
    app sees a request; a body under the limit is read whole, within ``body_timeout_s``
    (else 408: a client that announces more than it sends does not hold its connection),
    and replayed to the app."""

    def __init__(self, app: Any, api_key: str | None, max_body: int, body_timeout_s: float) -> None:
        self.app, self.api_key, self.max_body = app, api_key, max_body
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.api_key and not is_open(scope["path"]) and not self._authorized(headers):
            message = "missing or wrong API key: send 'Authorization: Bearer <key>'"
            response = error_response(
                401, "Authorization", message, **{"WWW-Authenticate": "Bearer"}
            )
            return await response(scope, receive, send)
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            return await self._too_large(scope, receive, send)
        try:
            async with asyncio.timeout(self.body_timeout_s):
                body = await self._read_body(receive)
        except TimeoutError:
            message = f"the request body was not received within {self.body_timeout_s:g} s"
            return await error_response(408, "body", message)(scope, receive, send)
        if body is None:
            return  # the client went away
        if len(body) > self.max_body:
            return await self._too_large(scope, receive, send)
        return await self.app(scope, _replay(body, receive), send)

    async def _read_body(self, receive: Callable) -> bytes | None:
        """The whole body (None: the client left), or its first bytes over the limit."""
        body, more = b"", True
        while more and len(body) <= self.max_body:
            message = await receive()
            if message["type"] != "http.request":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
        return body

    def _authorized(self, headers: dict[str, str]) -> bool:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        expected = (self.api_key or "").encode()
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected)

    async def _too_large(self, scope: dict, receive: Callable, send: Callable) -> None:
        message = f"the request body is over the limit of {self.max_body} bytes"
        await error_response(413, "body", message)(scope, receive, send)


def _replay(body: bytes, receive: Callable) -> Callable[[], Awaitable[dict]]:
    sent = False

    async def replayed() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def exposure_warning(config: ServeConfig) -> str | None:
    """What to warn about when the server is reachable from other machines without a key."""
    if config.api_key or config.host in LOCAL_HOSTS:
        return None
    return (
        f"serving on {config.host} without an API key: anyone who reaches this address can "
        f"use the model; pass --api-key or set {API_KEY_ENV}"
    )


def serve(config: ServeConfig) -> None:
    """Load the model and answer HTTP on ``config.host:config.port`` until interrupted."""
    import uvicorn

    warning = exposure_warning(config)
    if warning:
        print(f"setdpo serve: warning: {warning}", file=sys.stderr, flush=True)
    app = create_app(RankingService(config))
    print(f"setdpo serve: {config.model} on http://{config.host}:{config.port} (docs at /docs)",
          flush=True)  # fmt: skip
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")
