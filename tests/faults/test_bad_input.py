"""Bad input: garbage on the broker, hostile HTTP bodies, missing or wrong tokens.

Real brokers and real lobbyd processes. Whatever comes in, lobbyd must not crash,
must not let garbage into its registry or its runtime label file, must not let its
log or its memory grow with the garbage, and must count what it dropped.
"""

from __future__ import annotations

import random
import socket
import time

import httpx
import orjson
import pytest
from support import envelope, log_line_count, rss_kb, wait_for

pytestmark = pytest.mark.fault

MiB = 1024 * 1024
GARBAGE = 100_000
VALID = 1_000
GOODBYES = 200


def _disc(**fields: object) -> bytes:
    return orjson.dumps({"message": "hi", "discovery": fields})


def malformed(i: int, kind: str) -> bytes:
    """One malformed message of the given kind, unique per `i`."""
    host = f"bad-{i}.example"
    if kind == "not_json":
        return b"not json %d" % i
    if kind == "truncated":
        return envelope(host, ["x:1"])[:-3]
    if kind == "top_level":
        return [b"[]", b"1", b"null", b'"hi"', b"true", b"{}"][i % 6]
    if kind == "wrong_types":
        return [
            _disc(hostname=i, labels=[]),
            _disc(hostname=host, labels="service:web"),
            _disc(hostname=host, labels=[1, 2]),
            _disc(hostname=host, labels=[None]),
            _disc(hostname=host, labels=[], last_check="now"),
            _disc(hostname=host, labels=[], last_check=1.5),
            orjson.dumps({"message": "hi", "discovery": [host]}),
            orjson.dumps({"message": "hi", "discovery": None}),
            orjson.dumps({"message": 1, "discovery": {"hostname": host}}),
            _disc(hostname=[host], labels=[]),
        ][i % 10]
    if kind == "empty_hostname":
        return [
            envelope("", ["x:1"]),
            envelope("   ", ["x:1"]),
            envelope("", [], "goodbye"),
            orjson.dumps({"message": "hi", "discovery": {"labels": []}}),
        ][i % 4]
    if kind == "control":
        bad = ["\n", "\r", "\x00", "\x1b[31m", "\x7f", "\x85", "\t"][i % 7]
        if i % 2:
            return envelope(f"{host}{bad}", ["x:1"])
        return envelope(host, ["ok:1", f"evil{bad}label"])
    if kind == "long_label":
        return envelope(host, ["x" * 1025])
    if kind == "long_hostname":
        return envelope("h" * 1025 + str(i), [])
    if kind == "nested":
        if i % 2:
            return b"[" * 60_000  # under 64 KiB, far past any JSON recursion limit
        deep = "[" * 2_000 + "]" * 2_000
        return b'{"message":"hi","discovery":{"hostname":"%s","labels":%s}}' % (
            host.encode(),
            deep.encode(),
        )
    if kind == "invalid_utf8":
        return [
            b"\xff\xfe\xfd",
            b'{"message":"hi","discovery":{"hostname":"h\xc3\x28","labels":[]}}',
            b'{"message":"hi","discovery":{"hostname":"ok","labels":["\xed\xa0\x80"]}}',
            b'{"message":"hi","discovery":{"hostname":"\\ud800","labels":[]}}',
        ][i % 4]
    if kind == "unknown_message":
        return orjson.dumps(
            {
                "message": ["hello", "sync", "HI", None, "", "bye"][i % 6],
                "discovery": {"hostname": host, "labels": []},
            }
        )
    if kind == "many_labels":
        # 10,000 distinct labels: over the 64 KiB packet limit
        return envelope(host, [f"l:{n:05d}" for n in range(10_000)])
    if kind == "label_flood":
        # many distinct valid labels, then one invalid: a packet that is dropped,
        # but only after most of its labels passed validation
        return envelope(host, [f"{i:08d}:{n:02d}:" + "v" * 990 for n in range(60)] + ["bad\n"])
    raise AssertionError(kind)


# kind -> how many of the GARBAGE messages are of this kind (big ones are few)
MIX = {
    "huge": 5,  # ~1 MiB each
    "many_labels": 20,
    "nested": 200,
    "label_flood": 1_500,
    "long_label": 2_000,
    "long_hostname": 2_000,
    "invalid_utf8": 5_000,
    "unknown_message": 10_000,
    "empty_hostname": 10_000,
    "control": 15_000,
    "top_level": 5_000,
    "truncated": 5_000,
    "wrong_types": 20_000,
}
MIX["not_json"] = GARBAGE - sum(MIX.values())


