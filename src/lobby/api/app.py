"""HTTP API routes (SPEC §5, §6, §19): read the registry, never the broker.

Hot answers are bytes from the registry's cache, handed to Starlette as they are. In
the daemon the hot GETs never get here: `lobby.api.fast` answers them first, with the
same bytes, and builds this app only for what it does not answer. These routes still
describe them in the OpenAPI document and serve them when this app is used alone.
Everything the Go daemon answered as plain text stays plain text; JSON is indented
by two spaces and ends with a newline, like Go's JSONPretty.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from lobby import __version__
from lobby.answer import Slices
from lobby.api import docs, events, ops, ui
from lobby.api._responses import JSON_TYPE, json_response
from lobby.api._schema import CheckModel, DiscoveryModel, TargetGroupModel
from lobby.api.answers import Body, Node, discoveries_answer, resolve_answer
from lobby.api.auth import MAX_BODY, Guard
from lobby.feed import ChangeFeed
from lobby.model import LabelError, parse_label_body, pretty
from lobby.prometheus import PrometheusSD

log = logging.getLogger("lobby.api")


async def read_limited(request: Request, limit: int = MAX_BODY) -> bytes:
    """The body, or 413 once it passes `limit` (chunked bodies have no length).

    A client that goes away mid-body (or is cut at a limit) gets a 400 nobody reads,
    instead of a ClientDisconnect traceback in the log.
    """
    chunks = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPException(413, "request body over 1 MiB")
            chunks.append(chunk)
    except ClientDisconnect:
        raise HTTPException(400, "client disconnected before the end of the body") from None
    return b"".join(chunks)


async def _labels_from(request: Request) -> list[str]:
    body = await read_limited(request)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPException(400, "request body is not valid UTF-8") from None
    try:
        return parse_label_body(text)
    except LabelError as exc:
        raise HTTPException(400, str(exc)) from None


def _response(answer: Body) -> Response:
    """The same bytes as the fast path's plain answer (`lobby.api.fast`)."""
    if isinstance(answer, Slices):
        return StreamingResponse(answer.chunks(), media_type=JSON_TYPE)
    return json_response(answer if isinstance(answer, bytes) else answer.body)


def _plain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = exc.headers
    if exc.status_code == 405:
        # Starlette names the methods of the first route on the path only
        headers = {**(headers or {}), "Allow": ", ".join(_methods_of(request))}
    return PlainTextResponse(f"{exc.detail}\n", status_code=exc.status_code, headers=headers)


def _methods_of(request: Request) -> list[str]:
    """Every method some route answers on this path, in the order they were declared."""
    methods: list[str] = []
    for route in request.app.routes:
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(request.url.path):
            methods += [m for m in sorted(getattr(route, "methods", ())) if m not in methods]
    return methods


def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "path"))
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return PlainTextResponse("; ".join(parts) + "\n", status_code=400)


_DISCOVERIES_DOC = {
    200: {"description": "discoveries sorted by hostname", "model": list[DiscoveryModel]},
}
LABELS_BODY = {
    "requestBody": {
        "description": "one label per line; blank lines are ignored",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
}
_PLAIN_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "invalid request", "content": {"text/plain": {}}},
}


_DENIED_DOC = {
    "description": "missing or wrong `Authorization: Token <TOKEN>` header",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"message": {"type": "string"}},
                "required": ["message"],
            }
        }
    },
}


