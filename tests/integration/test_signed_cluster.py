"""Signed announcements between real lobbyd processes on real brokers (SPEC §13.1).

An attacker here is a raw client on the broker: it publishes forged and replayed
packets on the nodes' channel and must change nothing but the nodes' counters.
"""

from __future__ import annotations

import base64
import os
import time

import orjson
from support import Broker, Lobbyd, envelope, wait_for

from lobby.core.signing import Keyring, decode_key

K1 = base64.b64encode(os.urandom(32)).decode()
K2 = base64.b64encode(os.urandom(32)).decode()
INTRUDER_KEY = base64.b64encode(os.urandom(32)).decode()


def sign(key: str, message: str, hostname: str, labels: list[str], ts: int) -> bytes:
    """A packet signed as a peer would sign it."""
    labels = sorted(labels)
    sig = Keyring([decode_key(key)]).sign(message, hostname, ts, labels)
    doc = orjson.loads(envelope(hostname, labels, message))
    return orjson.dumps({**doc, "ts": ts, "sig": sig})


def hostnames(node: Lobbyd) -> list[str]:
    return sorted(node.hostnames())


def counted(node: Lobbyd, **want: int) -> bool:
    got = node.rejected()
    return all(got.get(reason, 0) >= n for reason, n in want.items())


def no_tracebacks(*nodes: Lobbyd) -> None:
    for node in nodes:
        assert "Traceback" not in node.output(), node.output()


def test_forged_and_replayed_packets_change_nothing(spawn, broker: Broker):
    # TTL 120: the replayed packet must still be fresh enough to count as a replay, not stale
    env = broker.env(SIGNING_KEYS=K1, KEEP_ALIVE="1", LABELS="role:web", TTL="120")
    a = spawn("a", env)
    b = spawn("b", env)
    wait_for(lambda: hostnames(a) == ["a", "b"] == hostnames(b), 15, what="a and b see each other")

    def a_hi(data: bytes) -> bool:
        doc = orjson.loads(data)
        return doc["message"] == "hi" and doc["discovery"]["hostname"] == "a"

    captured = broker.capture(a_hi)
    assert orjson.loads(captured)["sig"].startswith(Keyring([decode_key(K1)]).signer.id + ".")
    ts = orjson.loads(captured)["ts"]
    broker.publish(
        [
            envelope("intruder", ["role:web"]),  # a forged "hi" for a new hostname
            envelope("b", None, "goodbye"),  # a forged goodbye for a real node
            sign(INTRUDER_KEY, "goodbye", "a", [], ts + 10),  # signed with an unknown key
            sign(INTRUDER_KEY, "hi", "intruder", ["role:db"], ts + 10),
            captured.replace(b"role:web", b"role:wex"),  # a flipped byte in a label
        ]
    )
    want = {"unsigned": 2, "unknown_key": 2, "bad_signature": 1}
    wait_for(lambda: counted(a, **want) and counted(b, **want), 10, what=f"both count {want}")
    for node in (a, b):
        assert hostnames(node) == ["a", "b"]
        assert node.get("/v1/discoveries").json()[0]["labels"] == ["role:web"]
        rejected = node.rejected()
        assert {r: rejected.get(r) for r in want} == want, rejected
        stats = node.stats()["signing"]
        assert stats["enabled"] and (stats["signed_nodes"], stats["unsigned_nodes"]) == (2, 0)
        assert K1 not in node.get("/v1/stats").text

    assert a.stop() == 0  # says goodbye, signed
    wait_for(lambda: hostnames(b) == ["b"], 10, what="b drops a after its goodbye")
    broker.publish([captured])  # a's real "hi", captured earlier, replayed
    wait_for(lambda: counted(b, replay=1), 10, what="b counts the replay")
    assert hostnames(b) == ["b"]
    no_tracebacks(a, b)
    assert K1 not in a.output() + b.output()


def test_key_rotation_never_loses_a_peer(spawn, nats_server, channel, tmp_path):
    """Serf's steps: add the new key second, make it first, drop the old one; one node at
    a time, so at every moment the two nodes hold different keyrings."""
    base = {
        "NATS_URL": nats_server.url,
        "NATS_DISCOVERY_CHANNEL": channel,
        "KEEP_ALIVE": "1",
    }
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# the old key\n{K1}\n")
    nodes = {
        "a": spawn("a", {**base, "SIGNING_KEYS_FILE": str(keys_file)}),
        "b": spawn("b", {**base, "SIGNING_KEYS": K1}),
    }
    wait_for(lambda: hostnames(nodes["a"]) == ["a", "b"] == hostnames(nodes["b"]), 15)
    steps = [f"{K1},{K2}", f"{K2},{K1}", K2]
    for keys in steps:
        for name in ("a", "b"):
            nodes[name].stop()
            nodes[name] = spawn(name, {**base, "SIGNING_KEYS": keys})
            for node in nodes.values():
                wait_for(
                    lambda node=node: hostnames(node) == ["a", "b"],
                    15,
                    what=f"{node.name} sees both after {name} took keys #{steps.index(keys)}",
                )
                rejected = node.rejected()
                assert not rejected.get("unknown_key") and not rejected.get("bad_signature")
    # and the test can fail: a node that skipped a step is refused by the other
    nodes["a"].stop()
    nodes["a"] = spawn("a", {**base, "SIGNING_KEYS": K1})
    wait_for(lambda: counted(nodes["b"], unknown_key=1), 10, what="b refuses a's old key")
    assert hostnames(nodes["b"]) == ["b"]


def test_mixed_cluster_with_accept_unsigned(spawn, broker: Broker):
    node = spawn("py", broker.env(SIGNING_KEYS=K1, ACCEPT_UNSIGNED="true", KEEP_ALIVE="1"))
    wait_for(lambda: hostnames(node) == ["py"], 10)
    ts = int(time.time() * 1000)
    broker.publish(
        [
            envelope("go1", ["service:web"]),  # a Go peer: unsigned, Go's exact bytes
            sign(K1, "hi", "py2", ["service:db"], ts),  # a Python peer, signed
        ]
    )
    wait_for(lambda: hostnames(node) == ["go1", "py", "py2"], 10, what="go1 and py2 listed")
    broker.publish(
        [
            envelope("py2", ["service:evil"]),  # py2 was seen signed: refused unsigned
            envelope("py2", None, "goodbye"),
            sign(INTRUDER_KEY, "hi", "go1", ["service:evil"], ts + 1),  # still verified
        ]
    )
    wait_for(lambda: counted(node, unsigned=2, unknown_key=1), 10, what="refusals counted")
    found = {d["hostname"]: d["labels"] for d in node.get("/v1/discoveries").json()}
    assert found == {"go1": ["service:web"], "py": [], "py2": ["service:db"]}
    stats = node.stats()["signing"]
    assert (stats["signed_nodes"], stats["unsigned_nodes"]) == (2, 1)
    no_tracebacks(node)