def garbage(kind_counts: dict[str, int], huge: int) -> list[bytes]:
    out = []
    i = 0
    for kind, count in kind_counts.items():
        for _ in range(count):
            if kind == "huge":
                out.append(b'{"message":"hi","discovery":{"hostname":"' + b"x" * huge + b'"}}')
            else:
                out.append(malformed(i, kind))
            i += 1
    return out


def valid_hi(i: int) -> bytes:
    """Valid envelopes, some in the shapes Go peers send (null labels, unknown fields)."""
    host = f"valid-{i:04d}.example"
    if i % 10 == 1:
        return orjson.dumps(
            {"message": "hi", "discovery": {"hostname": host, "labels": None, "last_check": 0}}
        )
    if i % 10 == 2:
        return orjson.dumps(
            {
                "message": "hi",
                "extra": {"future": True},
                "discovery": {"hostname": host, "labels": ["z:1", "a:1", "a:1"], "x": 1},
            }
        )
    return envelope(host, ["fault:valid", f"n:{i}"])


def test_garbage_flood_changes_nothing_but_counters(broker, spawn):
    """100,000 malformed messages mixed with 1,000 valid ones (and 200 goodbyes)."""
    node = spawn("self.example", broker.env(KEEP_ALIVE="5", TTL="300", CLEAN_EVERY="5"))
    wait_for(lambda: node.hostnames() == ["self.example"], what="listed itself")
    time.sleep(0.5)
    rss_before = rss_kb(node.pid)
    lines_before = log_line_count(node)
    received_before = node.get("/v1/stats").json()["packets"]["received"]

    rng = random.Random(1313)
    # NATS: just under nats-server's default max_payload (1 MiB); Redis takes more
    junk = garbage(MIX, huge=MiB - 2048 if broker.kind == "nats" else 2 * MiB)
    assert len(junk) == GARBAGE
    rng.shuffle(junk)
    half = GARBAGE // 2
    first = junk[:half] + [valid_hi(i) for i in range(VALID)]
    second = junk[half:] + [
        envelope(f"valid-{i:04d}.example", [], "goodbye") for i in range(GOODBYES)
    ]
    rng.shuffle(first)
    rng.shuffle(second)

    sent = 0
    batch = 5_000
    for phase in (first, second):
        for start in range(0, len(phase), batch):
            chunk = phase[start : start + batch]
            broker.publish(chunk)
            sent += len(chunk)

            def caught_up(want: int = sent) -> bool:
                got = node.get("/v1/stats").json()["packets"]["received"] - received_before
                return got >= want

            # paced so that no broker buffer overflows: we test validation, not overload
            wait_for(caught_up, 60, what="lobbyd to read the batch")

    expected = ["self.example"] + [f"valid-{i:04d}.example" for i in range(GOODBYES, VALID)]
    wait_for(lambda: node.hostnames() == expected, 10, what="exactly the valid nodes")
    got = {d["hostname"]: d["labels"] for d in node.get("/v1/discoveries").json()}
    assert got["valid-0201.example"] == []
    assert got["valid-0202.example"] == ["a:1", "z:1"]
    assert got["valid-0203.example"] == ["fault:valid", "n:203"]

    # "received" counts its own keep-alives too: the last batch may not be all read yet
    wait_for(lambda: node.get("/v1/stats").json()["packets"]["rejected"] >= GARBAGE, 30)
    stats = node.get("/v1/stats").json()
    packets = stats["packets"]
    assert packets["rejected"] == GARBAGE, packets["rejected_by_reason"]
    assert packets["dropped_slow_consumer"] == 0
    assert packets["received"] - received_before >= GARBAGE + VALID + GOODBYES
    assert node.running

    time.sleep(0.5)
    rss_after = rss_kb(node.pid)
    # the valid nodes' joins and goodbyes are logged (lobby.nodes, summed up above 20 a
    # second): they are news, not garbage; everything else counts
    new = node.output().splitlines()[lines_before:]
    node_events = sum(" lobby.nodes: " in line for line in new)
    new_lines = len(new) - node_events
    print(
        f"\nFIGURE {broker.kind} garbage flood: RSS {rss_before // 1024} MiB -> "
        f"{rss_after // 1024} MiB; {new_lines} new log lines (and {node_events} of node "
        f"events); rejected by reason "
        f"{packets['rejected_by_reason']}"
    )
    assert new_lines <= 30, node.output()[-3000:]
    assert rss_after - rss_before < 50 * 1024, f"RSS grew {rss_before} -> {rss_after} KiB"


