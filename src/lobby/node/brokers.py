"""The drivers DRIVER names, built from the settings (SPEC §7, §13.3, §15).

One driver per entry of DRIVER (`NATS`, `Redis`, or both, in the order given), each
with its own settings as with a single driver: address, credentials and TLS. With NATS
in the list and NATS_URL empty, the embedded nats-server is started or joined first
(SPEC §3). Redis is found through Sentinel when REDIS_SENTINELS is set.

Every file named here was checked at start (lobby.config.check_files), so a missing
or unreadable one has already stopped lobbyd with exit status 2. The settings come in
as `BrokerSettings`, which lobby.config.Settings satisfies. Secrets
(passwords, tokens, seeds) go to the client library only, never to a log line:
drivers log their `address`, which holds none.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from lobby.drivers.backoff import AGENT_JITTER, JITTER, Backoff, reconnect_backoff
from lobby.drivers.base import Driver

if TYPE_CHECKING:  # each client library is imported only when its driver is used
    from lobby.drivers.embedded import EmbeddedNats

log = logging.getLogger("lobby")


class BrokerSettings(Protocol):
    """The settings the drivers are built from (lobby.config.Settings has them)."""

    @property
    def drivers(self) -> Sequence[str]: ...
    @property
    def keep_alive(self) -> int: ...
    @property
    def ttl(self) -> int: ...
    @property
    def listen(self) -> bool: ...
    @property
    def nats_servers(self) -> list[str]: ...
    @property
    def nats_discovery_channel(self) -> str: ...
    @property
    def embedded_nats_port(self) -> int: ...
    @property
    def nats_ca(self) -> str: ...
    @property
    def nats_cert(self) -> str: ...
    @property
    def nats_key(self) -> str: ...
    @property
    def nats_creds(self) -> str: ...
    @property
    def nats_nkey_seed(self) -> str: ...
    @property
    def nats_token(self) -> str: ...
    @property
    def redis_host(self) -> str: ...
    @property
    def redis_port(self) -> int: ...
    @property
    def redis_db(self) -> int: ...
    @property
    def redis_channel(self) -> str: ...
    @property
    def redis_username(self) -> str: ...
    @property
    def redis_password(self) -> str: ...
    @property
    def redis_tls(self) -> bool: ...
    @property
    def redis_ca(self) -> str: ...
    @property
    def redis_cert(self) -> str: ...
    @property
    def redis_key(self) -> str: ...
    @property
    def redis_sentinels(self) -> Sequence[tuple[str, int]]: ...
    @property
    def redis_sentinel_master(self) -> str: ...
    @property
    def redis_sentinel_username(self) -> str: ...
    @property
    def redis_sentinel_password(self) -> str: ...
    @property
    def redis_sentinel_tls(self) -> bool: ...


class BrokerSetupError(Exception):
    """A driver cannot be built (the embedded nats-server did not start)."""


async def make_drivers(
    settings: BrokerSettings, hostname: str
) -> tuple[list[tuple[str, Driver]], EmbeddedNats | None]:
    """[(name, driver), ...] in DRIVER's order, and the embedded nats-server if one runs."""
    drivers: list[tuple[str, Driver]] = []
    embedded = None
    if settings.redis_sentinels and "Redis" not in settings.drivers:
        log.warning("REDIS_SENTINELS is set but DRIVER has no Redis: it is not used")
    for name in settings.drivers:
        if name == "Redis":
            drivers.append((name, redis_driver(settings)))
            continue
        servers = settings.nats_servers
        if not servers:
            embedded = await _embedded(settings)
            servers = [embedded.url]
        drivers.append((name, nats_driver(settings, servers, f"lobbyd {hostname}")))
    return drivers, embedded


def client_tls(ca: str = "", cert: str = "", key: str = "") -> ssl.SSLContext:
    """A client context: the server verified against `ca` (else the system CAs,
    SSL_CERT_FILE honoured), with a client certificate when `cert` is given."""
    context = ssl.create_default_context(cafile=ca or None)
    if cert:
        context.load_cert_chain(cert, key)
    return context


def nats_options(s: BrokerSettings) -> dict[str, Any]:
    """nats-py connect options for TLS and credentials."""
    options: dict[str, Any] = {}
    if s.nats_ca or s.nats_cert:
        options["tls"] = client_tls(s.nats_ca, s.nats_cert, s.nats_key)
    if s.nats_creds:
        options["user_credentials"] = s.nats_creds
    if s.nats_nkey_seed:
        options["nkeys_seed"] = s.nats_nkey_seed
    if s.nats_token:
        options["token"] = s.nats_token
    return options


def nats_driver(s: BrokerSettings, servers: list[str], name: str) -> Driver:
    from lobby.drivers.nats import NatsDriver

    return NatsDriver(
        servers,
        s.nats_discovery_channel,
        ping_interval=max(1, min(s.keep_alive, 10)),
        name=name,
        options=nats_options(s),
        backoff=_backoff(s),
        listen=s.listen,
    )


def _backoff(s: BrokerSettings) -> Backoff:
    """Agents spread their reconnects wider (±50 %): 100,000 of them come back to a
    restarted broker over seconds, not at once (SPEC §20)."""
    return reconnect_backoff(s.ttl, jitter=JITTER if s.listen else AGENT_JITTER)


def redis_tls(s: BrokerSettings, wanted: bool) -> dict[str, Any] | None:
    """redis-py SSL options when `wanted` (REDIS_TLS for the server, REDIS_SENTINEL_TLS
    for the Sentinels), or None for plain TCP."""
    if not wanted:
        return None
    options: dict[str, Any] = {}
    if s.redis_ca:
        options["ssl_ca_certs"] = s.redis_ca
    if s.redis_cert:
        options["ssl_certfile"] = s.redis_cert
        options["ssl_keyfile"] = s.redis_key
    return options


def redis_driver(s: BrokerSettings) -> Driver:
    from lobby.drivers.redis import RedisDriver

    return RedisDriver(
        host=s.redis_host,
        port=s.redis_port,
        db=s.redis_db,
        username=s.redis_username,
        password=s.redis_password,
        channel=s.redis_channel,
        tls=redis_tls(s, s.redis_tls),
        sentinels=s.redis_sentinels,
        sentinel_master=s.redis_sentinel_master,
        sentinel_username=s.redis_sentinel_username or None,
        sentinel_password=s.redis_sentinel_password or None,
        sentinel_tls=redis_tls(s, s.redis_sentinel_tls),
        backoff=_backoff(s),
        listen=s.listen,
    )


async def _embedded(s: BrokerSettings) -> EmbeddedNats:
    from lobby.drivers.embedded import EmbeddedError, EmbeddedNats

    embedded = EmbeddedNats(s.embedded_nats_port)
    try:
        await embedded.start()
    except (EmbeddedError, OSError) as exc:
        raise BrokerSetupError(str(exc)) from exc
    return embedded
