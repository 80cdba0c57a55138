"""The HTTP API's route table (SPEC §5, §6, §14, §16, §19): every route once.

A `Route` says its method, path template, parameters, answer (the handler), its
documented responses and what stands in front of it; `lobby.api.dispatch` applies
that (token, body limit, blocking queries, gzip, metrics, access log) the same way to
every route, and `lobby.api.openapi` writes /openapi.json from this table.

Flags:

- `public`: needs no token (the health check, /docs and its assets, the dashboard's
  own files);
- `watcher`: stays open (the event stream): counted against API_MAX_WATCHERS;
- `body`: reads a request body (at most 1 MiB: 413 past it);
- `blocking`: a cluster read: `?index=N&wait=D` holds it (and makes it a watcher
  while held), every answer says `X-Lobby-Index`;
- `cluster`: a read of the whole cluster: on an agent (SPEC §20) a listener answers
  it (`lobby.api.relayed`);
- `gzip`: answers carry `Vary: Accept-Encoding`, and a client that accepts gzip gets
  the kept gzip copy of an answer of 1 KiB or more;
- `when`: the route exists only if the app has what it needs (/metrics without
  metrics, /v1/events without a change feed: 404);
- `documented`: in /openapi.json (the pages and their files are not).

A handler gets the app, the request and the path parameters, and returns a
`Response`, or a JSON body (bytes, `lobby.core.answer.Answer` or `Slices`) for the dispatch
to send with its headers; it raises `HttpError` for a plain-text error. A synchronous
handler whose answer is ready bytes is answered from the protocol's callback without
a task; an `async` one runs in a task.

Hot answers come from the answer cache through `lobby.api.answers` and
`lobby.view.prometheus.PrometheusSD`; everything the Go daemon answered as plain text stays
plain text; JSON is indented by two spaces and ends with a newline, like Go's
JSONPretty.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

from lobby.api import docs, ops, ui
from lobby.api.answers import Body, discoveries_answer, resolve_answer
from lobby.api.blocking import split_list
from lobby.api.events import stream
from lobby.api.http import HttpError, Request, Response
from lobby.core.model import LabelError, parse_label_body, pretty
from lobby.view.registry import make_view

if TYPE_CHECKING:
    from lobby.api.answers import Node
    from lobby.api.ops import Metrics
    from lobby.api.relayed import AgentSide
    from lobby.view.cache import Answers
    from lobby.view.feed import ChangeFeed
    from lobby.view.prometheus import PrometheusSD


class Context(Protocol):
    """What a handler reads of the dispatch that calls it (lobby.api.dispatch.Api): a
    protocol, so that the table does not import the dispatch that imports the table."""

    node: Node
    answers: Answers
    feed: ChangeFeed | None
    checks: Callable[[], list[dict[str, Any]]] | None
    metrics: Metrics | None
    prometheus: PrometheusSD
    agent: AgentSide | None  # on an agent (SPEC §20)

    @property
    def ui_assets(self) -> dict[str, Any]: ...

    def openapi(self) -> Response: ...


log = logging.getLogger("lobby.api")

Reply = Response | Body
Handler = Callable[["Context", Request, Mapping[str, str]], Reply | Awaitable[Reply]]


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter: where it is read (`query`, `path`, `header`), for the document;
    `choices` (a path parameter) admits only these values: others match no route."""

    name: str
    where: Literal["query", "path", "header"]
    description: str
    required: bool = False
    schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "string"})
    choices: frozenset[str] | None = None


@dataclass(frozen=True, slots=True, eq=False)
class Route:
    method: str
    path: str
    answer: Handler
    summary: str = ""
    params: tuple[Param, ...] = ()
    responses: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)
    public: bool = False
    watcher: bool = False
    body: bool = False
    blocking: bool = False
    gzip: bool = False
    cluster: bool = False
    when: Callable[[Context], bool] | None = None
    documented: bool = True
    operation_id: str = ""


# -- shapes of the answers, for the document ---------------------------------------

