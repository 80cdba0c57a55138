"""RedisDriver without a server: naming, refusing to publish before the link is up, back-off."""

from __future__ import annotations

import itertools
import time

import pytest
from support import free_port, until

from lobby.drivers.backoff import Backoff
from lobby.drivers.base import DriverError, QueueInbox
from lobby.drivers.redis import RedisDriver, Silence


def test_address_names_the_server_and_db_but_never_the_password() -> None:
    driver = RedisDriver(host="10.0.0.5", port=6380, db=3, password="pw", channel="c")
    assert driver.address == "redis://10.0.0.5:6380/3"
    assert RedisDriver(host="::1").address == "redis://[::1]:6379/0"


def test_channels_follow_redis_channel() -> None:
    assert RedisDriver().channels == {
        "discovery": "lobby:discovery",
        "sync": "lobby:discovery:sync",
    }
    assert RedisDriver(channel="c").channels == {"discovery": "c", "sync": "c:sync"}


def test_query_channels_follow_redis_channel_and_an_agent_subscribes_to_its_replies() -> None:
    listener, agent = RedisDriver(channel="c"), RedisDriver(channel="c", listen=False)
    assert listener.query_channel == b"c:query" and listener.listeners_channel == b"c:listeners"
    assert listener.reply_channel.startswith(b"c:reply:")
    assert agent.reply_channel != listener.reply_channel  # one each
    assert agent._at_connect == [agent.reply_channel]
    assert listener._at_connect == [b"c", b"c:sync", b"c:listeners", listener.reply_channel]
    assert agent.fanout and listener.fanout


async def test_queries_are_framed_and_replies_routed_by_their_token() -> None:
    driver = RedisDriver(channel="c")
    taken: list[tuple[bytes, object]] = []
    driver._on_query = lambda data, reply: taken.append((data, reply))
    driver._query_conn = object()  # type: ignore[assignment]  # as if subscribed
    driver._queried(
        [
            b"c:reply:ab 7\n{query}",
            b"c:reply:ab 8\n",  # an empty query is the handler's to refuse
            b"no newline",
            b"c:reply:ab\n{no token}",
            b"lobby:elsewhere 7\n{not our reply channel}",
            b"c 7\n{the main channel}",
        ]
    )
    assert [data for data, _ in taken] == [b"{query}", b""]
    driver._query_conn = None  # stopped serving: the rest is dropped
    driver._queried([b"c:reply:ab 9\n{late}"])
    assert len(taken) == 2
    # replies: to the inbox their token names, and to no other
    first = driver._inboxes[b"1"] = driver_inbox(driver, b"1")
    driver._replied([b"1\nLQ1 a", b"2\nLQ1 b", b"no newline", b"1\nLQ1 c"])
    assert [first.queue.get_nowait(), first.queue.get_nowait()] == [b"LQ1 a", b"LQ1 c"]
    assert first.queue.empty()
    first.close()
    assert driver._inboxes == {}


def driver_inbox(driver: RedisDriver, token: bytes) -> QueueInbox:
    return QueueInbox("nobody", lambda: driver._inboxes.pop(token, None))


async def test_publish_before_start_raises_and_close_without_start_is_fine() -> None:
    driver = RedisDriver(port=1)
    assert not driver.connected
    with pytest.raises(DriverError, match="not connected to Redis"):
        await driver.publish("discovery", b"hi")
    with pytest.raises(DriverError, match="not connected to Redis"):
        await driver.ask(b"query")
    with pytest.raises(DriverError, match="not connected to Redis"):
        await driver.tell(b"hello")
    await driver.serve_queries(lambda data, reply: None)  # taken up once connected...
    await driver.stop_serving()  # ...or not at all
    assert driver._inboxes == {}
    await driver.flush(0.1)
    await driver.close()
    await driver.close()
    assert driver.dropped == 0


def test_with_sentinels_the_address_names_them_until_they_answer() -> None:
    driver = RedisDriver(sentinels=[("10.0.0.1", 26379), ("::1", 26380)], sentinel_master="m")
    assert driver.address == "sentinel://10.0.0.1:26379,[::1]:26380/m"


