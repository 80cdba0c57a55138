"""/openapi.json, written from the route table (`lobby.api.routes`).

Every documented route with its parameters and responses; blocking-capable routes
get `index`, `wait` and the `X-Lobby-Index` header (with a change feed); errors are
plain text (400, never a 422 JSON); with TOKEN or READ_TOKEN the token scheme, and a
403 on every route that is not public.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any, Final

import orjson

from lobby import __version__
from lobby.api.routes import INVALID, Route

DENIED_DOC: Final = {
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
BLOCKING_PARAMS: Final = (
    {
        "name": "index",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 0},
        "description": "blocking query: hold the answer until the change index "
        "is no longer this value (see X-Lobby-Index)",
    },
    {
        "name": "wait",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "pattern": r"^\d+(\.\d+)?(ms|s|m|h)?$"},
        "description": "how long to hold a blocking query (default 5m, max 10m)",
    },
)
INDEX_HEADER: Final = {
    "description": "the registry's change index this answer reflects",
    "schema": {"type": "integer"},
}


def _operation(route: Route, protected: bool, blocking: bool) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": route.summary, "operationId": route.operation_id}
    params: list[dict[str, Any]] = [
        {
            "name": p.name,
            "in": p.where,
            "required": p.required or p.where == "path",
            "schema": dict(p.schema),
            "description": p.description,
        }
        for p in route.params
    ]
    responses = {str(code): copy.deepcopy(dict(doc)) for code, doc in route.responses.items()}
    if params or route.body:
        responses.setdefault("400", copy.deepcopy(INVALID))
    if blocking and route.blocking:
        params += copy.deepcopy(BLOCKING_PARAMS)
        for response in responses.values():
            response.setdefault("headers", {})["X-Lobby-Index"] = dict(INDEX_HEADER)
        responses.setdefault("400", copy.deepcopy(INVALID))
    if route.body:
        op["requestBody"] = {
            "description": "one label per line; blank lines are ignored",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    if params:
        op["parameters"] = params
    if protected and route.public:
        op["security"] = []  # needs no token
    elif protected:
        responses["403"] = copy.deepcopy(DENIED_DOC)
    op["responses"] = dict(sorted(responses.items()))
    return op


def _named(value: Any, schemas: dict[str, Any]) -> Any:
    """`value` with every schema that has a `title` moved to `schemas` under that name
    and referred to (`$ref`), so the document names the shapes it shares."""
    if isinstance(value, dict):
        value = {key: _named(item, schemas) for key, item in value.items()}
        title = value.get("title")
        if isinstance(title, str) and "type" in value:
            schemas[title] = value
            return {"$ref": f"#/components/schemas/{title}"}
        return value
    if isinstance(value, list):
        return [_named(item, schemas) for item in value]
    return value


def document(routes: Iterable[Route], protected: bool, blocking: bool) -> bytes:
    """The OpenAPI 3.1 document; `protected`: TOKEN or READ_TOKEN is set; `blocking`:
    there is a change feed (blocking queries)."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if route.documented:
            operation = _operation(route, protected, blocking)
            paths.setdefault(route.path, {})[route.method.lower()] = operation
    schemas: dict[str, Any] = {}
    paths = _named(paths, schemas)
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "lobbyd",
            "description": "Which servers exist and what runs where: discovery packets by label.",
            "version": __version__,
        },
        "paths": paths,
    }
    components: dict[str, Any] = {"schemas": dict(sorted(schemas.items()))} if schemas else {}
    if protected:
        components["securitySchemes"] = {
            "token": {
                "type": "apiKey",
                "in": "header",
                "name": "Authorization",
                "description": "`Token <TOKEN>`",
            }
        }
        doc["security"] = [{"token": []}]
    if components:
        doc["components"] = components
    return orjson.dumps(doc)