DISCOVERY: Final = {
    "title": "Discovery",  # a named schema of /openapi.json's components
    "type": "object",
    "description": "One node's discovery packet as the API returns it.",
    "properties": {
        "hostname": {"type": "string", "description": "the node's hostname"},
        "labels": {
            "type": "array",
            "items": {"type": "string"},
            "description": "sorted, unique labels",
        },
        "last_check": {
            "type": "integer",
            "description": "Unix time this daemon last heard the node",
        },
    },
    "required": ["hostname", "labels", "last_check"],
}
TARGET_GROUP: Final = {
    "title": "TargetGroup",
    "type": "object",
    "description": "One HTTP SD target group (keys as the Go daemon wrote them).",
    "properties": {
        "Targets": {
            "type": "array",
            "items": {"type": "string"},
            "description": "`host:port` addresses to scrape",
        },
        "Labels": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "description": "labels Prometheus puts on every target",
        },
    },
    "required": ["Targets", "Labels"],
}
_INT: Final = {"type": "integer"}
_INDEX: Final = {"type": "integer", "minimum": 0}
_NUMBER: Final = {"type": "number"}
_STR: Final = {"type": "string"}
CHECK: Final = {
    "title": "Check",
    "type": "object",
    "description": "One health check (SPEC §19) as GET /v1/checks returns it.",
    "properties": {
        "name": {**_STR, "description": "`LABELS=CHECK` as configured (a URL's password hidden)"},
        "check": {**_STR, "description": "tcp://HOST:PORT, http(s)://URL or exec:COMMAND"},
        "labels": {"type": "array", "items": _STR, "description": "the labels it governs"},
        "source": {**_STR, "description": "`CHECKS` or the path of CHECKS_FILE"},
        "state": {"enum": ["up", "down"], **_STR, "description": "up: its labels are announced"},
        "passes": {**_INT, "description": "passes in a row (0 after a failure)"},
        "failures": {**_INT, "description": "failures in a row (0 after a pass)"},
        "last_result": {
            "anyOf": [{**_STR, "enum": ["pass", "fail"]}, {"type": "null"}],
            "description": "null before the first run",
        },
        "last_detail": {
            **_STR,
            "description": "`connected to ...`, `HTTP 200 OK`, `exit status 1`, ...",
        },
        "last_output": {
            **_STR,
            "description": "the first 200 bytes of the output or answer body",
        },
        "last_run": {
            "anyOf": [_NUMBER, {"type": "null"}],
            "description": "Unix time of the last run",
        },
        "changed": {
            **_NUMBER,
            "description": "Unix time the state last changed (or the check started)",
        },
        "transitions": {**_INT, "description": "state changes since the check started"},
        "runs": {**_INT, "description": "runs since the check started"},
    },
    "required": [
        "name",
        "check",
        "labels",
        "source",
        "state",
        "passes",
        "failures",
        "last_result",
        "last_detail",
        "last_output",
        "last_run",
        "changed",
        "transitions",
        "runs",
    ],
}


