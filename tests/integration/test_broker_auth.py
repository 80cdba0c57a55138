"""Credentials and TLS towards real brokers (SPEC §13.3).

Each case starts a nats-server or redis-server configured for it, then two lobbyd:
one with the right credentials, which must connect and hear itself, and one with
wrong ones, which must log one clear line per attempt, keep retrying and keep
serving its API, without a traceback and without printing a secret.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import nkeys  # type: ignore[import-untyped]
import pytest
from certs import Pki, nats_operator, nkey_pair
from support import NatsServer, RedisServer, SentinelSet, free_port, wait_for
from targets import Listener

SECRETS = ("s3cret-token", "wrong-token", "lobby-pw", "wrong-pw", "sentinel-pw")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def good_and_wrong(
    spawn, env: dict[str, str], good: dict[str, str], wrong: dict[str, str], says: str
):
    """Start a node with `good` and one with `wrong` settings; check both behave."""
    ok = spawn("good", {**env, **good, "KEEP_ALIVE": "1"})
    refused = spawn("wrong", {**env, **wrong, "KEEP_ALIVE": "1"})
    wait_for(lambda: ok.hostnames() == ["good"], 15, what="the good node hears itself")
    assert ok.stats()["broker"]["connected"] is True
    # one line per attempt (rate-limited to 5 in a burst): two lines mean it retried
    try:
        wait_for(lambda: refused.output().count(says) >= 2, 15, what=f"two lines with {says!r}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{refused.output()[-3000:]}") from None
    assert refused.running and refused.stats()["broker"]["connected"] is False
    assert refused.hostnames() == []  # its API still answers
    for node in (ok, refused):
        log = node.output()
        assert "Traceback" not in log, log
        for secret in SECRETS:
            assert secret not in log, (secret, log)
    return ok, refused


def nats_with(make_nats: Callable[..., NatsServer], tmp_path: Path, config: str) -> NatsServer:
    conf = tmp_path / "nats.conf"
    conf.write_text(config)
    return make_nats(extra=["-c", str(conf)])


def tls_block(pki: Pki, verify: bool = False) -> str:
    lines = [f'cert_file: "{pki.server_cert}"', f'key_file: "{pki.server_key}"']
    if verify:
        lines += [f'ca_file: "{pki.ca}"', "verify: true"]
    return "tls {\n  " + "\n  ".join(lines) + "\n}\n"


def test_nats_tls_with_a_private_ca(spawn, make_nats, channel, tmp_path, pki):
    server = nats_with(make_nats, tmp_path, tls_block(pki))
    env = {"NATS_URL": f"tls://127.0.0.1:{server.port}", "NATS_DISCOVERY_CHANNEL": channel}
    good_and_wrong(
        spawn, env, {"NATS_CA": str(pki.ca)}, {"NATS_CA": str(pki.other_ca)}, "TLS with NATS"
    )


def test_nats_mutual_tls(spawn, make_nats, channel, tmp_path, pki):
    server = nats_with(make_nats, tmp_path, tls_block(pki, verify=True))
    env = {
        "NATS_URL": f"tls://127.0.0.1:{server.port}",
        "NATS_DISCOVERY_CHANNEL": channel,
        "NATS_CA": str(pki.ca),
    }
    good = {"NATS_CERT": str(pki.client_cert), "NATS_KEY": str(pki.client_key)}
    wrong = {"NATS_CERT": str(pki.other_cert), "NATS_KEY": str(pki.other_key)}
    good_and_wrong(spawn, env, good, wrong, "TLS with NATS")


# a nats-server without TLS, as its first line says it (auth required: a client with a
# token would send it in its CONNECT)
PLAIN_INFO = (
    b'INFO {"server_id":"fake","version":"2.10.0","proto":1,"max_payload":1048576,'
    b'"auth_required":true}\r\n'
)


@pytest.mark.parametrize(
    ("scheme", "with_ca"),
    [("tls", False), ("nats", True)],
    ids=["tls-url", "nats-url-with-a-ca"],
)
def test_nats_tls_never_falls_back_to_plaintext(spawn, channel, pki, scheme, with_ca):
    """Asked for TLS, a node refuses a server that offers none, before it sends a byte:
    nats-py alone would send CONNECT, token included, in the clear."""
    fake = Listener(greeting=PLAIN_INFO)
    fake.open()
    try:
        env = {
            "NATS_URL": f"{scheme}://127.0.0.1:{fake.port}",
            "NATS_DISCOVERY_CHANNEL": channel,
            "NATS_TOKEN": "s3cret-token",
            **({"NATS_CA": str(pki.ca)} if with_ca else {}),
        }
        node = spawn("careful", env)
        says = "does not offer TLS"
        wait_for(lambda: node.output().count(says) >= 2, 15, what=f"two lines with {says!r}")
        wait_for(lambda: len(fake.received) >= 2, 5, what="two attempts over")
        assert fake.received[:2] == [b"", b""]  # not even CONNECT
        assert node.running and node.stats()["broker"]["connected"] is False
        log = node.output()
        assert "Traceback" not in log and "s3cret-token" not in log, log
        assert f"NATS {scheme}://127.0.0.1:{fake.port} does not offer TLS" in log
    finally:
        fake.close()


def test_nats_tls_where_the_server_also_allows_plaintext(spawn, make_nats, channel, tmp_path, pki):
    """A server with `allow_non_tls` says `tls_available`, not `tls_required`: a node
    asked for TLS upgrades, one that was not stays plain; the server's connz tells."""
    monitor = free_port()
    config = f'allow_non_tls: true\nhttp: "127.0.0.1:{monitor}"\n'
    server = nats_with(make_nats, tmp_path, tls_block(pki) + config)
    env = {"NATS_DISCOVERY_CHANNEL": channel, "KEEP_ALIVE": "1"}
    secure = spawn(
        "secure", {**env, "NATS_URL": f"tls://127.0.0.1:{server.port}", "NATS_CA": str(pki.ca)}
    )
    plain = spawn("plain", {**env, "NATS_URL": server.url})
    for node in (secure, plain):
        wait_for(lambda n=node: n.hostnames() == ["plain", "secure"], 15, what="both listed")
    conns = httpx.get(f"http://127.0.0.1:{monitor}/connz", timeout=5).json()["connections"]
    tls = {c["name"]: c.get("tls_version", "") for c in conns}
    assert tls["lobbyd secure"].startswith("1.") and tls["lobbyd plain"] == "", tls


