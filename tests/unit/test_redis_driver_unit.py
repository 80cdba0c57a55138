"""RedisDriver without a server: naming, and refusing to publish before the link is up."""

from __future__ import annotations

import pytest

from lobby.drivers.base import DriverError
from lobby.drivers.redis import RedisDriver


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


async def test_publish_before_start_raises_and_close_without_start_is_fine() -> None:
    driver = RedisDriver(port=1)
    assert not driver.connected
    with pytest.raises(DriverError, match="not connected to Redis"):
        await driver.publish("discovery", b"hi")
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
