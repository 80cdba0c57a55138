"""Fast join, blocking queries and the event stream, on real brokers and real HTTP."""

import contextlib
import sys
import threading
import time
from pathlib import Path

import httpx
import orjson
from support import Proc, wait_for

HERE = Path(__file__).parent.parent


def test_fresh_node_lists_50_live_nodes_long_before_keep_alive(broker, spawn, procs, tmp_path):
    env = broker.env(KEEP_ALIVE="30", TTL="90")
    crowd = Proc(
        [sys.executable, str(HERE / "peers.py"), "50", "peer"],
        tmp_path / "peers.log",
        {**env, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(HERE)},
    )
    procs.append(crowd)
    crowd.start()
    wait_for(lambda: "ready" in crowd.output(), what="peers up")
    time.sleep(1)  # let their first announcements pass: the fresh node must ask
    fresh = spawn("fresh.example", env)
    names = wait_for(
        lambda: len(fresh.hostnames()) == 51 and fresh.hostnames(), timeout=20, what="51 nodes"
    )
    assert names[0] == "fresh.example" and names[-1] == "peer049"
    # KEEP_ALIVE is 30 s: without the sync they would trickle in over 30 s
    assert crowd.running


def test_blocking_query(broker, spawn):
    a = spawn("a.example", broker.env(KEEP_ALIVE="1"))
    wait_for(lambda: a.hostnames() == ["a.example"], what="a listed")
    r = a.get("/v1/discoveries")
    index = int(r.headers["x-lobby-index"])
    # no change: held for the wait, then answered as usual
    started = time.monotonic()
    r = a.get("/v1/discoveries", params={"index": index, "wait": "1s"})
    held = time.monotonic() - started
    assert r.status_code == 200 and int(r.headers["x-lobby-index"]) == index
    assert held >= 0.9  # it did wait (the lower bound is the contract, not a speed)
    # a change releases it
    result = {}

    def block():
        result["r"] = a.get("/v1/discoveries", params={"index": index, "wait": "30s"}, timeout=40)

    t = threading.Thread(target=block)
    t.start()
    wait_for(lambda: a.get("/v1/stats").json()["watchers"]["blocking"] == 1, what="query held")
    assert t.is_alive()
    a.request("POST", "/v1/labels", content="new:label\n")
    t.join(10)
    assert not t.is_alive()
    assert int(result["r"].headers["x-lobby-index"]) > index
    assert result["r"].json()[0]["labels"] == ["new:label"]
    # an old index answers at once; bad parameters are 400
    assert a.get("/v1/discoveries", params={"index": 0}).status_code == 200
    assert a.get("/v1/discoveries", params={"index": "x"}).status_code == 400
    assert a.get("/v1/discoveries", params={"index": index, "wait": "soon"}).status_code == 400
    for path in ["/", "/v1/discovery", "/v1/resolve?label=x", "/v1/prometheus/node"]:
        assert "x-lobby-index" in a.get(path).headers, path


def read_events(
    client: httpx.Client, path: str, count: int, headers=None
) -> list[tuple[str, dict]]:
    events: list[tuple[str, dict]] = []
    with client.stream("GET", path, headers=headers, timeout=20) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind:
                events.append((kind, orjson.loads(line[6:])))
                if len(events) >= count:
                    break
    return events


def test_event_stream_delivers_join_update_leave_in_order(broker, spawn):
    a = spawn("a.example", broker.env(KEEP_ALIVE="1", TTL="60", LABELS="service:web"))
    wait_for(lambda: a.hostnames() == ["a.example"], what="a listed")
    got: list = []

    def watch():
        with a.client() as c:
            got.extend(read_events(c, "/v1/events", 5))

    def watch_filtered():
        with a.client() as c:
            got_f.extend(read_events(c, "/v1/events?labels=role:db", 2))

    got_f: list = []
    threads = [threading.Thread(target=watch), threading.Thread(target=watch_filtered)]
    for t in threads:
        t.start()
    wait_for(lambda: a.get("/v1/stats").json()["watchers"]["streams"] == 2, what="2 watchers")
    b = spawn("b.example", broker.env(KEEP_ALIVE="1", TTL="60"))  # join
    wait_for(lambda: "b.example" in a.hostnames(), what="b on a")
    b.request("POST", "/v1/labels", content="role:db\n")  # update (join for the filtered view)
    wait_for(lambda: a.get("/v1/discoveries?labels=role:db").json(), what="role on a")
    b.request("DELETE", "/v1/labels", content="role:db\n")  # update (leave: unmatched)
    wait_for(lambda: not a.get("/v1/discoveries?labels=role:db").json(), what="role gone")
    b.stop()  # leave (goodbye)
    for t in threads:
        t.join(15)
    assert [(k, e["hostname"]) for k, e in got] == [
        ("join", "a.example"),
        ("join", "b.example"),
        ("update", "b.example"),
        ("update", "b.example"),
        ("leave", "b.example"),
    ]
    assert got[0][1]["labels"] == ["service:web"]
    assert got[2][1]["labels"] == ["role:db"] and got[3][1]["labels"] == []
    assert got[4][1]["reason"] == "goodbye"
    indexes = [e["index"] for _, e in got[1:]]
    assert indexes == sorted(indexes)
    assert [(k, e["hostname"], e["labels"], e.get("reason")) for k, e in got_f] == [
        ("join", "b.example", ["role:db"], None),
        ("leave", "b.example", ["role:db"], "unmatched"),
    ]
    wait_for(lambda: a.get("/v1/stats").json()["watchers"]["streams"] == 0, what="watchers gone")


