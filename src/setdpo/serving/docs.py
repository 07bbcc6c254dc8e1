"""The service's API documentation: ``/docs`` (Swagger UI) and ``/openapi.json``.

Swagger UI's assets are served by the server itself from the ``swagger-ui-bundle`` package
(part of ``setdpo[serve]``), so ``/docs`` renders without internet; without that package the
page loads them from a CDN, as FastAPI's default does. ``/docs``, its assets and
``/openapi.json`` are open without the API key (they hold no data): the schema declares the
bearer scheme, so Swagger's Authorize button takes the key, and every error status each route
answers (the JSON body of `ErrorResponse`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

DOCS, SCHEMA, ASSETS = "/docs", "/openapi.json", "/docs/assets"
OPEN_PATHS = ("/health", DOCS, SCHEMA)  # answered without the API key, as is ASSETS/*
BEARER = "bearer"

ERRORS = {
    400: "malformed JSON, or a body that is not UTF-8",
    401: "missing or wrong API key (`Authorization: Bearer <key>`)",
    408: "the request body was not received within `body_timeout_s`",
    409: "this model has no catalog to recommend from",
    413: "the body is over `max_body_bytes`",
    415: "the body is not sent as `application/json`",
    422: "a field is wrong: `field` names it (`history[2].item_id`)",
    500: "an internal error (the server's log has it)",
    503: "overloaded: the queue is full or the request cannot be scored within the timeout; "
    "retry after `Retry-After` seconds",
    504: "the request was not scored within `timeout_s`",
}
REQUEST_ERRORS = (400, 401, 408, 413, 415, 422, 500, 503, 504)


class ErrorDetail(BaseModel):
    status: int
    field: str
    message: str


class ErrorResponse(BaseModel):
    """Every error's body: ``{"error": {"status", "field", "message"}}``."""

    error: ErrorDetail


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route answering ``codes`` (their `ErrorResponse` bodies)."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        out[code] = {"model": ErrorResponse, "description": ERRORS[code]}
        if code == 503:
            retry = {"description": "seconds to wait", "schema": {"type": "integer"}}
            out[code]["headers"] = {"Retry-After": retry}
    return out


def is_open(path: str) -> bool:
    """Whether ``path`` is answered without the API key."""
    return path in OPEN_PATHS or path.startswith(ASSETS + "/")


def add_docs(app: FastAPI, api_key: bool) -> None:
    """``/docs`` with local assets when installed, and ``/openapi.json`` declaring the bearer
    scheme (on every route but ``/health`` when the server has a key)."""
    assets = _local_assets()
    if assets is not None:
        from fastapi.staticfiles import StaticFiles

        app.mount(ASSETS, StaticFiles(directory=assets), name="swagger-ui")
    urls = {}
    if assets is not None:
        urls = {
            "swagger_js_url": f"{ASSETS}/swagger-ui-bundle.js",
            "swagger_css_url": f"{ASSETS}/swagger-ui.css",
            "swagger_favicon_url": f"{ASSETS}/favicon-32x32.png",
        }

    @app.get(DOCS, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=SCHEMA, title=f"{app.title} - docs",
                                   swagger_ui_parameters={"validatorUrl": None},  # no badge call
                                   **urls)  # fmt: skip

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=app.routes)  # fmt: skip
            if api_key:
                schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
                schemes[BEARER] = {"type": "http", "scheme": "bearer"}
                for path, operations in schema["paths"].items():
                    for operation in operations.values():
                        operation["security"] = [] if is_open(path) else [{BEARER: []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _local_assets() -> str | None:
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    return str(swagger_ui_path)