def test_nats_nkey_user(spawn, make_nats, channel, tmp_path):
    user, stranger = nkey_pair(nkeys.PREFIX_BYTE_USER), nkey_pair(nkeys.PREFIX_BYTE_USER)
    server = nats_with(
        make_nats,
        tmp_path,
        f"authorization {{\n  users = [ {{ nkey: {user.public_key.decode()} }} ]\n}}\n",
    )
    seed, wrong_seed = tmp_path / "user.nk", tmp_path / "stranger.nk"
    seed.write_bytes(bytes(user.seed))
    wrong_seed.write_bytes(bytes(stranger.seed))
    env = {"NATS_URL": server.url, "NATS_DISCOVERY_CHANNEL": channel}
    ok, refused = good_and_wrong(
        spawn,
        env,
        {"NATS_NKEY_SEED": str(seed)},
        {"NATS_NKEY_SEED": str(wrong_seed)},
        "refused our credentials",
    )
    for node, key in ((ok, user), (refused, stranger)):
        assert bytes(key.seed).decode() not in node.output()


def test_nats_token(spawn, make_nats, channel, tmp_path):
    server = nats_with(make_nats, tmp_path, 'authorization {\n  token: "s3cret-token"\n}\n')
    env = {"NATS_URL": server.url, "NATS_DISCOVERY_CHANNEL": channel}
    good_and_wrong(
        spawn,
        env,
        {"NATS_TOKEN": "s3cret-token"},
        {"NATS_TOKEN": "wrong-token"},
        "refused our credentials",
    )


def test_nats_user_and_password_in_the_url(spawn, make_nats, channel, tmp_path):
    """user:password@ in NATS_URL: the right one connects, a wrong one is refused, and
    neither password reaches a log line (at debug level) or the API."""
    users = 'authorization {\n  users = [ { user: lobby, password: "lobby-pw" } ]\n}\n'
    server = nats_with(make_nats, tmp_path, users)
    url = f"nats://lobby:{{}}@127.0.0.1:{server.port}"
    env = {"NATS_DISCOVERY_CHANNEL": channel, "LOG_LEVEL": "debug"}
    ok, refused = good_and_wrong(
        spawn,
        env,
        {"NATS_URL": url.format("lobby-pw")},
        {"NATS_URL": url.format("wrong-pw")},
        "refused our credentials",
    )
    for node in (ok, refused):
        stats = node.get("/v1/stats").text
        assert f"nats://lobby:***@127.0.0.1:{server.port}" in stats, stats
        assert "lobby-pw" not in stats and "wrong-pw" not in stats


