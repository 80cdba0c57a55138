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
