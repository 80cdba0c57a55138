"""The API's operator side in-process (SPEC §14): what needs a token and what does not,
the Allow header, a failed label write in the log, request metrics by route template,
and the offline /docs page and its assets."""

from __future__ import annotations

import gzip
import logging
import re
from typing import Any

import pytest
from apiwire import client as api_client

from lobby.api import Api
from lobby.core.model import Discovery
from lobby.ops.metrics import Metrics
from lobby.view.cache import Answers
from lobby.view.registry import Registry

TOKEN = "s3cret"
AUTH = {"Authorization": f"Token {TOKEN}"}


class Node:
    def __init__(self) -> None:
        self.registry = Registry(ttl=30)
        self.answers = Answers(self.registry)
        self.up = True

    def own_discovery(self) -> Discovery:
        return Discovery("self.example", ())

    async def add_labels(self, labels: list[str]) -> None:
        raise PermissionError(13, "Permission denied", "/etc/lobby/labels/_runtime")

    async def delete_labels(self, labels: list[str]) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        return {}

    def health(self) -> tuple[bool, dict[str, str]]:
        return self.up, {"NATS": "up" if self.up else "down"}


@pytest.fixture
def node() -> Node:
    return Node()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics("test")


@pytest.fixture
async def http(node: Node, metrics: Metrics):
    app = Api(node, TOKEN, metrics=metrics)
    async with api_client(app) as client:
        yield client


async def test_put_on_labels_names_every_allowed_method(http) -> None:
    r = await http.put("/v1/labels", headers=AUTH)
    assert r.status_code == 405
    assert r.headers["allow"] == "POST, DELETE"
    r = await http.patch("/v1/discoveries", headers=AUTH)
    assert (r.status_code, r.headers["allow"]) == (405, "GET, HEAD")


async def test_a_failed_runtime_label_write_is_logged(http, caplog) -> None:
    caplog.set_level(logging.INFO, "lobby.api")
    r = await http.post("/v1/labels", content="x:1\n", headers=AUTH)
    assert r.status_code == 500 and "cannot write runtime labels" in r.text
    (record,) = [r for r in caplog.records if r.name == "lobby.api"]
    assert record.levelno == logging.ERROR
    assert record.getMessage() == (
        "cannot write runtime labels: [Errno 13] Permission denied: '/etc/lobby/labels/_runtime'"
    )
    assert record.exc_info is None  # an expected condition: no traceback


async def test_health_needs_no_token_and_tells_only_the_links(http, node) -> None:
    r = await http.get("/v1/health")
    assert (r.status_code, r.json()) == (200, {"status": "ok", "brokers": {"NATS": "up"}})
    assert r.headers["content-type"] == "application/json; charset=UTF-8"
    node.up = False
    r = await http.get("/v1/health")
    assert (r.status_code, r.json()) == (503, {"status": "degraded", "brokers": {"NATS": "down"}})
    assert (await http.post("/v1/health")).status_code == 403  # only GET is public


async def test_metrics_need_the_token_and_count_requests_by_route_template(http) -> None:
    assert (await http.get("/metrics")).status_code == 403
    await http.get("/v1/prometheus/node", headers=AUTH)
    await http.get("/v1/prometheus/other", headers=AUTH)
    await http.get("/v1/prometheus/x")  # 403, still its route
    await http.get("/no/such/path", headers=AUTH)
    r = await http.get("/metrics", headers=AUTH)
    assert r.status_code == 200
    text = r.text
    assert 'lobby_http_requests_total{code="200",route="/v1/prometheus/{name}"} 2.0' in text
    assert 'lobby_http_requests_total{code="403",route="/v1/prometheus/{name}"} 1.0' in text
    assert 'lobby_http_requests_total{code="404",route="unmatched"} 1.0' in text
    assert 'lobby_http_requests_total{code="403",route="/metrics"} 1.0' in text
    assert "/v1/prometheus/node" not in text  # never the raw path
    assert 'lobby_http_request_duration_seconds_count{route="/v1/prometheus/{name}"} 3.0' in text


async def test_openmetrics_when_the_scraper_asks_for_it(http) -> None:
    r = await http.get("/metrics", headers={**AUTH, "Accept": "application/openmetrics-text"})
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.endswith("# EOF\n")


async def test_docs_page_and_assets_need_no_token_but_the_document_does(http) -> None:
    page = await http.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    # everything the page loads comes from lobbyd itself: no CDN
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources == [
        "docs/static/swagger-ui.css",
        "docs/static/swagger-ui-bundle.js",
        "docs/static/docs.js",
    ]
    assert "cdn" not in page.text and "//" not in "".join(sources)
    for source in sources:
        r = await http.get("/" + source, headers={"Accept-Encoding": "gzip"})
        assert r.status_code == 200, source
        assert r.headers["content-type"].startswith(("text/css", "text/javascript"))
    bundle = await http.get(
        "/docs/static/swagger-ui-bundle.js", headers={"Accept-Encoding": "gzip"}
    )
    assert bundle.headers["content-encoding"] == "gzip"  # stored so, sent so
    assert b"SwaggerUIBundle" in bundle.content  # httpx decoded it
    assert len(bundle.content) > 1_000_000
    plain = await http.get(
        "/docs/static/swagger-ui-bundle.js", headers={"Accept-Encoding": "identity"}
    )
    assert "content-encoding" not in plain.headers and plain.content == bundle.content
    js = (await http.get("/docs/static/docs.js")).text
    assert "sessionStorage" in js and "Authorization" in js
    assert (await http.get("/docs/static/../app.py")).status_code in (403, 404)
    assert (await http.get("/docs/static/app.py")).status_code == 403  # not an asset: guarded
    assert (await http.get("/docs/static/app.py", headers=AUTH)).status_code == 404
    assert (await http.get("/openapi.json")).status_code == 403
    doc = (await http.get("/openapi.json", headers=AUTH)).json()
    assert doc["components"]["securitySchemes"]["token"]["name"] == "Authorization"
    assert "/metrics" in doc["paths"] and "/v1/health" in doc["paths"]
    assert (await http.get("/redoc", headers=AUTH)).status_code == 404  # a CDN page: gone


def test_assets_are_the_vendored_swagger_ui() -> None:
    from importlib import resources

    folder = resources.files("lobby.api").joinpath("swagger")
    css = gzip.decompress(folder.joinpath("swagger-ui.css.gz").read_bytes())
    assert b".swagger-ui" in css and b"sourceMappingURL" not in css
    assert "Apache License" in folder.joinpath("LICENSE").read_text()