# -- hostile HTTP input -------------------------------------------------------------

PROBLEM_CONTROL = "control character"
HOSTILE = [
    # (case id, body, what the 400 must say)
    ("carriage return", b"ok:1\nevil\rlabel\n", PROBLEM_CONTROL),
    ("NUL", b"evil\x00label", PROBLEM_CONTROL),
    ("escape sequence", b"\x1b[31mred", PROBLEM_CONTROL),
    ("DEL", b"del\x7f", PROBLEM_CONTROL),
    ("tab inside", b"a\tb", PROBLEM_CONTROL),
    ("NEL (C1 line break)", "a\u0085b".encode(), PROBLEM_CONTROL),
    ("U+2028 line separator", "inject\u2028service:admin".encode(), "line separator"),
    ("U+2029 paragraph separator", "inject\u2029x".encode(), "line separator"),
    ("2 KiB label", b"x" * 2048, "longer than 1024 bytes"),
    ("1025 bytes", b"y" * 1025, "longer than 1024 bytes"),
    ("multi-byte over 1024 bytes", ("\u20ac" * 342).encode(), "longer than 1024 bytes"),
    ("100k lines", b"\n".join(b"l:%06d" % i for i in range(100_000)), "too many labels"),
    ("invalid UTF-8", b"ok:1\n\xff\xfe\n", "not valid UTF-8"),
    ("lone surrogate bytes", b"\xed\xa0\x80", "not valid UTF-8"),
    ("comment-like label", b"#service:ssh", "'#'"),
]


def _file_state(path) -> tuple[bytes, int, int]:
    st = path.stat()
    return path.read_bytes(), st.st_ino, st.st_mtime_ns


@pytest.mark.parametrize("method", ["POST", "DELETE"])
def test_hostile_labels_get_a_clear_400_and_change_nothing(nats_server, channel, spawn, method):
    node = spawn("a.example", {"NATS_URL": nats_server.url, "NATS_DISCOVERY_CHANNEL": channel})
    assert node.request("POST", "/v1/labels", content="keep:1\nkeep:2\n").status_code == 200
    runtime = node.labels_path / "_runtime"
    before = _file_state(runtime)
    own = node.get("/v1/discovery").json()["labels"]
    assert own == ["keep:1", "keep:2"]
    for case, body, problem in HOSTILE:
        r = node.request(method, "/v1/labels", content=b"keep:3\n" + body)
        if method == "DELETE" and problem == "too many labels":
            # deleting 100k labels that are not there is fine: nothing to write
            assert (r.status_code, r.text) == (200, "OK")
            assert _file_state(runtime) == before
            continue
        assert r.status_code == 400, (case, r.status_code, r.text)
        assert r.headers["content-type"].startswith("text/plain"), case
        assert problem in r.text, (case, r.text)
        assert len(r.text) < 400, (case, "the message should be one short line")
        assert _file_state(runtime) == before, f"{case}: runtime file changed"
        assert node.get("/v1/discovery").json()["labels"] == own, case
    assert sorted(p.name for p in node.labels_path.iterdir()) == ["_runtime"]  # no temp files
    assert node.running


def test_crlf_bodies_and_boundaries_are_accepted(nats_server, channel, spawn):
    """Not hostile, but next to it: CRLF line ends are trimmed, 1024 bytes is allowed."""
    node = spawn("a.example", {"NATS_URL": nats_server.url, "NATS_DISCOVERY_CHANNEL": channel})
    longest = "z" * 1024
    r = node.request("POST", "/v1/labels", content=f"win:1\r\n\r\n  spaced:1  \r\n{longest}\n")
    assert (r.status_code, r.text) == (200, "OK")
    assert node.get("/v1/discovery").json()["labels"] == ["spaced:1", "win:1", longest]
    assert (node.labels_path / "_runtime").read_text() == f"spaced:1\nwin:1\n{longest}\n"


