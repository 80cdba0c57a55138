"""Signed announcements (SPEC §13.1): keys, signatures, replay memory. Pure, no I/O.

A key is 32 random bytes, written as standard base64 (`lobbyctl keygen` prints one).
A signed envelope carries two more top-level fields, which Go peers ignore:

    "ts":  the sender's Unix time in milliseconds (a JSON integer)
    "sig": KEYID "." MAC

KEYID is the first 8 lowercase hex digits of SHA-256(key); MAC is base64url without
padding of HMAC-SHA256(key, canonical), and canonical is the UTF-8 of

    message "\\n" hostname "\\n" str(ts) "\\n" "\\n".join(sorted labels)

with the labels as they are on the wire, sorted by code point (none: nothing after the
third newline). Sync requests are signed the same way with no labels.

`Keyring` signs with its first key and verifies with any of them (rotation: add the
new key second everywhere, then make it first everywhere, then drop the old one).
`Gate` is what a receiver asks about every decoded packet: it checks the signature,
the clock (`ts` within TTL of ours) and the per-hostname replay memory, and answers
None (apply it) or the reason to drop it: `unsigned`, `unknown_key`,
`bad_signature`, `stale`, `replay`, or `duplicate` (the very packet accepted last,
heard again, e.g. through a second broker: dropped quietly).

Replay memory holds, per hostname, the `ts` and `sig` of the last accepted packet.
An entry may be forgotten once its `ts` is more than TTL behind our clock: from then
on every packet it could stop is refused as `stale` anyway. So a node that said
goodbye or expired stays protected against replays of its old packets for at least
TTL, and the memory holds only hostnames heard within the last TTL.

The hot path is one HMAC of a few hundred bytes from the key's two precomputed
SHA-256 states (see `Key`), about 1 µs a packet.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Callable, Container, Iterable, Sequence
from typing import Final, Protocol

KEY_BYTES: Final = 32
KEYID_CHARS: Final = 8
MAC_CHARS: Final = 43  # base64 of 32 bytes without its one padding character
_PREFIX: Final = KEYID_CHARS + 1  # "KEYID."

# rejection reasons (GET /v1/stats, lobby_packets_rejected_total{reason})
UNSIGNED: Final = "unsigned"
UNKNOWN_KEY: Final = "unknown_key"
BAD_SIGNATURE: Final = "bad_signature"
STALE: Final = "stale"
REPLAY: Final = "replay"
DUPLICATE: Final = "duplicate"

_URLSAFE: Final = bytes.maketrans(b"+/", b"-_")
_b2a = binascii.b2a_base64
_compare = hmac.compare_digest
_BLOCK: Final = 64  # SHA-256's block size, HMAC's pad length
_IPAD: Final = bytes(x ^ 0x36 for x in range(256))  # translate tables: XOR every byte
_OPAD: Final = bytes(x ^ 0x5C for x in range(256))
_FROM_URLSAFE: Final = str.maketrans("-_", "+/")


class SigningKeyError(ValueError):
    """A key that is not base64 of 32 bytes; the message never contains the key."""


def generate_key() -> str:
    """A new key: base64 of 32 random bytes."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


def key_id(secret: bytes) -> str:
    return hashlib.sha256(secret).hexdigest()[:KEYID_CHARS]


def decode_key(text: str) -> bytes:
    """The 32 bytes of one key; raises SigningKeyError (without echoing the key)."""
    text = text.strip()
    # standard base64, or base64url (people paste keys from anywhere); padding optional
    std = text.translate(_FROM_URLSAFE) + "=" * (-len(text) % 4)
    try:
        raw = base64.b64decode(std, validate=True)
    except (binascii.Error, ValueError):
        raise SigningKeyError("a key is not valid base64") from None
    if len(raw) != KEY_BYTES:
        raise SigningKeyError(f"a key decodes to {len(raw)} bytes, not {KEY_BYTES}")
    return raw


def parse_keys(text: str, *, separator: str = ",") -> list[bytes]:
    """Keys from SIGNING_KEYS (comma-separated) or, with separator="\\n", from a keys
    file (one per line, blank lines and `#` comments skipped); raises SigningKeyError."""
    keys = []
    for item in text.split(separator):
        item = item.split("#", 1)[0].strip() if separator == "\n" else item.strip()
        if item:
            keys.append(decode_key(item))
    return keys


def parse_keys_file(text: str) -> list[bytes]:
    return parse_keys(text, separator="\n")


