"""Prometheus HTTP SD (SPEC §6): every rule, the Go samples, properties, and the route."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from apiwire import client as api_client
from hypothesis import given, settings
from hypothesis import strategies as st

from lobby.api import Api
from lobby.core.answer import Answer, Slices
from lobby.core.model import Discovery, decode_envelope, pretty
from lobby.view import prometheus
from lobby.view.cache import Answers
from lobby.view.prometheus import PrometheusSD, target, target_groups
from lobby.view.registry import Registry

SAMPLES = (
    Path(__file__).parents[3].parent / "shared" / "wire-samples" / "go-lobby-1.5-envelopes.jsonl"
)
if not SAMPLES.exists():  # CI checks out the repo alone: keep a copy
    SAMPLES = Path(__file__).parents[2] / "data" / "go-lobby-1.5-envelopes.jsonl"

LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def node(hostname: str, *labels: str) -> Discovery:
    return Discovery(hostname, tuple(sorted(set(labels))))


def groups(*discoveries: Discovery, name: str = "node", port: int = 9100) -> Any:
    return target_groups(discoveries, name, port)


def warned(*discoveries: Discovery, name: str = "node") -> tuple[Any, list[str]]:
    messages: list[str] = []
    return target_groups(discoveries, name, 9100, messages.append), messages


# -- golden cases ---------------------------------------------------------------------


def go_discoveries() -> list[Discovery]:
    envelopes = [decode_envelope(line) for line in SAMPLES.read_bytes().splitlines()]
    return [e.discovery for e in envelopes if e.message == "hi"]


def test_go_wire_sample_host_port_location():
    sample = next(d for d in go_discoveries() if "prometheus:node:port:9200" in d.labels)
    # byte for byte what the Go daemon answered, keys in its order
    assert orjson.dumps(groups(sample)) == (
        b'[{"Targets":["10.0.0.1:9200"],"Labels":{"location":"prague"}}]'
    )


def test_go_wire_sample_bracketed_ipv6_gets_the_default_port():
    sample = next(d for d in go_discoveries() if "prometheus:node:env:prod" in d.labels)
    # Go answered "[2001:db8::1]" (port 80 for Prometheus); SPEC §12 wants the port
    assert groups(sample) == [
        {"Targets": ["10.0.0.2:9999", "[2001:db8::1]:9100"], "Labels": {"env": "prod"}}
    ]


def test_original_readme_example():
    d = node(
        "srv.example",
        "prometheus:nodeexporter:host:192.168.1.1",
        "prometheus:nodeexporter:port:9100",
        "prometheus:nodeexporter:location:prague",
    )
    assert groups(d, name="nodeexporter") == [
        {"Targets": ["192.168.1.1:9100"], "Labels": {"location": "prague"}}
    ]


ORIGINAL_TEST_NODE = node(
    "test.server",
    "prometheus:test1:label1:l1",
    "prometheus:test1:host:srv1:1234",
    "prometheus:test1:host:srv1:1235",
    "prometheus:test1:host:srv1",
    "prometheus:test1:label2:l2",
    "prometheus:test2:host:srv2",
    "prometheus:test2:host:srv2:1235",
    "prometheus:test2:host:srv2:1236",
    "prometheus:test2:host:srv2:1237",
    "prometheus:test2:label1:l3",
)


def test_original_go_test_two_services_on_one_node():
    assert groups(ORIGINAL_TEST_NODE, name="test1") == [
        {
            "Targets": ["srv1:9100", "srv1:1234", "srv1:1235"],
            "Labels": {"label1": "l1", "label2": "l2"},
        }
    ]
    assert groups(ORIGINAL_TEST_NODE, name="test2") == [
        {
            "Targets": ["srv2:9100", "srv2:1235", "srv2:1236", "srv2:1237"],
            "Labels": {"label1": "l3"},
        }
    ]
    assert groups(ORIGINAL_TEST_NODE, name="test3") == []


# -- membership -----------------------------------------------------------------------


def test_bare_label_uses_hostname_and_default_port():
    assert groups(node("a.example", "prometheus:node", "service:web"), port=9200) == [
        {"Targets": ["a.example:9200"], "Labels": {}}
    ]


def test_nodes_without_the_service_are_left_out():
    assert groups(node("a.example", "service:web"), node("b.example")) == []
    assert orjson.dumps(groups()) == b"[]"


@pytest.mark.parametrize(
    "label",
    [
        "prometheus:nodeexporter",
        "prometheus:nodeexporter:host:10.0.0.1",
        "prometheus:node-x:host:10.0.0.1",
        "prometheus:node1",
        "prometheus:nod",
        "prometheus:NODE",
        "prometheus_node",
        "xprometheus:node",
    ],
)
def test_a_name_that_only_shares_a_prefix_is_another_service(label):
    assert groups(node("a.example", label)) == []


def test_this_service_is_found_among_its_prefix_cousins():
    d = node(
        "a.example",
        "prometheus:node-x:host:wrong1",
        "prometheus:node1:host:wrong2",
        "prometheus:node:host:right",
        "prometheus:nodeexporter:host:wrong3",
        "prometheus:nod:host:wrong4",
    )
    assert groups(d) == [{"Targets": ["right:9100"], "Labels": {}}]
    assert groups(d, name="nodeexporter") == [{"Targets": ["wrong3:9100"], "Labels": {}}]


def test_one_group_per_node_in_input_order():
    got = groups(
        node("a.example", "prometheus:node"),
        node("b.example", "prometheus:other"),
        node("c.example", "prometheus:node:location:brno"),
    )
    assert got == [
        {"Targets": ["a.example:9100"], "Labels": {}},
        {"Targets": ["c.example:9100"], "Labels": {"location": "brno"}},
    ]


def test_service_names_with_colons_and_dots():
    d = node("a.example", "prometheus:app.v2:host:h1", "prometheus:a:b:host:h2")
    assert groups(d, name="app.v2") == [{"Targets": ["h1:9100"], "Labels": {}}]
    assert groups(d, name="a:b") == [{"Targets": ["h2:9100"], "Labels": {}}]


# -- hosts and ports ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("srv1", "9100", "srv1:9100"),
        ("srv1", None, "srv1"),
        ("srv1:1234", "9100", "srv1:1234"),
        ("srv1:1234", None, "srv1:1234"),
        ("10.0.0.1", "9200", "10.0.0.1:9200"),
        ("2a03::1", "9100", "[2a03::1]:9100"),
        ("2a03::1", None, "[2a03::1]"),
        ("::1", "9100", "[::1]:9100"),
        ("fe80::1%eth0", "9100", "[fe80::1%eth0]:9100"),
        ("[2a03::1]", "9100", "[2a03::1]:9100"),
        ("[2a03::1]", None, "[2a03::1]"),
        ("[2a03::1]:9100", "9200", "[2a03::1]:9100"),
        ("[::1]:9100", None, "[::1]:9100"),
    ],
)
def test_target(host, port, expected):
    assert target(host, port) == expected


@pytest.mark.parametrize(
    "host",
    [
        "",
        "srv1:abc",
        "srv1:",
        ":9100",
        "srv1:0",
        "srv1:70000",
        "srv1:\uff19\uff11",  # full-width digits: digits to Python, not to Prometheus
        "a:b:c",
        "[::1",
        "[]",
        "[::1]9100",
        "[::1]:x",
        "srv[1]",
        "http://srv1",
        "srv 1",
    ],
)
def test_unscrapeable_hosts_are_refused(host):
    with pytest.raises(ValueError):
        target(host, "9100")


def test_port_label_applies_to_every_host_without_its_own():
    d = node(
        "a.example",
        "prometheus:node:host:srv1",
        "prometheus:node:host:srv2:1234",
        "prometheus:node:host:2a03::1",
        "prometheus:node:port:9200",
    )
    assert groups(d)[0]["Targets"] == ["[2a03::1]:9200", "srv1:9200", "srv2:1234"]


def test_port_dash_means_no_port():
    d = node("a.example", "prometheus:node:host:srv1", "prometheus:node:port:-")
    assert groups(d) == [{"Targets": ["srv1"], "Labels": {}}]
    assert groups(node("b.example", "prometheus:node:port:-")) == [
        {"Targets": ["b.example"], "Labels": {}}
    ]


def test_duplicate_targets_are_listed_once():
    d = node("a.example", "prometheus:node:host:srv1", "prometheus:node:host:srv1:9100")
    assert groups(d)[0]["Targets"] == ["srv1:9100"]


def test_several_ports_last_in_label_order_wins_like_go():
    d = node("a.example", "prometheus:node:port:9100", "prometheus:node:port:9200")
    assert groups(d)[0]["Targets"] == ["a.example:9200"]


@pytest.mark.parametrize("port", ["abc", "0", "70000", "", " ", "91OO"])
def test_invalid_port_label_is_ignored_with_a_warning(port):
    got, messages = warned(
        node("a.example", "prometheus:node:host:srv1", f"prometheus:node:port:{port}")
    )
    assert got == [{"Targets": ["srv1:9100"], "Labels": {}}]
    assert len(messages) == 1
    assert "a.example" in messages[0] and "port" in messages[0]


def test_host_and_port_values_are_trimmed():
    d = node("a.example", "prometheus:node:host: srv1 ", "prometheus:node:port: 9200")
    assert groups(d)[0]["Targets"] == ["srv1:9200"]


def test_bad_host_is_left_out_and_the_rest_stands():
    d = node(
        "a.example",
        "prometheus:node:host:srv1:abc",
        "prometheus:node:host:srv2",
        "prometheus:node:location:prague",
    )
    got, messages = warned(d)
    assert got == [{"Targets": ["srv2:9100"], "Labels": {"location": "prague"}}]
    assert len(messages) == 1 and "'srv1:abc'" in messages[0]


@pytest.mark.parametrize("label", ["prometheus:node:host:", "prometheus:node:host:a:b:c"])
def test_only_bad_hosts_give_an_empty_group_not_the_hostname(label):
    got, messages = warned(node("a.example", label, "prometheus:node:env:prod"))
    assert got == [{"Targets": [], "Labels": {"env": "prod"}}]
    assert len(messages) == 1


# -- labels ---------------------------------------------------------------------------


def test_values_keep_their_colons():
    d = node("a.example", "prometheus:node:url:http://x:80/y", "prometheus:node:ip6:2a03::1")
    assert groups(d)[0]["Labels"] == {"ip6": "2a03::1", "url": "http://x:80/y"}


def test_labels_are_sorted_by_name_like_go_maps():
    d = node("a.example", "prometheus:node:a1:x", "prometheus:node:a:y", "prometheus:node:Z:z")
    got = groups(d)[0]["Labels"]
    assert list(got) == ["Z", "a", "a1"]


def test_several_values_for_a_label_last_in_label_order_wins():
    d = node("a.example", "prometheus:node:dc:brno", "prometheus:node:dc:prague")
    assert groups(d)[0]["Labels"] == {"dc": "prague"}


def test_empty_value_is_kept():
    assert groups(node("a.example", "prometheus:node:team:"))[0]["Labels"] == {"team": ""}


@pytest.mark.parametrize(
    "key", ["my-label", "a.b", "1abc", "místo", "", " location", "__address__", "a b"]
)
def test_invalid_label_name_is_left_out_with_a_warning(key):
    d = node("a.example", f"prometheus:node:{key}:x", "prometheus:node:location:prague")
    got, messages = warned(d)
    assert got == [{"Targets": ["a.example:9100"], "Labels": {"location": "prague"}}]
    assert len(messages) == 1
    assert repr(key) in messages[0] and "a.example" in messages[0]


def test_reserved_names_that_prometheus_understands_are_kept():
    d = node(
        "a.example",
        "prometheus:node:__metrics_path__:/probe",
        "prometheus:node:__scheme__:https",
        "prometheus:node:__param_module:http_2xx",
    )
    assert groups(d)[0]["Labels"] == {
        "__metrics_path__": "/probe",
        "__param_module": "http_2xx",
        "__scheme__": "https",
    }


def test_setting_without_value_is_ignored_but_makes_a_member():
    got, messages = warned(node("a.example", "prometheus:node:location"))
    assert got == [{"Targets": ["a.example:9100"], "Labels": {}}]
    assert len(messages) == 1 and "'location'" in messages[0]
    got, messages = warned(node("a.example", "prometheus:node:"))
    assert got == [{"Targets": ["a.example:9100"], "Labels": {}}]
    assert len(messages) == 1


def test_host_and_port_never_become_labels():
    d = node("a.example", "prometheus:node:host:srv1", "prometheus:node:port:1")
    assert groups(d) == [{"Targets": ["srv1:1"], "Labels": {}}]


def test_ten_thousand_nodes():
    discoveries = [
        node(
            f"n{i:05}.example",
            "prometheus:node",
            f"prometheus:node:host:10.{i // 65536}.{i // 256 % 256}.{i % 256}",
            "prometheus:node:location:prague",
            "service:web",
        )
        for i in range(10_000)
    ]
    got = target_groups(discoveries, "node", 9100)
    assert len(got) == 10_000
    assert got[-1] == {"Targets": ["10.0.39.15:9100"], "Labels": {"location": "prague"}}
    assert target_groups(discoveries, "other", 9100) == []


# -- properties -----------------------------------------------------------------------

# label text as it can arrive: no control characters, no surrogates, no colon in names
_text = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters=":"), max_size=12
)
_keys = (
    st.sampled_from(
        [
            "host",
            "port",
            "location",
            "env",
            "__scheme__",
            "__address__",
            "my-label",
            "1a",
            "místo",
            "",
        ]
    )
    | _text
)
_hosts = st.sampled_from(
    [
        "srv1",
        "srv1:1234",
        "srv1:abc",
        "10.0.0.1",
        "2a03::1",
        "::1",
        "[2a03::1]",
        "[::1]:9100",
        "[::1",
        "a:b:c",
        "",
        "host name",
    ]
) | st.text(st.sampled_from("ab1:[]. -/%"), max_size=10)
_ports = st.sampled_from(["-", "9100", "0", "65535", "65536", "abc", ""]) | st.integers(
    -5, 70000
).map(str)
_values = st.one_of(_text, _hosts, st.text(max_size=8).filter(lambda s: "\x00" not in s))


@st.composite
def _setting(draw: st.DrawFn) -> str:
    key = draw(_keys)
    if key == "host":
        return f"host:{draw(_hosts)}"
    if key == "port":
        return f"port:{draw(_ports)}"
    if draw(st.booleans()):
        return key  # no value
    return f"{key}:{draw(_values)}"


@st.composite
def _node(draw: st.DrawFn) -> Discovery:
    hostname = draw(st.sampled_from(["a.example", "b", "2a03::5", "x:1"]))
    labels = {
        f"prometheus:{draw(st.sampled_from(['node', 'nodex', 'no']))}:{s}"
        for s in draw(st.lists(_setting(), max_size=6))
    }
    if draw(st.booleans()):
        labels.add("prometheus:node")
    labels |= set(draw(st.lists(_text.filter(bool), max_size=2)))
    labels = {label.strip() for label in labels if label.strip()}
    return Discovery(hostname, tuple(sorted(labels)))


SCRAPE_WITH_PORT = re.compile(r"(\[[^\[\]/\s]+\]|[^:\[\]/\s]+):([0-9]+)")
SCRAPE_ANY = re.compile(r"(\[[^\[\]/\s]+\]|[^:\[\]/\s]+)(:[0-9]+)?")


@settings(max_examples=400)
@given(st.lists(_node(), max_size=5))
def test_every_answer_is_one_prometheus_accepts(discoveries):
    messages: list[str] = []
    got = target_groups(discoveries, "node", 9100, messages.append)
    members = [
        d
        for d in discoveries
        if any(
            label == "prometheus:node" or label.startswith("prometheus:node:") for label in d.labels
        )
    ]
    assert len(got) == len(members)
    for group, d in zip(got, members, strict=True):
        assert list(group) == ["Targets", "Labels"]
        for name, value in group["Labels"].items():
            assert LABEL_NAME.fullmatch(name) and name != "__address__"
            assert type(value) is str
        no_port = "prometheus:node:port:-" in d.labels
        for t in group["Targets"]:
            assert type(t) is str
            if no_port:
                assert SCRAPE_ANY.fullmatch(t), t
                continue
            m = SCRAPE_WITH_PORT.fullmatch(t)
            assert m, t
            assert 1 <= int(m[2]) <= 65535
    # whatever the labels, the answer serializes (Prometheus then parses it)
    assert orjson.loads(pretty(got)) == got


@given(_node())
def test_valid_settings_are_never_dropped(d):
    got = target_groups([d], "node", 9100)
    for label in d.labels:
        key, colon, _value = label.removeprefix("prometheus:node:").partition(":")
        if (
            label.startswith("prometheus:node:")
            and colon
            and LABEL_NAME.fullmatch(key)
            and key not in ("host", "port", "__address__")
        ):
            assert key in got[0]["Labels"]


# -- the route ------------------------------------------------------------------------


class FakeNode:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.answers = Answers(registry)

    def own_discovery(self) -> Discovery:
        return Discovery("self.example", ())

    async def add_labels(self, labels: list[str]) -> None:
        raise AssertionError("not used")

    async def delete_labels(self, labels: list[str]) -> None:
        raise AssertionError("not used")

    def stats(self) -> dict[str, Any]:
        return {}

    def health(self) -> tuple[bool, dict[str, str]]:
        return True, {}


@pytest.fixture
def registry() -> Registry:
    return Registry(ttl=300)


@pytest.fixture
async def client(registry: Registry):
    app = Api(FakeNode(registry), node_exporter_port=9100)
    async with api_client(app) as c:
        yield c


GO_INDENTED = b"""[
  {
    "Targets": [
      "10.0.0.1:9200"
    ],
    "Labels": {
      "location": "prague"
    }
  }
]
"""


async def test_route_answers_like_the_go_daemon(client, registry):
    registry.update(
        node(
            "a.example",
            "prometheus:node:host:10.0.0.1",
            "prometheus:node:port:9200",
            "prometheus:node:location:prague",
        )
    )
    r = await client.get("/v1/prometheus/node")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json; charset=UTF-8"
    assert r.content == GO_INDENTED


async def test_route_empty_answer(client):
    r = await client.get("/v1/prometheus/nothing")
    assert (r.status_code, r.content) == (200, b"[]\n")
    assert r.headers["content-type"] == "application/json; charset=UTF-8"


async def test_route_is_cached_until_the_registry_changes(client, registry):
    registry.update(node("a.example", "prometheus:node"))
    first = (await client.get("/v1/prometheus/node")).content
    # the route stored its answer under this key: a different build is not called
    answers = Answers(registry)  # a second cache: the route kept its answer in its own
    assert answers.cached(("prometheus", "node"), lambda: b"rebuilt", timed=False) != first
    assert (await client.get("/v1/prometheus/node")).content == first
    registry.update(node("b.example", "prometheus:node"))
    second = (await client.get("/v1/prometheus/node")).content
    assert second != first
    assert [g["Targets"] for g in orjson.loads(second)] == [["a.example:9100"], ["b.example:9100"]]


async def test_route_warns_once_per_problem(client, registry, caplog):
    caplog.set_level(logging.WARNING, logger="lobby.prometheus")
    registry.update(node("a.example", "prometheus:node:my-label:x", "prometheus:node:env:prod"))

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "lobby.prometheus"]

    r = await client.get("/v1/prometheus/node")
    assert orjson.loads(r.content) == [{"Targets": ["a.example:9100"], "Labels": {"env": "prod"}}]
    assert len(warnings()) == 1 and "'my-label'" in warnings()[0]
    await client.get("/v1/prometheus/node")  # from the cache
    registry.update(node("b.example", "service:web"))  # a change elsewhere: rebuilt
    await client.get("/v1/prometheus/node")
    assert len(warnings()) == 1
    registry.update(node("c.example", "prometheus:node:a.b:x"))  # a new problem
    await client.get("/v1/prometheus/node")
    assert len(warnings()) == 2 and "'a.b'" in warnings()[1]


async def test_route_many_bad_nodes_do_not_flood_the_log(client, registry, caplog):
    caplog.set_level(logging.WARNING, logger="lobby.prometheus")
    for i in range(200):
        registry.update(node(f"n{i:03}.example", "prometheus:node:bad-name:x"))
    r = await client.get("/v1/prometheus/node")
    assert len(orjson.loads(r.content)) == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "lobby.prometheus"]
    assert 1 < len(lines) < 50
    assert "180 more" in lines[-1]


async def test_route_name_is_url_decoded(client, registry):
    registry.update(node("a.example", "prometheus:web app:host:srv1"))
    r = await client.get("/v1/prometheus/web%20app")
    assert orjson.loads(r.content) == [{"Targets": ["srv1:9100"], "Labels": {}}]


async def test_route_is_documented(client):
    doc = (await client.get("/openapi.json")).json()
    get = doc["paths"]["/v1/prometheus/{name}"]["get"]
    schema = get["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema == {"type": "array", "items": {"$ref": "#/components/schemas/TargetGroup"}}
    group = doc["components"]["schemas"]["TargetGroup"]
    assert list(group["properties"]) == ["Targets", "Labels"]


async def test_route_wrong_method(client):
    r = await client.post("/v1/prometheus/node")
    assert r.status_code == 405


_HOSTS = ["a.example", "b", "2a03::5", "x:1", "m.example"]


@settings(max_examples=300)
@given(
    st.lists(
        st.lists(st.one_of(_node(), st.sampled_from(_HOSTS)), max_size=4), min_size=1, max_size=6
    )
)
def test_rebuilds_from_kept_parts_equal_a_build_from_scratch(rounds):
    """Rounds of joins, label changes and leaves (a bare hostname: it leaves); after each,
    every service's answer and warnings are exactly those of target_groups on the whole
    registry, though only changed members' groups were made again."""
    from lobby.view.prometheus import PrometheusSD

    registry = Registry(30)
    sd = PrometheusSD(Answers(registry), 9100)
    for changes in rounds:
        for change in changes:
            if isinstance(change, str):
                registry.remove(change)
            else:
                registry.update(change)
        for name in ("node", "nodex", "no"):
            expected: list[str] = []
            groups = target_groups(registry.discoveries(), name, 9100, expected.append)
            found: list[str] = []
            assert sd._assemble(name, found) == pretty(groups)
            assert found == expected