def test_oversized_bodies_get_413(nats_server, channel, spawn):
    node = spawn("a.example", {"NATS_URL": nats_server.url, "NATS_DISCOVERY_CHANNEL": channel})
    assert node.request("POST", "/v1/labels", content="keep:1\n").status_code == 200
    runtime = node.labels_path / "_runtime"
    before = _file_state(runtime)
    over = b"x:1\n" * (MiB // 4) + b"\n"  # 1 MiB + 1 byte of otherwise valid labels

    def chunks():
        for start in range(0, len(over), 64 * 1024):
            yield over[start : start + 64 * 1024]

    with node.client(timeout=10) as http:
        for method in ("POST", "DELETE"):
            r = http.request(method, "/v1/labels", content=over)  # with Content-Length
            assert r.status_code == 413, (method, r.text)
            r = http.request(method, "/v1/labels", content=chunks())  # chunked, no length
            assert r.request.headers.get("transfer-encoding") == "chunked"
            assert "content-length" not in r.request.headers
            assert r.status_code == 413, (method, "chunked", r.text)
        r = http.request("GET", "/v1/discoveries", content=over)  # any route
        assert r.status_code == 413
        r = http.post("/v1/labels", content=b"\n" * MiB)  # exactly 1 MiB is allowed
        assert (r.status_code, r.text) == (200, "OK")
    for length in (b"abc", b"-1", b"99999999999999999999"):
        status = raw_status(
            node.port,
            b"POST /v1/labels HTTP/1.1\r\nHost: t\r\nContent-Length: " + length + b"\r\n\r\nx:1\n",
        )
        assert status in (400, 413), (length, status)
    assert _file_state(runtime) == before
    assert node.running and node.get("/v1/discovery").status_code == 200


def raw_status(port: int, request: bytes) -> int:
    """Send raw bytes (what httpx refuses to send) and return the HTTP status."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        head = sock.recv(4096)
    return int(head.split(b" ", 2)[1])


TOKEN = "s3cret-t0ken"
WRONG_AUTH = [
    {},
    {"Authorization": ""},
    {"Authorization": "Token"},
    {"Authorization": "Token wrong"},
    {"Authorization": TOKEN},
    {"Authorization": f"Bearer {TOKEN}"},
    {"Authorization": f"token {TOKEN}"},
    {"Authorization": f"Token  {TOKEN}"},
    {"Authorization": f"Token {TOKEN[:-1]}"},
    {"Authorization": f"Token {TOKEN}x"},
    {"Authorization": f"Token {TOKEN.upper()}"},
    {"X-Token": TOKEN},
]


def test_every_route_needs_the_token(nats_server, channel, spawn):
    node = spawn(
        "a.example",
        {"NATS_URL": nats_server.url, "NATS_DISCOVERY_CHANNEL": channel, "TOKEN": TOKEN},
    )
    doc = node.get("/openapi.json").json()  # node.get sends the right token
    routes = [(m.upper(), path) for path, ops in doc["paths"].items() for m in ops]
    # public, and telling nothing about the cluster: the health check, the /docs page
    public = [("GET", "/v1/health"), ("GET", "/docs"), ("GET", "/docs/static/docs.js")]
    with httpx.Client(base_url=node.url, timeout=5) as http:
        for method, path in public:
            assert http.request(method, path).status_code == 200, path
        up = {"status": "ok", "brokers": {"NATS": "up"}}
        wait_for(lambda: http.get("/v1/health").json() == up, 15, what="linked")
    routes = [route for route in routes if route not in public]
    routes += [("GET", "/openapi.json"), ("GET", "/nope"), ("PUT", "/v1/labels")]
    routes += [("POST", "/v1/health"), ("GET", "/docs/static/x.js"), ("GET", "/metrics")]
    routes += [("GET", "/v1/discoveries?index=1&wait=1s"), ("GET", "/v1/events?index=0")]
    routes += [("POST", "/ui/"), ("DELETE", "/ui/app.js"), ("GET", "/uix")]  # GET /ui/ is open
    assert ("POST", "/v1/labels") in routes and ("GET", "/v1/stats") in routes
    before = sorted(p.name for p in node.labels_path.iterdir()) if node.labels_path.exists() else []
    with httpx.Client(base_url=node.url, timeout=5) as http:
        for method, path in routes:
            url = path.replace("{name}", "node")
            for headers in WRONG_AUTH:
                r = http.request(method, url, headers=headers, content=b"stolen:1\n")
                assert r.status_code == 403, (method, url, headers, r.status_code)
                assert r.json() == {"message": "access denied"}, (method, url)
                assert r.headers["content-type"].startswith("application/json")
        # the right token opens every (non-streaming) route
        for method, path in routes:
            if path.startswith("/v1/events"):
                continue
            url = path.replace("{name}", "node")
            r = http.request(
                method, url, headers={"Authorization": f"Token {TOKEN}"}, content=b"ok:1\n"
            )
            assert r.status_code != 403, (method, url)
    now = sorted(p.name for p in node.labels_path.iterdir())
    assert now == sorted({*before, "_runtime"})  # only the authorized POST wrote
    assert (node.labels_path / "_runtime").read_text() == ""  # ...and the DELETE removed it
