"""From settings to a broker driver: address, credentials and TLS (SPEC §13.3).

Every file named here was checked when the settings were loaded (lobby.config), so a
missing or unreadable one has already stopped lobbyd with exit status 2. Secrets
(passwords, tokens, seeds) go to the client library only, never to a log line:
drivers log their `address`, which holds none.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

from lobby.config import Settings

if TYPE_CHECKING:  # each client library is imported only when its driver is used
    from lobby.drivers.nats import NatsDriver
    from lobby.drivers.redis import RedisDriver


def client_tls(ca: str = "", cert: str = "", key: str = "") -> ssl.SSLContext:
    """A client context: the server verified against `ca` (else the system CAs,
    SSL_CERT_FILE honoured), with a client certificate when `cert` is given."""
    context = ssl.create_default_context(cafile=ca or None)
    if cert:
        context.load_cert_chain(cert, key)
    return context


def nats_options(s: Settings) -> dict[str, Any]:
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


def nats_driver(s: Settings, servers: list[str], name: str) -> NatsDriver:
    from lobby.drivers.nats import NatsDriver

    return NatsDriver(
        servers,
        s.nats_discovery_channel,
        ping_interval=max(1, min(s.keep_alive, 10)),
        name=name,
        options=nats_options(s),
    )


def redis_tls(s: Settings) -> dict[str, Any] | None:
    """redis-py SSL options, or None for plain TCP."""
    if not s.redis_tls:
        return None
    options: dict[str, Any] = {}
    if s.redis_ca:
        options["ssl_ca_certs"] = s.redis_ca
    if s.redis_cert:
        options["ssl_certfile"] = s.redis_cert
        options["ssl_keyfile"] = s.redis_key
    return options


def redis_driver(s: Settings) -> RedisDriver:
    from lobby.drivers.redis import RedisDriver

    return RedisDriver(
        host=s.redis_host,
        port=s.redis_port,
        db=s.redis_db,
        username=s.redis_username,
        password=s.redis_password,
        channel=s.redis_channel,
        tls=redis_tls(s),
    )