# -- a big registry: built over several turns of the loop -------------------------------


def big_registry(n: int) -> Registry:
    registry = Registry(ttl=300)
    for i in range(n):
        labels = ["prometheus:node", f"location:dc{i % 3}"]
        if i % 2:
            labels.append(f"prometheus:node:host:10.0.{i // 256}.{i % 256}")
        registry.update(node(f"n{i:05d}.example", *labels))
    return registry


@pytest.fixture
def sliced(monkeypatch):
    """Every registry of more than 10 nodes is big; a slice of 256 nodes per turn."""
    monkeypatch.setattr(prometheus, "SLICED_FROM", 10)
    monkeypatch.setattr(prometheus, "_BUDGET", 0.0)


async def test_a_big_answer_is_built_over_several_turns_of_the_loop(sliced):
    import asyncio

    registry = big_registry(2000)
    sd = PrometheusSD(Answers(registry), 9100)
    pending = sd.get("node")
    assert not isinstance(pending, Answer | Slices)  # a coroutine: not made at once
    turns = 0

    async def count() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    counter = asyncio.ensure_future(count())
    both = await asyncio.gather(pending, sd.get("node"))  # a second request waits for it
    counter.cancel()
    assert turns >= 2000 // 256  # the loop ran between the slices
    want = pretty(groups(*registry.discoveries()))
    assert both[0].body == want and both[1] is both[0]  # one build for both
    assert sd.get("node") is both[0]  # kept: answered at once now