def canonical(message: str, hostname: str, ts: int, labels: Iterable[str]) -> bytes:
    """What the MAC covers; `labels` must already be sorted by code point."""
    text = f"{message}\n{hostname}\n{ts}\n" + "\n".join(labels)
    return text.encode("utf-8", "surrogatepass")


class _Hash(Protocol):
    def copy(self) -> _Hash: ...

    def update(self, data: bytes, /) -> None: ...

    def digest(self) -> bytes: ...


class Key:
    """One key: its id and the two SHA-256 states of HMAC, after the key's inner and
    outer pads (RFC 2104), so a MAC hashes only the message and the inner digest.

    Two copied `hashlib.sha256` states cost less than copying an `hmac.HMAC` (OpenSSL
    3's HMAC context copies three digest contexts): 1.1 against 1.4 µs a MAC over
    10,000 different packets (bench/README.md, "Signing").
    """

    __slots__ = ("id", "inner", "outer")

    def __init__(self, secret: bytes) -> None:
        self.id = key_id(secret)
        if len(secret) > _BLOCK:  # as HMAC does (our keys are 32 bytes: never)
            secret = hashlib.sha256(secret).digest()
        padded = secret.ljust(_BLOCK, b"\0")
        self.inner: _Hash = hashlib.sha256(padded.translate(_IPAD))
        self.outer: _Hash = hashlib.sha256(padded.translate(_OPAD))

    def digest(self, data: bytes) -> bytes:
        """HMAC-SHA256(key, data)."""
        inner = self.inner.copy()
        inner.update(data)
        outer = self.outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def mac(self, data: bytes) -> bytes:
        """base64url (no padding) of HMAC-SHA256(key, data), as ASCII bytes."""
        return binascii.b2a_base64(self.digest(data), newline=False).translate(_URLSAFE)[:MAC_CHARS]

    def __repr__(self) -> str:
        return f"Key(id={self.id!r})"  # never the secret


class Keyring:
    """The first key signs; every key verifies."""

    def __init__(self, secrets: Sequence[bytes]) -> None:
        if not secrets:
            raise ValueError("a keyring needs at least one key")
        keys = [Key(secret) for secret in secrets]
        self.signer = keys[0]
        self.by_id: dict[str, Key] = {}
        for key in keys:
            self.by_id.setdefault(key.id, key)
        # "KEYID." -> key: one slice and one lookup check both the id and the dot
        self.by_prefix = {f"{key_id}.": key for key_id, key in self.by_id.items()}

    @property
    def ids(self) -> list[str]:
        return list(self.by_id)

    def sign(self, message: str, hostname: str, ts: int, labels: Iterable[str]) -> str:
        mac = self.signer.mac(canonical(message, hostname, ts, labels))
        return f"{self.signer.id}.{mac.decode()}"

    def verify(
        self, message: str, hostname: str, ts: int, sig: str, labels: Iterable[str]
    ) -> str | None:
        """None when `sig` is a valid signature by one of our keys, else the reason."""
        key = self.by_prefix.get(sig[:_PREFIX])  # as Gate.admit looks it up
        if key is None:  # not KEYID.MAC at all, or not one of our keys
            return UNKNOWN_KEY if sig[KEYID_CHARS:_PREFIX] == "." else BAD_SIGNATURE
        given = sig[_PREFIX:].encode("ascii", "replace")
        if not hmac.compare_digest(key.mac(canonical(message, hostname, ts, labels)), given):
            return BAD_SIGNATURE
        return None

    def __repr__(self) -> str:
        return f"Keyring(ids={self.ids!r})"


class ReplayMemory:
    """Per hostname, the `ts` and `sig` of the last packet accepted from it."""

    def __init__(self) -> None:
        self.last: dict[str, tuple[int, str]] = {}

    def check(self, hostname: str, ts: int, sig: str) -> str | None:
        last = self.last.get(hostname)
        if last is None or ts > last[0]:
            return None
        if ts == last[0] and sig == last[1]:
            return DUPLICATE
        return REPLAY

    def accept(self, hostname: str, ts: int, sig: str) -> None:
        self.last[hostname] = (ts, sig)

    def forget_before(self, cutoff_ms: int) -> int:
        """Forget entries whose ts is older than `cutoff_ms`; how many were dropped."""
        old = [host for host, (ts, _) in self.last.items() if ts < cutoff_ms]
        for host in old:
            del self.last[host]
        return len(old)

    def __len__(self) -> int:
        return len(self.last)