def test_event_stream_resumes_from_last_event_id(broker, spawn):
    a = spawn("a.example", broker.env(KEEP_ALIVE="1", TTL="60"))
    wait_for(lambda: a.hostnames() == ["a.example"], what="a listed")
    index = int(a.get("/v1/discoveries").headers["x-lobby-index"])
    a.request("POST", "/v1/labels", content="x:1\n")
    wait_for(lambda: a.get("/v1/discoveries?labels=x:1").json(), what="x on a")
    with a.client() as c:
        events = read_events(c, "/v1/events", 1, headers={"Last-Event-ID": str(index)})
    assert events[0][0] == "update" and events[0][1]["labels"] == ["x:1"]
    with a.client() as c:
        events = read_events(c, "/v1/events", 2, headers={"Last-Event-ID": "999999"})
    assert [k for k, _ in events] == ["reset", "join"]


def test_client_disconnect_leaves_nothing_behind(broker, spawn):
    a = spawn("a.example", broker.env(KEEP_ALIVE="1"))
    for _ in range(5):
        with a.client() as c, c.stream("GET", "/v1/events") as r:
            next(r.iter_lines())
    with a.client() as c, contextlib.suppress(httpx.ReadTimeout):
        c.get(
            "/v1/discoveries",
            params={"index": a.get("/").headers["x-lobby-index"], "wait": "60s"},
            timeout=0.5,
        )
    wait_for(
        lambda: a.get("/v1/stats").json()["watchers"] == {"streams": 0, "blocking": 0},
        what="no watchers left",
    )


def test_client_watch_sync_and_async_and_lobbyctl_watch(nats_server, channel, spawn):
    import asyncio
    import subprocess

    from lobby import AsyncLobby, Lobby

    env = {
        "NATS_URL": nats_server.url,
        "NATS_DISCOVERY_CHANNEL": channel,
        "KEEP_ALIVE": "1",
        "TTL": "60",
        "LABELS": "service:web",
    }
    a = spawn("a.example", env)
    wait_for(lambda: a.hostnames() == ["a.example"], what="a listed")
    with Lobby("127.0.0.1", a.port) as lobby:
        stream = lobby.watch(labels=["role:db"])
        a.request("POST", "/v1/labels", content="role:db\n")
        first = next(stream)
        stream.close()
    assert (first["event"], first["hostname"], first["labels"]) == (
        "join",
        "a.example",
        ["role:db"],
    )

    async def async_watch():
        async with AsyncLobby("127.0.0.1", a.port) as lobby:
            gen = lobby.watch(prefixes=["service:"])
            event = await gen.__anext__()
            await gen.aclose()
            return event

    event = asyncio.run(async_watch())
    assert (event["event"], event["labels"]) == ("join", ["service:web"])

    ctl = subprocess.Popen(
        [sys.executable, "-m", "lobby.ctl", "-port", str(a.port), "watch", "search", "role:"],
        stdout=subprocess.PIPE,
        text=True,
        env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1"},
    )
    try:
        assert ctl.stdout.readline() == "join   a.example  role:db\n"
        a.request("DELETE", "/v1/labels", content="role:db\n")
        assert ctl.stdout.readline() == "leave  a.example  role:db  (unmatched)\n"
    finally:
        ctl.kill()
        ctl.wait()
    json_ctl = subprocess.run(
        [
            sys.executable,
            "-m",
            "lobby.ctl",
            "-port",
            str(a.port + 1 if a.port < 65535 else 1),
            "watch",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert json_ctl.returncode == 1 and "cannot reach lobbyd" in json_ctl.stderr
