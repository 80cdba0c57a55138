"""Test certificates and NATS credentials, made on the spot (no files in the repo).

`Pki(dir)` writes a private CA, a server certificate for 127.0.0.1/localhost signed by
it, a client certificate signed by it, and a second, unrelated CA (for "the wrong CA"
cases). `nats_operator(dir)` writes what a nats-server in operator mode needs
(operator and account JWTs, preloaded in a MEMORY resolver) and a user's `.creds`.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import nkeys  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_cert(cert: x509.Certificate, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


class _Ca:
    def __init__(self, cn: str) -> None:
        self.key = _key()
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )

    def issue(
        self, cn: str, *, server: bool
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = _key()
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return builder.sign(self.key, hashes.SHA256()), key


@dataclass
class Pki:
    """PEM files in `dir`: ca, server cert/key, client cert/key, other_ca."""

    dir: Path

    def __post_init__(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        ca = _Ca("lobby test CA")
        other = _Ca("some other CA")
        self.ca = self.dir / "ca.pem"
        self.other_ca = self.dir / "other-ca.pem"
        _write_cert(ca.cert, self.ca)
        _write_cert(other.cert, self.other_ca)
        cert, key = ca.issue("127.0.0.1", server=True)
        self.server_cert, self.server_key = self.dir / "server.pem", self.dir / "server-key.pem"
        _write_cert(cert, self.server_cert)
        _write_key(key, self.server_key)
        cert, key = ca.issue("lobbyd client", server=False)
        self.client_cert, self.client_key = self.dir / "client.pem", self.dir / "client-key.pem"
        _write_cert(cert, self.client_cert)
        _write_key(key, self.client_key)
        # a certificate from the wrong CA, for "not trusted" cases
        cert, key = other.issue("intruder", server=False)
        self.other_cert, self.other_key = self.dir / "other.pem", self.dir / "other-key.pem"
        _write_cert(cert, self.other_cert)
        _write_key(key, self.other_key)


# -- NATS nkeys and JWTs (operator mode) -----------------------------------------------


def nkey_pair(prefix: int) -> nkeys.KeyPair:
    return nkeys.from_seed(bytearray(nkeys.encode_seed(os.urandom(32), prefix)))


NO_LIMITS = {"subs": -1, "data": -1, "payload": -1}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _jwt(issuer: nkeys.KeyPair, subject: str, name: str, nats: dict[str, object]) -> str:
    """A NATS JWT (v2): header, claims with their jti, signed by `issuer` (ed25519)."""
    claims: dict[str, object] = {
        "jti": "",
        "iat": int(time.time()),
        "iss": issuer.public_key.decode(),
        "name": name,
        "sub": subject,
        "nats": {**nats, "version": 2},
    }
    claims["jti"] = (
        base64.b32encode(
            hashlib.sha256(json.dumps(claims, separators=(",", ":")).encode()).digest()
        )
        .decode()
        .rstrip("=")
    )
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signature = issuer.sign(f"{header}.{body}".encode())
    return f"{header}.{body}.{_b64(signature)}"


def creds_text(user_jwt: str, user_seed: bytes) -> str:
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user_seed.decode()}\n"
        "------END USER NKEY SEED------\n"
    )


@dataclass
class NatsOperator:
    """Operator-mode server config lines and two users' .creds: one of this account,
    one signed by a stranger's account (the wrong credentials)."""

    config: str
    creds: Path
    wrong_creds: Path


def nats_operator(dir: Path) -> NatsOperator:
    dir.mkdir(parents=True, exist_ok=True)
    operator = nkey_pair(nkeys.PREFIX_BYTE_OPERATOR)
    account = nkey_pair(nkeys.PREFIX_BYTE_ACCOUNT)
    operator_jwt = _jwt(operator, operator.public_key.decode(), "lobby-op", {"type": "operator"})
    account_jwt = _jwt(
        operator,
        account.public_key.decode(),
        "lobby",
        {
            "type": "account",
            "limits": {
                **NO_LIMITS,
                "conn": -1,
                "leaf": -1,
                "imports": -1,
                "exports": -1,
                "wildcards": True,
            },
        },
    )

    def user_creds(path: Path, signer: nkeys.KeyPair) -> Path:
        user = nkey_pair(nkeys.PREFIX_BYTE_USER)
        jwt = _jwt(
            signer,
            user.public_key.decode(),
            "lobbyd",
            {"type": "user", "pub": {}, "sub": {}, **NO_LIMITS},
        )
        path.write_text(creds_text(jwt, user.seed))
        path.chmod(0o600)
        return path

    account_pub = account.public_key.decode()
    stranger = nkey_pair(nkeys.PREFIX_BYTE_ACCOUNT)
    config = (
        f"operator: {operator_jwt}\n"
        "resolver: MEMORY\n"
        f"resolver_preload: {{\n  {account_pub}: {account_jwt}\n}}\n"
    )
    return NatsOperator(
        config,
        user_creds(dir / "user.creds", account),
        user_creds(dir / "wrong.creds", stranger),
    )
