"""The daemon on the in-memory broker: lifecycle logic, fast and deterministic."""

import asyncio
from collections.abc import Callable

import orjson
import pytest
from apiwire import client as api_client
from support import until

from lobby import config
from lobby.api import Api
from lobby.core.model import Discovery, encode_envelope
from lobby.daemon import Daemon
from lobby.drivers.memory import MemoryBroker


@pytest.fixture
def broker(memory_broker: MemoryBroker) -> MemoryBroker:
    return memory_broker


@pytest.fixture
def make(memory_daemons: Callable[..., Daemon]) -> Callable[..., Daemon]:
    return memory_daemons


def hosts(daemon: Daemon) -> list[str]:
    return [d.hostname for d in daemon.registry.discoveries()]


async def test_nodes_hear_each_other_and_themselves(make):
    a = make("a", LABELS="service:web")
    b = make("b")
    await until(lambda: hosts(a) == ["a", "b"] and hosts(b) == ["a", "b"])
    assert a.registry.get("a").labels == ("service:web",)


async def test_register_false_listens_but_never_announces(make, broker):
    make("a")
    c = make("client", REGISTER="false")
    await until(lambda: hosts(c) == ["a"])
    c.stop()
    await asyncio.sleep(0.05)
    assert all(b"client" not in data for topic, data in broker.published if topic == "discovery")


async def test_goodbye_on_stop_removes_node_from_peers(make, broker):
    a = make("a")
    b = make("b")
    await until(lambda: hosts(a) == ["a", "b"])
    b.stop()
    await until(lambda: hosts(a) == ["a"])
    # b's last word is its goodbye (a may well announce after it)
    from_b = [data for topic, data in broker.published if topic == "discovery" and b'"b"' in data]
    assert from_b[-1] == encode_envelope("goodbye", Discovery("b", ()))


async def test_garbage_is_counted_and_changes_nothing(make, broker):
    a = make("a")
    await until(lambda: hosts(a) == ["a"])
    index = a.registry.index
    for junk in [b"junk", b"{}", b'{"message":"hi","discovery":{"hostname":""}}', b"\xff" * 10]:
        broker.inject("discovery", junk)
    await until(lambda: sum(a.presence.rejected.values()) == 4)
    assert hosts(a) == ["a"] and a.registry.index == index
    assert a.stats()["packets"]["rejected_by_reason"] == {
        "bad_hostname": 1,
        "bad_message": 1,
        "not_json": 2,
    }


async def test_label_change_is_announced_at_once(make):
    a = make("a", KEEP_ALIVE="60")
    b = make("b", KEEP_ALIVE="60")
    await until(lambda: hosts(b) == ["a", "b"])
    await a.add_labels(["service:new"])
    assert a.own_discovery().labels == ("service:new",)
    await until(lambda: b.registry.get("a").labels == ("service:new",), timeout=10)
    await a.delete_labels(["service:new"])
    await until(lambda: b.registry.get("a").labels == (), timeout=10)


async def test_labels_from_a_new_file_are_announced(make, tmp_path):
    make("a", KEEP_ALIVE="60")
    b = make("b", KEEP_ALIVE="60")
    await until(lambda: "a" in b.registry)
    (tmp_path / "a").mkdir(exist_ok=True)
    (tmp_path / "a" / "static").write_text("static:file\n")
    await until(lambda: b.registry.get("a").labels == ("static:file",), timeout=3)


async def test_env_labels_cannot_be_deleted(make):
    a = make("a", LABELS="env:1")
    await a.delete_labels(["env:1"])
    assert a.own_discovery().labels == ("env:1",)


async def test_too_many_labels_are_refused(make):
    from lobby.core.model import LabelError

    a = make("a")
    with pytest.raises(LabelError, match="bytes"):
        await a.add_labels([f"label:{i:05d}" + "x" * 1000 for i in range(70)])
    assert a.own_discovery().labels == ()


async def test_link_down_pauses_expiry_and_reconnect_announces(make, broker):
    a = make("a", KEEP_ALIVE="60", TTL="60")
    await until(lambda: hosts(a) == ["a"])
    broker.set_up(False)
    assert a.registry.paused
    sent = a.presence.sent
    broker.set_up(True)
    await until(lambda: a.presence.sent == sent + 1)  # announced at once after reconnecting
    assert not a.registry.paused


async def test_own_hi_not_coming_back_pauses_expiry(make, broker):
    a = make("a", KEEP_ALIVE="1", TTL="60")
    await until(lambda: hosts(a) == ["a"])
    driver = broker.drivers[0]
    driver.deliver = lambda topic, data: None  # a cut link that still looks open
    await until(lambda: a.registry.paused, timeout=5)
    del driver.deliver
    await until(lambda: not a.registry.paused, timeout=5)


async def test_hostname_change_says_goodbye_for_the_old_name(tmp_path, broker):
    names = iter(["old", "old"])
    current = {"name": "old"}
    settings = config.load({"DISABLE_API": "1", "KEEP_ALIVE": "1", "LABELS_PATH": str(tmp_path)})
    daemon = Daemon(settings, driver=broker.driver(), system_hostname=lambda: current["name"])
    del names
    task = asyncio.create_task(daemon.run())
    await until(lambda: hosts(daemon) == ["old"])
    current["name"] = "new"
    await until(lambda: hosts(daemon) == ["new"], timeout=5)
    daemon.stop()
    assert await task == 0
    messages = [orjson.loads(data) for topic, data in broker.published if topic == "discovery"]
    old_bye = messages.index(
        {"discovery": {"hostname": "old", "labels": [], "last_check": 0}, "message": "goodbye"}
    )
    new_hi = next(i for i, m in enumerate(messages) if m["discovery"]["hostname"] == "new")
    assert old_bye < new_hi


async def test_api_in_process(make, tmp_path):
    a = make("a", LABELS="service:web", TOKEN="s3cret")
    await until(lambda: hosts(a) == ["a"])
    app = Api(a, token="s3cret")
    auth = {"Authorization": "Token s3cret"}
    async with api_client(app, base_url="http://t") as http:
        r = await http.get("/v1/discoveries")
        assert r.status_code == 403
        assert r.content == b'{\n "message": "access denied"\n}\n'
        r = await http.get("/v1/discoveries", headers={"Authorization": "Token wrong"})
        assert r.status_code == 403
        r = await http.get("/v1/discoveries", headers=auth)
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json; charset=UTF-8"
        assert r.json()[0]["labels"] == ["service:web"]
        assert r.text.startswith('[\n  {\n    "hostname": "a",') and r.text.endswith("\n")
        r = await http.post("/v1/labels", content="x:1\n\ny:2\n", headers=auth)
        assert (r.status_code, r.text) == (200, "OK")
        r = await http.get("/v1/discovery", headers=auth)
        assert r.json() == {
            "hostname": "a",
            "labels": ["service:web", "x:1", "y:2"],
            "last_check": 0,
        }
        r = await http.post("/v1/labels", content="ok:1\nbad\x00\n", headers=auth)
        assert r.status_code == 400 and "bad" in r.text
        r = await http.get("/v1/resolve", headers=auth)
        assert r.status_code == 400 and r.headers["content-type"].startswith("text/plain")
        r = await http.get("/nope", headers=auth)
        assert r.status_code == 404
        r = await http.put("/v1/labels", headers=auth)
        assert r.status_code == 405
        r = await http.post("/v1/labels", content=b"a" * (1024 * 1024 + 1), headers=auth)
        assert r.status_code == 413