def json_doc(description: str, schema: Mapping[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def text_doc(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/plain": {"schema": _STR}}}


def list_of(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": schema}


INVALID: Final = text_doc("invalid request")
LABELS_BODY: Final = {
    "description": "one label per line; blank lines are ignored",
    "content": {"text/plain": {"schema": _STR}},
}

# -- handlers ------------------------------------------------------------------------


def discoveries(api: Context, req: Request, args: Mapping[str, str]) -> Reply:
    answers = api.answers
    prepared = answers.queries.get(req.query)  # the query parsed once (Answers.query)
    if prepared is None:

        def prepare() -> Callable[[], Body]:
            query = req.params
            made = discoveries_answer(answers, query.get("labels"), query.get("prefixes"))
            assert made is not None
            return made

        prepared = answers.query(req.query, prepare)
    return prepared()


def discovery(api: Context, req: Request, args: Mapping[str, str]) -> Reply:
    return pretty(api.node.own_discovery().to_dict())


def resolve(api: Context, req: Request, args: Mapping[str, str]) -> Reply:
    answers = api.answers
    key = ("resolve", req.query)
    prepared = answers.queries.get(key)  # the query parsed once (Answers.query)
    if prepared is None:
        label = req.params.get("label")
        if not label:
            raise HttpError(400, "query parameter label is required")
        made = resolve_answer(answers, label)
        assert made is not None
        prepared = answers.query(key, lambda: made)
    return prepared()


def prometheus_targets(
    api: Context, req: Request, args: Mapping[str, str]
) -> Reply | Awaitable[Reply]:
    return api.prometheus.get(args["name"])  # a coroutine while a big answer is built


def _labels_of(req: Request) -> list[str]:
    try:
        text = req.body.decode("utf-8")
    except UnicodeDecodeError:
        raise HttpError(400, "request body is not valid UTF-8") from None
    try:
        return parse_label_body(text)
    except LabelError as exc:
        raise HttpError(400, str(exc)) from None


async def _change_labels(apply: Callable[[list[str]], Awaitable[None]], req: Request) -> Reply:
    labels = _labels_of(req)
    try:
        await apply(labels)
    except LabelError as exc:
        raise HttpError(400, str(exc)) from None
    except OSError as exc:
        log.error("cannot write runtime labels: %s", exc)
        raise HttpError(500, f"cannot write runtime labels: {exc}") from None
    body = b"OK"
    return Response(
        200,
        [(b"content-length", b"2"), (b"content-type", b"text/plain; charset=utf-8")],
        body,
    )


async def add_labels(api: Context, req: Request, args: Mapping[str, str]) -> Reply:
    return await _change_labels(api.node.add_labels, req)


async def delete_labels(api: Context, req: Request, args: Mapping[str, str]) -> Reply:
    return await _change_labels(api.node.delete_labels, req)


def stats(api: Context, req: Request, args: Mapping[str, str]) -> Reply:
    return pretty(api.node.stats())


def checks(api: Context, req: Request, args: Mapping[str, str]) -> Reply:
    return pretty(api.checks() if api.checks is not None else [])


def health(api: Context, req: Request, args: Mapping[str, str]) -> Reply:
    return ops.health_answer(api.node.health)


async def agent_health(api: Context, req: Request, args: Mapping[str, str]) -> Reply:
    """An agent's: its broker links, and whether a listener answers (SPEC §20)."""
    assert api.agent is not None
    ok, states = api.node.health()
    answering = await api.agent.probe()
    states = {**states, "listeners": "answering" if answering else "none answered"}
    return ops.health_answer(lambda: (ok and answering, states))


def metrics(api: Context, req: Request, args: Mapping[str, str]) -> Reply:
    assert api.metrics is not None
    return ops.metrics_answer(api.metrics, req.header(b"accept"))


def events(api: Context, req: Request, args: Mapping[str, str]) -> Reply:
    feed, ready = (api.agent.feed, api.agent.ready) if api.agent is not None else (api.feed, None)
    assert feed is not None
    query = req.params
    resume: int | None = None
    if "index" in query:
        text = query["index"]
        if not text.isascii() or not text.isdigit():
            raise HttpError(400, "index: expected a non-negative integer")
        resume = int(text)
    last_event_id = req.header(b"last-event-id")
    if last_event_id and last_event_id.isdigit():
        resume = int(last_event_id)
    view = make_view(split_list(query.get("labels")), split_list(query.get("prefixes")))
    return Response(
        200,
        [
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
            (b"content-type", b"text/event-stream; charset=utf-8"),
        ],
        stream(feed, view, resume, ready),
    )


def openapi(api: Context, req: Request, args: Mapping[str, str]) -> Reply:
    return api.openapi()


def docs_page(api: Context, req: Request, args: Mapping[str, str]) -> Reply:
    return docs.page()


def docs_asset(api: Context, req: Request, args: Mapping[str, str]) -> Reply:
    return docs.asset(args["name"], b"gzip" in (req.header(b"accept-encoding") or b""))


def ui_redirect(api: Context, req: Request, args: Mapping[str, str]) -> Reply:
    return Response(308, [(b"location", req.path.encode() + b"/"), (b"content-length", b"0")])


def ui_page(api: Context, req: Request, args: Mapping[str, str]) -> Reply:
    return ui.answer(api.ui_assets["index.html"], False, req.header(b"if-none-match"))


def ui_asset(api: Context, req: Request, args: Mapping[str, str]) -> Reply:
    asset = api.ui_assets.get(args["name"]) if args["name"] in ui.ASSETS else None
    if asset is None:
        raise HttpError(404, "Not Found")  # public: any file name under /ui/ tells nothing
    fresh = req.params.get("v") == asset.version
    return ui.answer(asset, fresh, req.header(b"if-none-match"))


def _has_metrics(api: Context) -> bool:
    return api.metrics is not None


def _has_feed(api: Context) -> bool:
    return api.feed is not None


# -- the table -----------------------------------------------------------------------

_FILTERS: Final = (
    Param("labels", "query", "comma-separated labels; any must match"),
    Param("prefixes", "query", "comma-separated label prefixes; any must match"),
)
LABELS: Final = "/v1/labels"  # POST and DELETE
_DISCOVERIES: Final = {200: json_doc("discoveries sorted by hostname", list_of(DISCOVERY))}
_LABEL_ANSWERS: Final = {
    200: text_doc("OK"),
    400: INVALID,
    413: text_doc("body over 1 MiB"),
    500: text_doc("runtime label file not writable"),
}

ROUTES: Final[tuple[Route, ...]] = (
    Route(
        "GET",
        "/",
        discoveries,
        "all live discoveries, optionally filtered (same as /v1/discoveries)",
        _FILTERS,
        _DISCOVERIES,
        blocking=True,
        gzip=True,
        cluster=True,
        operation_id="discoveries_root",
    ),
    Route(
        "GET",
        "/v1/discoveries",
        discoveries,
        "all live discoveries, optionally filtered",
        _FILTERS,
        _DISCOVERIES,
        blocking=True,
        gzip=True,
        cluster=True,
        operation_id="discoveries",
    ),
    Route(
        "GET",
        "/v1/discovery",
        discovery,
        "this node's own discovery packet",
        responses={200: json_doc("this node's packet", DISCOVERY)},
        blocking=True,
        operation_id="discovery",
    ),
    Route(
        "GET",
        "/v1/resolve",
        resolve,
        "hostnames of the nodes that carry a label",
        (Param("label", "query", "the exact label"),),
        {200: json_doc("hostnames", list_of(_STR)), 400: INVALID},
        blocking=True,
        gzip=True,
        cluster=True,
        operation_id="resolve",
    ),
    Route(
        "POST",
        LABELS,
        add_labels,
        "add runtime labels and announce them at once",
        responses=_LABEL_ANSWERS,
        body=True,
        operation_id="add_labels",
    ),
    Route(
        "DELETE",
        LABELS,
        delete_labels,
        "remove runtime labels and announce at once",
        responses=_LABEL_ANSWERS,
        body=True,
        operation_id="delete_labels",
    ),
    Route(
        "GET",
        "/v1/stats",
        stats,
        "counters: nodes, index, packets, drops, broker link",
        responses={200: json_doc("counters", {"type": "object"})},
        blocking=True,
        operation_id="stats",
    ),
    Route(
        "GET",
        "/v1/checks",
        checks,
        "this node's health checks and the labels they govern",
        responses={200: json_doc("this node's health checks", list_of(CHECK))},
        blocking=True,
        operation_id="checks",
    ),
    Route(
        "GET",
        "/v1/prometheus/{name}",
        prometheus_targets,
        "Prometheus HTTP service discovery for a service",
        (Param("name", "path", "the service: labels prometheus:NAME[:...]", required=True),),
        {200: json_doc("HTTP SD target groups", list_of(TARGET_GROUP))},
        blocking=True,
        gzip=True,
        cluster=True,
        operation_id="prometheus_targets",
    ),
    Route(
        "GET",
        "/v1/health",
        health,
        "200 while every broker link is up, else 503; needs no token",
        responses={
            200: json_doc("every broker link is up", {"type": "object"}),
            503: json_doc("a broker link is down", {"type": "object"}),
        },
        public=True,
        when=lambda api: api.agent is None,
        operation_id="health",
    ),
    Route(
        "GET",
        "/v1/health",
        agent_health,
        "200 while every broker link is up and a listener answers, else 503; needs no token",
        responses={
            200: json_doc("every broker link is up and a listener answers", {"type": "object"}),
            503: json_doc("a broker link is down, or no listener answers", {"type": "object"}),
        },
        public=True,
        when=lambda api: api.agent is not None,
        operation_id="health",
    ),
    Route(
        "GET",
        "/metrics",
        metrics,
        "Prometheus metrics",
        responses={200: text_doc("the text exposition format (OpenMetrics when asked)")},
        when=_has_metrics,
        operation_id="metrics",
    ),
    Route(
        "GET",
        "/v1/events",
        events,
        "Server-Sent Events: join, update, leave",
        (
            Param("labels", "query", "comma-separated labels"),
            Param("prefixes", "query", "comma-separated prefixes"),
            Param("index", "query", "resume after this index", schema=_INDEX),
            Param("last-event-id", "header", "resume after this event id"),
        ),
        {
            200: {
                "description": "an event stream: `join`/`update`/`leave` events whose data is "
                "`{hostname, labels, index[, reason]}`; `reset` before a fresh snapshot",
                "content": {"text/event-stream": {"schema": _STR}},
            },
            400: INVALID,
        },
        watcher=True,
        when=_has_feed,
        cluster=True,
        operation_id="events",
    ),
    Route("GET", "/openapi.json", openapi, documented=False),
    Route("GET", "/docs", docs_page, public=True, documented=False),
    Route(
        "GET",
        "/docs/static/{name}",
        docs_asset,
        params=(Param("name", "path", "", choices=frozenset(docs.ASSETS)),),
        public=True,
        documented=False,
    ),
    Route("GET", "/ui", ui_redirect, public=True, documented=False),
    Route("GET", "/ui/", ui_page, public=True, documented=False),
    Route(
        "GET",
        "/ui/{name:path}",
        ui_asset,
        params=(Param("name", "path", "app.js or app.css"),),
        public=True,
        documented=False,
    ),
)
