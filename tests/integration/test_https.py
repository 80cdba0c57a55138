"""HTTPS and the read-only token on a real lobbyd (SPEC §13.2).

The fixtures make a private CA and a certificate for 127.0.0.1; a client that trusts
the CA gets in, one that trusts only the system's CAs does not.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys

import httpx
import pytest
from certs import Pki
from support import Lobbyd, wait_for

from lobby import Lobby, LobbyException

TOKEN = "full-secret-token"
READ_TOKEN = "read-secret-token"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def ctl(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HOST", "PORT", "PROTOCOL", "TOKEN", "CA_FILE", "SSL_CERT_FILE")
    }
    return subprocess.run(
        [sys.executable, "-m", "lobby.ctl", *argv],
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=30,
    )


def test_https_with_a_private_ca_and_the_read_token(spawn, nats_server, channel, pki):
    node: Lobbyd = spawn(
        "tls",
        {
            "NATS_URL": nats_server.url,
            "NATS_DISCOVERY_CHANNEL": channel,
            "TLS_CERT": str(pki.server_cert),
            "TLS_KEY": str(pki.server_key),
            "TOKEN": TOKEN,
            "READ_TOKEN": READ_TOKEN,
        },
    )
    url = node.url
    assert url.startswith("https://")
    read = {"Authorization": f"Token {READ_TOKEN}"}
    full = {"Authorization": f"Token {TOKEN}"}

    # curl
    base = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}"]
    ok = subprocess.run(
        [*base, "--cacert", str(pki.ca), "-H", f"Authorization: Token {READ_TOKEN}", url + "/"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ok.returncode == 0 and ok.stdout == "200", ok.stderr
    refused = subprocess.run([*base, url + "/"], capture_output=True, text=True, timeout=30)
    assert refused.returncode == 60, refused  # curl: peer certificate cannot be authenticated

    # httpx
    trusted = ssl.create_default_context(cafile=str(pki.ca))
    with httpx.Client(base_url=url, verify=trusted, timeout=10) as client:
        assert client.get("/v1/discovery", headers=read).json()["hostname"] == "tls"
        # the read token lets HEAD through the guard (the routes themselves answer GET)
        assert client.head("/v1/discovery", headers=read).status_code != 403
        assert client.get("/v1/discovery").status_code == 403
        for method in ("POST", "DELETE"):
            answer = client.request(method, "/v1/labels", content=b"x:1\n", headers=read)
            assert answer.status_code == 403 and answer.json() == {"message": "access denied"}
        assert client.post("/v1/labels", content=b"x:1\n", headers=full).text == "OK"
        assert client.get("/v1/discovery", headers=read).json()["labels"] == ["x:1"]
        # the registry has x:1 once its announcement is back through the broker
        wait_for(lambda: client.get("/v1/resolve?label=x:1", headers=read).json() == ["tls"])
        assert (
            client.get("/v1/discovery", headers={"Authorization": "Token nope"}).status_code == 403
        )
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(url + "/", headers=read, timeout=10)
    other = ssl.create_default_context(cafile=str(pki.other_ca))
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/", headers=read, timeout=10, verify=other)

    # the Python client
    with Lobby("127.0.0.1", node.port, READ_TOKEN, "https", verify=str(pki.ca)) as lobby:
        assert [d["hostname"] for d in lobby.get_discoveries()] == ["tls"]
        with pytest.raises(LobbyException) as info:
            lobby.add_labels(["y:1"])
        assert info.value.status_code == 403
    with (
        Lobby("127.0.0.1", node.port, READ_TOKEN, "https") as lobby,
        pytest.raises(LobbyException, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        lobby.get_discovery()

    # lobbyctl
    where = ["-host", "127.0.0.1", "-port", str(node.port), "-proto", "https"]
    done = ctl(*where, "-token", READ_TOKEN, "-cacert", str(pki.ca), "resolve", "x:1")
    assert (done.returncode, done.stdout) == (0, "tls\n"), done.stderr
    done = ctl(*where, "-token", READ_TOKEN, "resolve", "x:1", CA_FILE=str(pki.ca))
    assert (done.returncode, done.stdout) == (0, "tls\n"), done.stderr
    done = ctl(*where, "-token", READ_TOKEN, "-insecure", "resolve", "x:1")
    assert (done.returncode, done.stdout) == (0, "tls\n"), done.stderr
    done = ctl(*where, "-token", READ_TOKEN, "resolve", "x:1")
    assert done.returncode == 1 and "-cacert" in done.stderr and done.stderr.count("\n") == 1
    done = ctl(*where, "-token", READ_TOKEN, "-cacert", str(pki.ca), "labels", "del", "x:1")
    assert done.returncode == 1 and "403" in done.stderr
    done = ctl(*where, "-token", READ_TOKEN, "-cacert", "/nonexistent.pem", "discoveries")
    assert done.returncode == 2 and "/nonexistent.pem" in done.stderr

    log = node.output()
    assert "API listening on https://" in log
    assert TOKEN not in log and READ_TOKEN not in log and "Traceback" not in log


def test_read_token_alone_makes_the_api_read_only(spawn, nats_server, channel):
    node = spawn(
        "ro",
        {"NATS_URL": nats_server.url, "NATS_DISCOVERY_CHANNEL": channel, "READ_TOKEN": READ_TOKEN},
    )
    with node.client() as client:
        assert client.get("/v1/discovery").status_code == 200
        assert client.post("/v1/labels", content=b"x:1\n").status_code == 403
    assert httpx.get(node.url + "/v1/discovery", timeout=10).status_code == 403


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"TLS_CERT": "{cert}", "TLS_KEY": "{missing}"}, "TLS_KEY"),
        ({"TLS_CERT": "{cert}", "TLS_KEY": "{other_key}"}, "TLS_KEY"),
        ({"TLS_CERT": "{cert}"}, "TLS_CERT"),
        ({"SIGNING_KEYS_FILE": "{missing}"}, "SIGNING_KEYS_FILE"),
        ({"NATS_CREDS": "{missing}"}, "NATS_CREDS"),
        ({"REDIS_TLS": "true", "REDIS_CA": "{directory}"}, "REDIS_CA"),
        ({"SIGNING_KEYS": "c2VjcmV0"}, "SIGNING_KEYS (value not shown)"),
    ],
)
def test_a_bad_file_or_key_stops_lobbyd_with_one_line(env, variable, pki, tmp_path):
    paths = {
        "cert": pki.server_cert,
        "other_key": pki.other_key,
        "missing": tmp_path / "missing.pem",
        "directory": tmp_path,
    }
    full = {k: v.format(**paths) for k, v in env.items()}
    done = subprocess.run(
        [sys.executable, "-m", "lobby"],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], **full},
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr.startswith(f"lobbyd: invalid {variable}"), done.stderr
    assert done.stderr.count("\n") == 1 and "c2VjcmV0" not in done.stderr


def test_help_shows_no_secret():
    done = subprocess.run(
        [sys.executable, "-m", "lobby", "--help"],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "TOKEN": TOKEN, "NATS_TOKEN": "nats-secret"},
        timeout=30,
    )
    assert done.returncode == 0 and "SIGNING_KEYS_FILE" in done.stdout
    assert TOKEN not in done.stdout and "nats-secret" not in done.stdout