async def test_a_change_during_a_big_build_is_in_its_answer(sliced):
    import asyncio

    registry = big_registry(2000)
    sd = PrometheusSD(Answers(registry), 9100)
    pending = asyncio.ensure_future(sd.get("node"))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # a slice or two made
    registry.update(node("n00004.example", "prometheus:node:host:192.0.2.4"))
    registry.remove("n00005.example")
    answer = await pending
    assert answer.body == pretty(groups(*registry.discoveries()))
    assert b'"192.0.2.4:9100"' in answer.body and b"10.0.0.5:9100" not in answer.body
    assert sd.get("node") is answer  # kept for the index it was made at


async def test_a_small_registry_answers_at_once(monkeypatch):
    registry = big_registry(prometheus.SLICED_FROM)
    sd = PrometheusSD(Answers(registry), 9100)
    answer = sd.get("node")
    assert isinstance(answer, Answer) and answer.body == pretty(groups(*registry.discoveries()))


async def test_the_route_waits_for_a_big_build(sliced):
    from lobby.api.http import Request, Response
    from lobby.view.feed import ChangeFeed

    registry = big_registry(1000)
    api = Api(FakeNode(registry), "", ChangeFeed(registry), node_exporter_port=9100)
    pending = api.dispatch(Request("GET", "/v1/prometheus/node"))
    assert not isinstance(pending, Response)  # a coroutine: the protocol runs it in a task
    answer = await pending
    assert (answer.status, answer.body) == (200, pretty(groups(*registry.discoveries())))
    assert dict(answer.headers)[b"x-lobby-index"] == b"%d" % registry.index
    kept = api.dispatch(Request("GET", "/v1/prometheus/node"))
    assert isinstance(kept, Response) and kept.body == answer.body  # now at once


async def test_a_client_that_goes_away_ends_its_wait_not_the_build(sliced):
    import asyncio

    from lobby.api.http import Request, Response
    from lobby.view.feed import ChangeFeed

    registry = big_registry(1000)
    api = Api(FakeNode(registry), "", ChangeFeed(registry), node_exporter_port=9100)
    never_started = api.dispatch(Request("GET", "/v1/prometheus/node"))
    never_started.close()  # type: ignore[union-attr]  # gone before its task ran
    gone = asyncio.ensure_future(api.dispatch(Request("GET", "/v1/prometheus/node")))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    for _ in range(200):  # the build goes on without anyone waiting, and is kept
        kept = api.dispatch(Request("GET", "/v1/prometheus/node"))
        if isinstance(kept, Response):
            break
        kept.close()  # type: ignore[union-attr]
        await asyncio.sleep(0.001)
    assert isinstance(kept, Response)
    assert kept.body == pretty(groups(*registry.discoveries()))