def _document_guard(app: FastAPI, token: bool, public: Callable[[str], bool]) -> None:
    """Make the OpenAPI document tell what the app really answers.

    Validation errors are 400 text/plain here, never FastAPI's 422 JSON; and with a
    token, every operation may answer 403 (found by fuzzing the API with schemathesis).
    """
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = original()
        for path, operations in schema.get("paths", {}).items():
            for method, op in operations.items():
                responses = op.setdefault("responses", {})
                if responses.pop("422", None) is not None:
                    responses.setdefault("400", copy.deepcopy(_PLAIN_ERRORS[400]))
                if token and method == "get" and public(path):
                    op["security"] = []  # needs no token (the health check)
                elif token:
                    responses["403"] = copy.deepcopy(_DENIED_DOC)
        if token:
            schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
            schemes["token"] = {
                "type": "apiKey",
                "in": "header",
                "name": "Authorization",
                "description": "`Token <TOKEN>`",
            }
            schema["security"] = [{"token": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(
    node: Node,
    token: str = "",
    feed: ChangeFeed | None = None,
    *,
    node_exporter_port: int = 9100,
    read_token: str = "",
    checks: Callable[[], list[dict[str, Any]]] | None = None,
    metrics: ops.Metrics | None = None,
    prometheus: PrometheusSD | None = None,
) -> Any:
    """The ASGI app: FastAPI routes behind the token guard.

    With a change `feed`, every GET supports blocking queries and `/v1/events` streams
    changes. `checks` reports the health checks (`lobby.checks.Checks.report`); with
    `metrics`, /metrics serves them and every request is counted. `prometheus`: the
    fast path's Prometheus SD answers, shared so that their kept parts are kept once.
    """
    app = FastAPI(
        title="lobbyd",
        version=__version__,
        description="Which servers exist and what runs where: discovery packets by label.",
        docs_url=None,  # FastAPI's pages load their assets from a CDN: lobby.api.docs
        redoc_url=None,
    )
    app.add_exception_handler(HTTPException, _plain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)

    async def discoveries(
        labels: Annotated[
            str | None, Query(description="comma-separated labels; any must match")
        ] = None,
        prefixes: Annotated[
            str | None, Query(description="comma-separated label prefixes; any must match")
        ] = None,
    ) -> Response:
        prepared = discoveries_answer(node.answers, labels, prefixes)
        assert prepared is not None
        return _response(prepared())

    for path in ("/", "/v1/discoveries"):
        app.add_api_route(
            path,
            discoveries,
            methods=["GET"],
            responses=_DISCOVERIES_DOC,  # type: ignore[arg-type]
            summary="all live discoveries, optionally filtered"
            + (" (same as /v1/discoveries)" if path == "/" else ""),
            operation_id="discoveries_root" if path == "/" else "discoveries",
        )

    @app.get(
        "/v1/discovery",
        responses={200: {"description": "this node's packet", "model": DiscoveryModel}},
        summary="this node's own discovery packet",
    )
    async def discovery() -> Response:
        return json_response(pretty(node.own_discovery().to_dict()))

    @app.get(
        "/v1/resolve",
        responses={
            200: {"description": "hostnames", "model": list[str]},
            **_PLAIN_ERRORS,
        },
        summary="hostnames of the nodes that carry a label",
    )
    async def resolve(
        label: Annotated[str | None, Query(description="the exact label")] = None,
    ) -> Response:
        if not label:
            raise HTTPException(400, "query parameter label is required")
        prepared = resolve_answer(node.answers, label)
        assert prepared is not None
        return _response(prepared())

    async def change_labels(
        request: Request, apply: Callable[[list[str]], Awaitable[None]]
    ) -> Response:
        labels = await _labels_from(request)
        try:
            await apply(labels)
        except LabelError as exc:
            raise HTTPException(400, str(exc)) from None
        except OSError as exc:
            log.error("cannot write runtime labels: %s", exc)
            raise HTTPException(500, f"cannot write runtime labels: {exc}") from None
        return PlainTextResponse("OK")

    label_responses: dict[int | str, dict[str, Any]] = {
        200: {"description": "OK", "content": {"text/plain": {}}},
        413: {"description": "body over 1 MiB", "content": {"text/plain": {}}},
        500: {"description": "runtime label file not writable", "content": {"text/plain": {}}},
        **_PLAIN_ERRORS,
    }

    @app.post(
        "/v1/labels",
        response_class=PlainTextResponse,
        responses=label_responses,
        openapi_extra=LABELS_BODY,
        summary="add runtime labels and announce them at once",
    )
    async def add_labels(request: Request) -> Response:
        return await change_labels(request, node.add_labels)

    @app.delete(
        "/v1/labels",
        response_class=PlainTextResponse,
        responses=label_responses,
        openapi_extra=LABELS_BODY,
        summary="remove runtime labels and announce at once",
    )
    async def delete_labels(request: Request) -> Response:
        return await change_labels(request, node.delete_labels)

    @app.get("/v1/stats", summary="counters: nodes, index, packets, drops, broker link")
    async def stats() -> Response:
        return json_response(pretty(node.stats()))

    @app.get(
        "/v1/checks",
        responses={200: {"description": "this node's health checks", "model": list[CheckModel]}},
        summary="this node's health checks and the labels they govern",
    )
    async def health_checks() -> Response:
        return json_response(pretty(checks() if checks is not None else []))

    sd = prometheus if prometheus is not None else PrometheusSD(node.answers, node_exporter_port)
    ui.add_routes(app)

    @app.get(
        "/v1/prometheus/{name}",
        responses={200: {"description": "HTTP SD target groups", "model": list[TargetGroupModel]}},
        summary="Prometheus HTTP service discovery for a service",
    )
    async def prometheus_targets(
        name: Annotated[str, Path(description="the service: labels prometheus:NAME[:...]")],
    ) -> Response:
        return _response(sd.cached(name))

    ops.add_routes(app, node.health, metrics)
    docs.add_routes(app)
    inner: Any = app
    if feed is not None:
        events.add_routes(app, feed)
        events.document_blocking(app)
        inner = events.Blocking(app, feed)

    def public(path: str) -> bool:
        return ops.is_public(path) or docs.is_public(path)

    protected = bool(token or read_token)
    _document_guard(app, protected, public)
    guarded = Guard(inner, token, read_token, public)
    return guarded if metrics is None else ops.HttpMetrics(guarded, metrics, app.routes)