async def test_no_sentinel_answering_is_logged_and_retried(caplog) -> None:
    from support import free_port, until

    driver = RedisDriver(sentinels=[("127.0.0.1", free_port())], sentinel_master="m")
    await driver.start(lambda topic, data: None, lambda up: None)
    try:
        await until(lambda: "cannot find the Redis master 'm'" in caplog.text, timeout=5)
        assert not driver.connected
        assert driver._task is not None and not driver._task.done()  # still retrying
    finally:
        await driver.close()
    assert "Traceback" not in caplog.text


def test_switch_master_events_for_other_masters_are_ignored() -> None:
    driver = RedisDriver(sentinels=[("127.0.0.1", 1)], sentinel_master="m")
    driver._master = ("127.0.0.1", 7000)
    driver._switched("other 127.0.0.1 7000 127.0.0.1 7001")
    driver._switched("m garbage")
    assert not driver._moved.is_set()
    driver._switched("m 127.0.0.1 7001 127.0.0.1 7000")  # to where we are already
    assert not driver._moved.is_set()
    driver._switched("m 127.0.0.1 7000 127.0.0.1 7001")
    assert driver._moved.is_set()


# -- back-off (SPEC §14.2): against a port where nothing listens ----------------------------


class TimedBackoff(Backoff):
    """Waits as given; records when each was asked for."""

    def __init__(self, waits: list[float]) -> None:
        super().__init__(0.01)
        self.waits = waits
        self.asked: list[float] = []

    def next(self) -> float:
        self.asked.append(time.monotonic())
        self.failures += 1
        return self.waits[min(self.failures, len(self.waits)) - 1]


async def test_reconnects_wait_as_the_backoff_says_and_failures_are_logged_with_back_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backoff = TimedBackoff([0.3, 0.6] + [0.001] * 200)
    driver = RedisDriver(port=free_port(), backoff=backoff)
    await driver.start(lambda topic, data: None, lambda up: None)
    await until(lambda: len(backoff.asked) >= 20, timeout=30, what="20 failed attempts")
    await driver.close()
    gaps = [later - earlier for earlier, later in itertools.pairwise(backoff.asked)]
    assert gaps[0] >= 0.3 and gaps[1] >= 0.6, gaps  # lower bounds only
    assert "retrying in 0.3 s" in caplog.text
    # each of the first five failures, then one line per doubling interval (10 s first)
    assert caplog.text.count("cannot connect to Redis") == 5


def test_a_reset_while_connecting_over_tls_is_reported_as_tls(caplog) -> None:
    """A refused client certificate can show as a reset (the server's alert lost to its
    RST): over TLS that is the TLS line with what to check; over plain TCP it is not."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    def reset() -> RedisConnectionError:
        try:
            try:
                raise ConnectionResetError(104, "Connection reset by peer")
            except ConnectionResetError as exc:
                raise RedisConnectionError("Error while reading from 127.0.0.1:6380") from exc
        except RedisConnectionError as wrapped:
            return wrapped

    caplog.set_level("WARNING", logger="lobby.redis")
    RedisDriver(port=6380, tls={})._report_failure(reset(), 0.1)
    RedisDriver(port=6380)._report_failure(reset(), 0.1)
    tls, plain = (r.getMessage() for r in caplog.records)
    assert tls.startswith("TLS with Redis rediss://127.0.0.1:6380/0 failed:"), tls
    assert "check REDIS_CA, REDIS_CERT and REDIS_KEY" in tls
    assert plain.startswith("cannot connect to Redis redis://127.0.0.1:6380/0:"), plain


def test_the_sentinel_watchdog_counts_silent_ticks_and_forgives_any_sign_of_life() -> None:
    """lobby.drivers.redis.Silence, the count behind the Sentinel watch's watchdog:
    `limit` PING intervals in a row without a reply or a message mean a silent
    Sentinel; anything heard starts the count again. Ticks, not a clock."""
    silence = Silence(3)
    assert [silence.tick(), silence.tick()] == [False, False]
    silence.heard()  # the pong of a PING, or a +switch-master message
    assert silence.tick() is False and silence.silent == 0
    assert [silence.tick(), silence.tick(), silence.tick()] == [False, False, True]
    assert silence.silent == 3
    silence.heard()
    silence.heard()
    assert silence.tick() is False and silence.silent == 0
    assert Silence(1).tick() is True