class Gate:
    """Decides, per received packet, whether it may change the registry.

    Without a keyring every packet passes (as in the Go implementation). With one:
    signatures are checked, `ts` must be within `ttl` seconds of `wall()`, and must be
    newer than the last accepted one for the hostname (per kind: announcements and
    sync requests travel on different topics, so their order across kinds is not
    kept). With `accept_unsigned`, unsigned packets pass too, except from a hostname
    once seen signed.
    """

    def __init__(
        self,
        keyring: Keyring | None,
        *,
        ttl: float,
        accept_unsigned: bool = False,
        wall: Callable[[], float],
    ) -> None:
        self.keyring = keyring
        self.accept_unsigned = accept_unsigned
        self.ttl_ms = int(ttl * 1000)
        self.wall = wall
        self.announcements = ReplayMemory()
        self.syncs = ReplayMemory()
        self._last_hi = self.announcements.last  # what admit reads and writes
        self._last_sync = self.syncs.last
        self.signed_hosts: set[str] = set()  # only kept with accept_unsigned
        self._last_ts = 0
        self._next_prune = 0.0

    @property
    def enabled(self) -> bool:
        return self.keyring is not None

    def admit(
        self,
        message: str,
        hostname: str,
        ts: int,
        sig: str | None,
        labels: Iterable[str],
        now_ms: int | None = None,
    ) -> str | None:
        """None to accept the packet (and remember it), else why it is dropped.

        The hot path of a signed cluster: Keyring.verify and ReplayMemory.check and
        accept, written out in one function (each call costs a tenth of a µs here).
        `now_ms`: our wall clock in milliseconds when the caller read it once for a
        batch of packets (else read here).
        """
        keyring = self.keyring
        if keyring is None:
            return None
        if sig is None:
            if self.accept_unsigned and hostname not in self.signed_hosts:
                return None
            return UNSIGNED
        key = keyring.by_prefix.get(sig[:_PREFIX])
        if key is None:
            return UNKNOWN_KEY if sig[KEYID_CHARS:_PREFIX] == "." else BAD_SIGNATURE
        inner = key.inner.copy()
        inner.update(
            (f"{message}\n{hostname}\n{ts}\n" + "\n".join(labels)).encode("utf-8", "surrogatepass")
        )
        outer = key.outer.copy()
        outer.update(inner.digest())
        # b2a_base64 without arguments: the slice drops its "=" and its newline
        mac = _b2a(outer.digest()).translate(_URLSAFE)[:MAC_CHARS]
        if not _compare(mac, sig[_PREFIX:].encode("ascii", "replace")):
            return BAD_SIGNATURE
        ahead = ts - (int(self.wall() * 1000) if now_ms is None else now_ms)
        ttl_ms = self.ttl_ms
        if ahead > ttl_ms or ahead < -ttl_ms:
            return STALE
        last_of = self._last_sync if message == "sync" else self._last_hi
        last = last_of.get(hostname)
        if last is not None and ts <= last[0]:
            return DUPLICATE if ts == last[0] and sig == last[1] else REPLAY
        last_of[hostname] = (ts, sig)
        if self.accept_unsigned:
            self.signed_hosts.add(hostname)
        return None

    def stamp(self, message: str, hostname: str, labels: Iterable[str]) -> tuple[int, str] | None:
        """`ts` and `sig` for an outgoing packet, or None when we do not sign.

        `ts` is our wall clock in milliseconds, strictly increasing, so two packets
        in the same millisecond are not taken for a replay of each other.
        """
        if self.keyring is None:
            return None
        ts = max(int(self.wall() * 1000), self._last_ts + 1)
        self._last_ts = ts
        return ts, self.keyring.sign(message, hostname, ts, labels)

    def prune(self) -> int:
        """Forget what can no longer matter (see the module docstring); at most once
        per TTL. Returns how many entries were dropped."""
        now = self.wall()
        if self.keyring is None or now < self._next_prune:
            return 0
        self._next_prune = now + self.ttl_ms / 1000
        cutoff = int(now * 1000) - self.ttl_ms
        return self.announcements.forget_before(cutoff) + self.syncs.forget_before(cutoff)

    def count_signed(self, live: Container[str], total: int) -> tuple[int, int]:
        """(signed, unsigned) among the `total` live nodes, `live` telling who is live.

        Without keys nothing is verified, so every node counts as unsigned; without
        ACCEPT_UNSIGNED every node was accepted signed.
        """
        if self.keyring is None:
            return 0, total
        if not self.accept_unsigned:
            return total, 0
        signed = sum(1 for host in self.signed_hosts if host in live)
        return signed, total - signed
