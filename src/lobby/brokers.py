"""The drivers DRIVER names, built from the settings (SPEC §7, §15).

One driver per entry of DRIVER (`NATS`, `Redis`, or both, in the order given), each
with its own settings as with a single driver. With NATS in the list and NATS_URL
empty, the embedded nats-server is started or joined first (SPEC §3). Redis is found
through Sentinel when REDIS_SENTINELS is set.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from lobby.config import Settings
from lobby.drivers.base import Driver

if TYPE_CHECKING:
    from lobby.embedded import EmbeddedNats


log = logging.getLogger("lobby")


class BrokerSetupError(Exception):
    """A driver cannot be built (the embedded nats-server did not start)."""


async def make_drivers(
    settings: Settings, hostname: str
) -> tuple[list[tuple[str, Driver]], EmbeddedNats | None]:
    """[(name, driver), ...] in DRIVER's order, and the embedded nats-server if one runs."""
    drivers: list[tuple[str, Driver]] = []
    embedded = None
    if settings.redis_sentinels and "Redis" not in settings.drivers:
        log.warning("REDIS_SENTINELS is set but DRIVER has no Redis: it is not used")
    for name in settings.drivers:
        if name == "Redis":
            drivers.append((name, _redis(settings)))
            continue
        servers = settings.nats_servers
        if not servers:
            embedded = await _embedded(settings)
            servers = [embedded.url]
        drivers.append((name, _nats(settings, servers, hostname)))
    return drivers, embedded


def _redis(s: Settings) -> Driver:
    from lobby.drivers.redis import RedisDriver

    return RedisDriver(
        host=s.redis_host,
        port=s.redis_port,
        db=s.redis_db,
        password=s.redis_password,
        channel=s.redis_channel,
        sentinels=s.sentinels,
        sentinel_master=s.redis_sentinel_master,
    )


def _nats(s: Settings, servers: list[str], hostname: str) -> Driver:
    from lobby.drivers.nats import NatsDriver

    return NatsDriver(
        servers,
        s.nats_discovery_channel,
        ping_interval=max(1, min(s.keep_alive, 10)),
        name=f"lobbyd {hostname}",
    )


async def _embedded(s: Settings) -> EmbeddedNats:
    from lobby.embedded import EmbeddedError, EmbeddedNats

    embedded = EmbeddedNats(s.embedded_nats_port)
    try:
        await embedded.start()
    except (EmbeddedError, OSError) as exc:
        raise BrokerSetupError(str(exc)) from exc
    return embedded