def test_nats_creds_in_operator_mode(spawn, make_nats, channel, tmp_path):
    operator = nats_operator(tmp_path / "operator")
    server = nats_with(make_nats, tmp_path, operator.config)
    env = {"NATS_URL": server.url, "NATS_DISCOVERY_CHANNEL": channel}
    good_and_wrong(
        spawn,
        env,
        {"NATS_CREDS": str(operator.creds)},
        {"NATS_CREDS": str(operator.wrong_creds)},
        "refused our credentials",
    )


def redis_env(server: RedisServer, channel: str, **extra: str) -> dict[str, str]:
    return {"DRIVER": "Redis", "REDIS_PORT": str(server.port), "REDIS_CHANNEL": channel, **extra}


def test_redis_acl_user(spawn, procs, channel, tmp_path):
    server = RedisServer(
        tmp_path,
        extra=[
            "--user",
            "default",
            "off",
            "--user",
            "lobby",
            "on",
            ">lobby-pw",
            "~*",
            "&*",
            "+@all",
        ],
    )
    procs.append(server)
    server.start()
    good_and_wrong(
        spawn,
        redis_env(server, channel, REDIS_USERNAME="lobby"),
        {"REDIS_PASSWORD": "lobby-pw"},
        {"REDIS_PASSWORD": "wrong-pw"},
        "refused our credentials",
    )


def redis_tls(pki: Pki, auth_clients: bool) -> list[str]:
    return [
        "--tls-cert-file",
        str(pki.server_cert),
        "--tls-key-file",
        str(pki.server_key),
        "--tls-ca-cert-file",
        str(pki.ca),
        "--tls-auth-clients",
        "yes" if auth_clients else "no",
    ]


def test_redis_tls_without_a_client_certificate(spawn, procs, channel, tmp_path, pki):
    server = RedisServer(tmp_path, tls=redis_tls(pki, auth_clients=False))
    procs.append(server)
    server.start()
    good_and_wrong(
        spawn,
        redis_env(server, channel, REDIS_TLS="true"),
        {"REDIS_CA": str(pki.ca)},
        {"REDIS_CA": str(pki.other_ca)},
        "TLS with Redis",
    )


def test_redis_tls_with_a_client_certificate(spawn, procs, channel, tmp_path, pki):
    server = RedisServer(tmp_path, tls=redis_tls(pki, auth_clients=True))
    procs.append(server)
    server.start()
    ok, _ = good_and_wrong(
        spawn,
        redis_env(server, channel, REDIS_TLS="true", REDIS_CA=str(pki.ca)),
        {"REDIS_CERT": str(pki.client_cert), "REDIS_KEY": str(pki.client_key)},
        {},
        "TLS with Redis",
    )
    assert "rediss://" in ok.stats()["broker"]["address"]


@pytest.mark.parametrize("username", [None, "lobby"], ids=["requirepass", "acl-user"])
def test_redis_sentinels_with_a_password_over_tls(spawn, procs, channel, tmp_path, pki, username):
    """Sentinels that require a password (requirepass, or an ACL user's) and are asked
    over TLS (their tls-port); the master itself is plain. A wrong password, or the
    wrong CA, is one clear line naming the setting to check, and the node keeps
    retrying."""
    tls = [
        f"tls-cert-file {pki.server_cert}",
        f"tls-key-file {pki.server_key}",
        f"tls-ca-cert-file {pki.ca}",
        "tls-auth-clients no",
    ]
    sentinels = SentinelSet(tmp_path, procs, password="sentinel-pw", tls=tls, username=username)
    sentinels.start()
    env = {
        "DRIVER": "Redis",
        "REDIS_SENTINELS": sentinels.tls_addresses,
        "REDIS_SENTINEL_MASTER": "mymaster",
        "REDIS_SENTINEL_TLS": "true",
        "REDIS_CA": str(pki.ca),
        "REDIS_CHANNEL": channel,
        **({"REDIS_SENTINEL_USERNAME": username} if username else {}),
    }
    ok, _ = good_and_wrong(
        spawn,
        env,
        {"REDIS_SENTINEL_PASSWORD": "sentinel-pw"},
        {"REDIS_SENTINEL_PASSWORD": "wrong-pw"},
        "REDIS_SENTINEL_PASSWORD)",
    )
    assert ok.stats()["broker"]["address"] == f"redis://127.0.0.1:{sentinels.master.port}/0"
    stranger = spawn(
        "stranger",
        {**env, "REDIS_SENTINEL_PASSWORD": "sentinel-pw", "REDIS_CA": str(pki.other_ca)},
    )
    says = "check REDIS_SENTINEL_TLS"
    wait_for(lambda: stranger.output().count(says) >= 2, 15, what=f"two lines with {says!r}")
    assert stranger.running and "Traceback" not in stranger.output()
