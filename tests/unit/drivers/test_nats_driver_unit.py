"""NatsDriver without a server: naming, refusing to publish, and how it reacts to nats-py.

nats-py does the reconnecting and calls the driver back (disconnected_cb,
reconnected_cb, closed_cb, error_cb, one callback per subscription). `FakeNats`
stands in for its Client: it records what the driver asked for and lets a test fire
those callbacks the way nats-py does. The real thing is in the contract suite
(tests/integration/test_driver_contract.py).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Any
from urllib.parse import urlparse

import pytest
from nats.aio.msg import Msg
from nats.errors import SlowConsumerError
from support import free_port, until

from lobby.drivers import nats as nats_driver
from lobby.drivers.backoff import Backoff
from lobby.drivers.base import DriverError, Topic
from lobby.drivers.nats import NatsDriver
from lobby.system.urls import redact


class FakeNats:
    """Just enough of nats.aio.client.Client for NatsDriver."""

    def __init__(self) -> None:
        self.is_connected = False
        self.is_closed = False
        self.connected_url: Any = None
        self.options: dict[str, Any] = {}
        self.subs: dict[str, Any] = {}
        self.pending_limits: dict[str, int] = {}
        self.published: list[tuple[str, bytes]] = []
        self.flushes: list[float] = []
        self.closes = 0
        self.hold_connect: asyncio.Event | None = None  # connect() waits for it
        self.fail_subscribe: Exception | None = None
        self.fail_publish: Exception | None = None
        self.fail_flush: Exception | None = None

    # -- what the driver calls -------------------------------------------------------

    async def connect(self, **options: Any) -> None:
        self.options = options
        if self.hold_connect is not None:
            await self.hold_connect.wait()
        self.is_connected = True
        self.connected_url = urlparse(options["servers"][0])

    async def subscribe(self, subject: str, *, cb: Any, pending_msgs_limit: int) -> None:
        if self.fail_subscribe is not None:
            raise self.fail_subscribe
        self.subs[subject] = cb
        self.pending_limits[subject] = pending_msgs_limit

    async def flush(self, timeout: float) -> None:
        self.flushes.append(timeout)
        if self.fail_flush is not None:
            raise self.fail_flush

    async def publish(self, subject: str, data: bytes) -> None:
        if self.fail_publish is not None:
            raise self.fail_publish
        self.published.append((subject, data))

    async def close(self) -> None:
        # like nats-py's Client.close(): both callbacks run, inside close()
        self.closes += 1
        self.is_closed = True
        self.is_connected = False
        await self.options["disconnected_cb"]()
        await self.options["closed_cb"]()

    # -- what nats-py would do on its own ---------------------------------------------

    async def lose_link(self) -> None:
        self.is_connected = False
        await self.options["disconnected_cb"]()

    async def reconnect(self) -> None:
        self.is_connected = True
        await self.options["reconnected_cb"]()

    async def give_up(self) -> None:
        self.is_connected = False
        self.is_closed = True
        await self.options["closed_cb"]()

    async def error(self, exc: Exception) -> None:
        await self.options["error_cb"](exc)

    async def deliver(self, subject: str, data: bytes) -> None:
        await self.subs[subject](Msg(self, subject=subject, data=data))  # type: ignore[arg-type]


class Recorder:
    def __init__(self, driver: NatsDriver) -> None:
        self.driver = driver
        self.messages: list[tuple[Topic, bytes]] = []
        self.links: list[bool] = []
        self.fail = False

    def on_message(self, topic: Topic, data: bytes) -> None:
        self.messages.append((topic, data))
        if self.fail:
            raise ValueError("handler bug")

    def on_link(self, up: bool) -> None:
        self.links.append(up)
        if self.fail:
            raise ValueError("link handler bug")


def faked(servers: list[str] | None = None, **kw: Any) -> tuple[NatsDriver, FakeNats, Recorder]:
    driver = NatsDriver(servers or ["nats://127.0.0.1:4222"], "lobby.discovery", **kw)
    fake = FakeNats()
    driver._nc = fake  # type: ignore[assignment]
    return driver, fake, Recorder(driver)


async def started(
    servers: list[str] | None = None, **kw: Any
) -> tuple[NatsDriver, FakeNats, Recorder]:
    driver, fake, r = faked(servers, **kw)
    await driver.start(r.on_message, r.on_link)
    await until(lambda: r.links == [True], what="link up")
    return driver, fake, r


# -- naming -------------------------------------------------------------------------


def test_address_lists_every_server_and_never_a_password_or_token() -> None:
    driver = NatsDriver(
        [
            "nats://alice:s3cret@10.0.0.1:4222",
            "nats://t0ken@10.0.0.2:4222",  # nats-py sends a lone user part as auth_token
            "tls://bob:pa@ss@[fd00::1]:4443",
            "10.0.0.4:4222",
        ],
        "s",
    )
    assert driver.address == (
        "nats://alice:***@10.0.0.1:4222,nats://***@10.0.0.2:4222,"
        "tls://bob:***@[fd00::1]:4443,10.0.0.4:4222"
    )
    for secret in ("s3cret", "t0ken", "pa@ss", "ss@"):
        assert secret not in driver.address


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
        ("127.0.0.1:4222", "127.0.0.1:4222"),
        ("nats://u:p@h", "nats://u:***@h"),
        ("u:p@h:4222", "nats://u:***@h:4222"),
        ("nats://:p@h:1", "nats://:***@h:1"),
        ("nats://tok@h:1", "nats://***@h:1"),
        ("nats://u:p@[::1]:4222", "nats://u:***@[::1]:4222"),
    ],
)
def test_redact(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_subjects_follow_nats_discovery_channel() -> None:
    assert NatsDriver(["nats://h:1"], "lobby.discovery").subjects == {
        "discovery": "lobby.discovery",
        "sync": "lobby.discovery.sync",
    }


async def test_logs_name_the_server_without_its_password(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "lobby.nats")
    driver, fake, _ = await started(["nats://alice:s3cret@127.0.0.1:4222"])
    await fake.lose_link()
    await fake.reconnect()
    await fake.error(ConnectionRefusedError("refused"))
    await driver.close()
    assert "connected to NATS nats://alice:***@127.0.0.1:4222" in caplog.text
    assert "s3cret" not in caplog.text


# -- without a connection -------------------------------------------------------------


async def test_publish_before_start_raises_and_close_without_start_is_fine() -> None:
    driver = NatsDriver(["nats://127.0.0.1:1"], "s")  # the real nats-py client, never used
    assert not driver.connected
    with pytest.raises(DriverError, match="not connected to NATS"):
        await driver.publish("discovery", b"hi")
    await driver.flush(0.1)
    await driver.close()
    await driver.close()
    assert not driver.connected
    assert driver.dropped == 0


async def test_start_returns_before_the_connection_is_made() -> None:
    driver, fake, r = faked()
    fake.hold_connect = asyncio.Event()
    await driver.start(r.on_message, r.on_link)
    await until(lambda: fake.options, what="connect called")
    assert not driver.connected and r.links == []
    with pytest.raises(DriverError):
        await driver.publish("discovery", b"too early")
    fake.hold_connect.set()
    await until(lambda: r.links == [True], what="link up")
    assert driver.connected


async def test_connects_with_reconnect_forever_and_subscribes_both_topics() -> None:
    driver, fake, _ = await started(ping_interval=3, name="lobbyd a.example")
    o = fake.options
    assert o["servers"] == ["nats://127.0.0.1:4222"]
    assert o["name"] == "lobbyd a.example"
    assert o["allow_reconnect"] is True and o["max_reconnect_attempts"] == -1
    assert o["reconnect_time_wait"] == nats_driver.RECONNECT_WAIT
    assert o["ping_interval"] == 3
    assert sorted(fake.subs) == ["lobby.discovery", "lobby.discovery.sync"]
    assert set(fake.pending_limits.values()) == {nats_driver.PENDING_MSGS}
    assert fake.flushes  # subscriptions confirmed by the server before the link is up
    await driver.close()


async def test_failed_setup_is_logged_and_never_reported_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    driver, fake, r = faked()
    fake.fail_subscribe = RuntimeError("boom")
    await driver.start(r.on_message, r.on_link)
    await until(lambda: "NATS connection setup failed: boom" in caplog.text, what="logged")
    assert r.links == [] and not driver.connected
    await driver.close()


# -- messages -------------------------------------------------------------------------


async def test_messages_reach_the_handler_under_their_topic() -> None:
    driver, fake, r = await started()
    await fake.deliver("lobby.discovery", b"main")
    await fake.deliver("lobby.discovery.sync", b"side")
    assert r.messages == [("discovery", b"main"), ("sync", b"side")]
    await driver.close()


async def test_a_failing_handler_is_logged_as_such_and_the_next_message_arrives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    driver, fake, r = await started()
    r.fail = True
    await fake.deliver("lobby.discovery", b"boom")  # nats-py would send this to error_cb
    r.fail = False
    await fake.deliver("lobby.discovery", b"after")
    assert r.messages == [("discovery", b"boom"), ("discovery", b"after")]
    assert "NATS message handler failed: ValueError('handler bug')" in caplog.text
    assert "retrying" not in caplog.text  # not mistaken for a connection failure
    assert r.links == [True]
    await driver.close()


async def test_publish_goes_to_the_topic_subject_and_client_errors_become_driver_errors() -> None:
    driver, fake, _ = await started()
    await driver.publish("discovery", b"hi")
    await driver.publish("sync", b"sync?")
    assert fake.published == [("lobby.discovery", b"hi"), ("lobby.discovery.sync", b"sync?")]
    fake.fail_publish = OSError("buffer full")
    with pytest.raises(DriverError, match="buffer full"):
        await driver.publish("discovery", b"lost")
    fake.fail_publish = RuntimeError()
    with pytest.raises(DriverError, match="RuntimeError"):  # never an empty message
        await driver.publish("discovery", b"lost")
    await driver.close()


async def test_flush_waits_on_the_client_only_while_connected_and_never_raises() -> None:
    driver, fake, _ = await started()
    before = len(fake.flushes)
    await driver.flush(0.5)
    await driver.flush(0)
    assert fake.flushes[before:] == [0.5, 0.01]  # nats-py refuses a zero timeout
    fake.fail_flush = TimeoutError()
    await driver.flush(0.5)
    await fake.lose_link()
    calls = len(fake.flushes)
    await driver.flush(0.5)
    assert len(fake.flushes) == calls
    await driver.close()


# -- slow consumer ----------------------------------------------------------------------


async def test_slow_consumer_errors_are_counted_and_logged_sparingly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    driver, fake, r = await started()
    for _ in range(5):
        await fake.error(SlowConsumerError("lobby.discovery", "", 1, None))  # type: ignore[arg-type]
    assert driver.dropped == 5
    slow = [rec for rec in caplog.records if "slow consumer" in rec.getMessage()]
    assert len(slow) == 1 and "1 dropped so far" in slow[0].getMessage()
    assert r.links == [True] and driver.connected  # falling behind is not a lost link
    await fake.error(ConnectionResetError("reset"))
    assert driver.dropped == 5
    await driver.close()
    await fake.error(SlowConsumerError("lobby.discovery", "", 1, None))  # type: ignore[arg-type]
    assert driver.dropped == 6  # counted even while closing


async def test_connection_errors_are_logged_but_not_after_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    driver, fake, _ = await started()
    await fake.lose_link()  # nats-py reports failed attempts while reconnecting
    await fake.error(ConnectionRefusedError("refused"))
    line = "NATS nats://127.0.0.1:4222: ConnectionRefusedError: refused"
    await until(lambda: line in caplog.text, what="the line, after a moment")
    await driver.close()
    caplog.clear()
    await fake.error(ConnectionRefusedError("refused"))
    assert caplog.text == ""


async def test_credential_and_tls_failures_get_one_clear_line_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import ssl

    driver, fake, _ = await started()
    await fake.lose_link()  # nats-py reports connection failures while not connected
    caplog.clear()
    await fake.error(Exception("nats: 'Authorization Violation'"))
    # nats-py reports a refused client certificate twice: a reset, then the TLS alert
    await fake.error(ConnectionResetError("Connection lost"))
    await fake.error(ssl.SSLError(1, "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca"))
    await asyncio.sleep(nats_driver.ERROR_COALESCE * 3)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "refused our credentials (Authorization Violation): check NATS_TOKEN" in lines[0]
    assert "TLS with NATS nats://127.0.0.1:4222 failed" in lines[1] and "NATS_CA" in lines[1]
    await driver.close()


async def test_a_lone_reset_over_tls_is_a_tls_failure(caplog: pytest.LogCaptureFixture) -> None:
    """Under load the TLS alert of a refused client certificate can be lost to the reset
    after it: over TLS the reset alone gets the TLS line; over plain TCP it does not."""
    for servers, line in (
        (["tls://127.0.0.1:4222"], "TLS with NATS tls://127.0.0.1:4222 failed: "),
        (["nats://127.0.0.1:4222"], "cannot connect to NATS nats://127.0.0.1:4222: "),
    ):
        driver, fake, _ = await started(servers)
        await fake.lose_link()
        caplog.clear()
        await fake.error(ConnectionResetError("Connection lost"))
        await asyncio.sleep(nats_driver.ERROR_COALESCE * 3)
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 1 and lines[0].startswith(line), lines
        assert ("NATS_CERT" in lines[0]) == servers[0].startswith("tls")
        await driver.close()


async def test_a_client_stuck_after_a_failed_tls_handshake_is_replaced(monkeypatch) -> None:
    import ssl

    monkeypatch.setattr(nats_driver, "STALL_AFTER", 0.0)
    monkeypatch.setattr(nats_driver, "Client", FakeNats)
    driver, fake, r = faked()
    fake.hold_connect = asyncio.Event()  # stuck, as nats-py after the failure
    await driver.start(r.on_message, r.on_link)
    await until(lambda: "error_cb" in fake.options, what="connect() called")
    await fake.error(ssl.SSLCertVerificationError(1, "certificate verify failed"))
    await until(lambda: driver._nc is not fake, timeout=5, what="a fresh client")  # type: ignore[comparison-overlap]
    await until(lambda: r.links == [True], what="the fresh client connected")
    await fake.lose_link()  # the old client's callbacks are ignored from now on
    assert r.links == [True] and driver.connected
    await driver.close()


# -- the link -------------------------------------------------------------------------


async def test_nats_py_callbacks_become_link_reports() -> None:
    driver, fake, r = await started()
    await fake.lose_link()
    assert r.links == [True, False] and not driver.connected
    with pytest.raises(DriverError, match="not connected"):
        await driver.publish("discovery", b"while down")
    await fake.reconnect()
    assert r.links == [True, False, True] and driver.connected
    await driver.publish("discovery", b"back")
    assert fake.published == [("lobby.discovery", b"back")]
    await driver.close()


async def test_a_disconnect_before_the_link_was_up_is_not_reported() -> None:
    driver, fake, r = faked()
    fake.hold_connect = asyncio.Event()
    await driver.start(r.on_message, r.on_link)
    await until(lambda: fake.options, what="connect called")
    await fake.options["disconnected_cb"]()
    assert r.links == []
    fake.hold_connect.set()
    await until(lambda: r.links == [True], what="link up")
    await driver.close()


async def test_nats_py_giving_up_is_reported_down(caplog: pytest.LogCaptureFixture) -> None:
    driver, fake, r = await started()
    await fake.give_up()
    assert r.links == [True, False] and not driver.connected
    assert "NATS connection closed" in caplog.text
    await driver.close()


async def test_a_failing_link_handler_does_not_break_nats_py_callbacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    driver, fake, r = faked()
    r.fail = True
    await driver.start(r.on_message, r.on_link)
    await until(lambda: r.links == [True], what="link up")
    # nats-py awaits these inside its reconnect task: an exception would end it for good
    await fake.lose_link()
    await fake.reconnect()
    assert r.links == [True, False, True] and driver.connected
    assert caplog.text.count("NATS link handler failed") == 3
    await driver.close()


# -- closing --------------------------------------------------------------------------


async def test_close_is_idempotent_and_silent() -> None:
    driver, fake, r = await started()
    await driver.close()  # FakeNats.close fires disconnected_cb and closed_cb, as nats-py does
    await driver.close()
    assert fake.closes == 1
    assert r.links == [True]
    assert not driver.connected
    with pytest.raises(DriverError):
        await driver.publish("discovery", b"after close")
    await fake.reconnect()  # whatever nats-py still does, the daemon hears nothing
    assert r.links == [True]
    assert not driver.connected


async def test_close_while_connecting_cancels_the_attempt() -> None:
    driver, fake, r = faked()
    fake.hold_connect = asyncio.Event()  # never set: the server does not answer
    await driver.start(r.on_message, r.on_link)
    await until(lambda: fake.options, what="connect called")
    async with asyncio.timeout(2):
        await driver.close()
    assert driver._task is not None and driver._task.done()
    assert r.links == [] and not driver.connected


# -- back-off (SPEC §14.2) ----------------------------------------------------------------


class ScriptedBackoff(Backoff):
    """Backoff whose waits are given, and which records resets."""

    def __init__(self, waits: list[float]) -> None:
        super().__init__(0.01)
        self.waits = waits
        self.resets = 0

    def next(self) -> float:
        self.failures += 1
        return self.waits[min(self.failures, len(self.waits)) - 1]

    def reset(self) -> None:
        super().reset()
        self.resets += 1


async def test_each_failed_attempt_sets_nats_py_wait_from_the_backoff_and_success_resets_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "lobby.nats")
    driver, fake, _ = await started(backoff=ScriptedBackoff([0.5, 1.0, 2.0]))
    await fake.lose_link()
    for _ in range(3):
        await fake.error(ConnectionRefusedError("refused"))
    assert fake.options["reconnect_time_wait"] == 2.0  # what nats-py sleeps before the next
    assert "retrying in 0.5 s" in caplog.text and "retrying in 2.0 s" in caplog.text
    await fake.reconnect()
    assert fake.options["reconnect_time_wait"] == 0.01  # the first wait again
    assert "reconnected to NATS nats://127.0.0.1:4222 after 3 failed attempts" in caplog.text
    await driver.close()


async def test_failures_past_the_first_five_are_logged_with_back_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    driver, fake, _ = await started(backoff=ScriptedBackoff([0.01]))
    await fake.lose_link()
    for _ in range(200):  # a fast clock would log a few more; the real one, within a second
        await fake.error(ConnectionRefusedError("refused"))
    assert caplog.text.count("cannot connect to NATS") == 5
    await driver.close()


async def test_a_real_client_waits_as_the_backoff_says_between_attempts() -> None:
    """nats-py's own client against a closed port: the gaps between its attempts are
    at least the waits the back-off gave (a lower bound: a slow machine cannot break it)."""
    attempts: list[float] = []

    class Timed(ScriptedBackoff):
        def next(self) -> float:
            attempts.append(time.monotonic())
            return super().next()

    port = free_port()
    driver = NatsDriver([f"nats://127.0.0.1:{port}"], "s", backoff=Timed([0.3, 0.6, 60.0]))
    await driver.start(lambda topic, data: None, lambda up: None)
    await until(lambda: len(attempts) >= 3, timeout=20, what="three failed attempts")
    await driver.close()
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    assert gaps[0] >= 0.3 and gaps[1] >= 0.6, gaps
