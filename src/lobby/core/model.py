"""Discovery packets, labels and envelopes: parsing and validation, no I/O.

The wire format is the Go implementation's, byte for byte (SPEC §1-2). Decoding is
the daemon's hot path, so `decode_packet` uses orjson and direct checks instead of
a pydantic model and returns a plain tuple (`decode_envelope` is the same as objects,
for tests and tools); `lobby.api.routes` describes the same shapes for the OpenAPI
document.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple, Protocol

import orjson

MAX_PACKET_BYTES: Final = 64 * 1024
MAX_LABEL_BYTES: Final = 1024
MAX_HOSTNAME_BYTES: Final = 1024

HI: Final = "hi"
GOODBYE: Final = "goodbye"

# C0, DEL and C1 control characters, and the Unicode line and paragraph separators
# (str.splitlines() breaks lines there too). A newline in a label would corrupt the
# one-label-per-line formats (files, API bodies, lobbyctl output).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class PacketError(ValueError):
    """A received message is not a valid envelope; `reason` is a short stable tag."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class LabelError(ValueError):
    """A label given by a user (API, env, file) is not valid."""


@dataclass(frozen=True, slots=True)
class Discovery:
    """What a node announces: its hostname and sorted, unique labels."""

    hostname: str
    labels: tuple[str, ...]
    last_check: int = 0

    def to_dict(self) -> dict[str, object]:
        return {
            "hostname": self.hostname,
            "labels": list(self.labels),
            "last_check": self.last_check,
        }


@dataclass(slots=True)  # not frozen: a frozen __init__ costs a setattr call per field,
class Envelope:  # and one is built per packet on the hot path
    """A decoded message. `ts` and `sig` are set when the sender signed it (SPEC §13.1);
    `wire_labels` are then the labels as they were on the wire, sorted by code point
    (what the signature covers), usually the very tuple `discovery.labels` is."""

    message: Literal["hi", "goodbye"]
    discovery: Discovery
    ts: int = 0
    sig: str | None = None
    wire_labels: tuple[str, ...] = ()
    # SPEC §15: the hostname of the relay that forwarded this packet from another broker;
    # None when the packet has no "relay" field, "" when it has one that is not a string
    # (still relayed: never forwarded again)
    relay: str | None = None


def label_problem(label: str) -> str | None:
    """Why `label` is not a valid label, or None when it is (SPEC §1)."""
    stripped = label.strip()
    if not stripped:
        return "label is empty"
    if _CONTROL.search(label):
        return "label contains a control character or line separator"
    try:
        size = len(stripped.encode())
    except UnicodeEncodeError:  # a lone surrogate, e.g. from non-UTF-8 bytes in LABELS
        return "label is not valid UTF-8"
    if size > MAX_LABEL_BYTES:
        return f"label is longer than {MAX_LABEL_BYTES} bytes"
    return None


def clean_label(label: str) -> str:
    """Trim a user-supplied label and check it; raises LabelError naming the label."""
    stripped = label.strip()
    problem = label_problem(stripped)
    if problem is not None:
        shown = label if len(label) <= 80 else label[:77] + "..."
        raise LabelError(f"invalid label {shown!r}: {problem}")
    return sys.intern(stripped)


# Labels repeat across nodes and across every keep-alive of one node, so a label
# seen once valid is remembered: the common case costs one dict lookup, and this dict
# is the intern table: every node holding a label holds this one copy (SPEC §11).
# Only labels of packets that passed validation are remembered, and the cache is
# bounded in count and in characters, so neither garbage nor label churn can grow it
# without limit (1,500 dropped packets of long labels used to pin ~100 MB).
_known_labels: dict[str, str] = {}
_known_chars = 0
_KNOWN_LABELS_MAX: Final = 200_000
_KNOWN_LABELS_MAX_CHARS: Final = 16 * 1024 * 1024


def parse_label_body(text: str) -> list[str]:
    """An API request body: one label per line, blank lines ignored.

    Strict, unlike files: any invalid line fails the whole request (LabelError).
    Runtime labels are stored in a label file, where a line starting with `#` is a
    comment, so such a label would vanish: refuse it rather than lose it.
    """
    labels = [clean_label(line) for line in text.split("\n") if line.strip()]
    for label in labels:
        if label.startswith("#"):
            raise LabelError(
                f"invalid label {label[:80]!r}: a runtime label cannot start with '#' "
                "(label files read such a line as a comment)"
            )
    return labels


def _remember(labels: list[str]) -> None:
    global _known_chars
    chars = sum(map(len, labels))
    if (
        len(_known_labels) + len(labels) > _KNOWN_LABELS_MAX
        or _known_chars + chars > _KNOWN_LABELS_MAX_CHARS
    ):
        _known_labels.clear()
        _known_chars = 0
    for label in labels:
        _known_labels[label] = label
    _known_chars += chars


def _wire_labels(raw: object) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The labels to store (sorted, unique) and the wire's labels sorted by code point
    (the same tuple unless the wire held duplicates or was out of order)."""
    if raw is None:  # Go sends null for a node without labels
        return (), ()
    if type(raw) is not list:
        raise PacketError("bad_labels", "labels is not a list")
    known = _known_labels
    out: list[str] = []
    new: list[str] | None = None
    for item in raw:
        label = known.get(item) if type(item) is str else None
        if label is None:
            if type(item) is not str:
                raise PacketError("bad_labels", "a label is not a string")
            problem = label_problem(item)
            if problem is not None:
                raise PacketError("bad_label", problem)
            label = item  # from now on the one copy every node shares (no sys.intern:
            if new is None:  # its table would hold each unique label a second time)
                new = []
            new.append(label)
        out.append(label)
    if new is not None:
        _remember(new)
    # Go peers send sorted, unique labels: checking is cheaper than sorting.
    for i in range(1, len(out)):
        if out[i - 1] >= out[i]:
            return tuple(sorted(set(out))), tuple(sorted(out))
    labels = tuple(out)
    return labels, labels


def _signed_goodbye_labels(raw: object) -> tuple[str, ...]:
    """A signed goodbye's labels, for its signature only (a goodbye's labels are unused)."""
    if raw is None:
        return ()
    if type(raw) is not list or any(type(item) is not str for item in raw):
        raise PacketError("bad_labels", "labels is not a list of strings")
    return tuple(sorted(raw))


class Packet(NamedTuple):
    """What decode_packet returns: one valid packet's fields, without a Discovery.

    A NamedTuple, not a dataclass: built by one C call (`_new_tuple`), and hostname and
    labels first, so a "hi" is itself what `Registry.refresh_many` takes (no pair built
    per packet on the hot path).
    """

    hostname: str
    labels: tuple[str, ...]  # sorted, unique
    message: Literal["hi", "goodbye"]
    wire: tuple[str, ...]  # the wire's labels sorted by code point (what a signature covers)
    ts: int
    sig: str | None  # None: unsigned; "": malformed signature fields
    relayed_by: str | None  # as Envelope.relay


_new_tuple = tuple.__new__  # Packet(...) costs a Python-level __new__; this does not


class Labelled(Protocol):
    """What decode_packet needs to know of a node it may have heard before."""

    @property
    def labels(self) -> tuple[str, ...]: ...


Known = Mapping[str, Labelled]


def decode_envelope(data: bytes | bytearray | memoryview | str) -> Envelope:
    """Parse and validate one message from the broker; raises PacketError."""
    packet = decode_packet(data)
    return Envelope(
        packet.message,
        Discovery(packet.hostname, packet.labels, 0),
        packet.ts,
        packet.sig,
        packet.wire,
        packet.relayed_by,
    )


def decode_packet(data: bytes | bytearray | memoryview | str, known: Known | None = None) -> Packet:
    """`decode_envelope` as a `Packet`, without building objects: the daemon's hot path.

    `known` may map the hostname to a record of the labels the node is known to have
    (`Registry.records`): when the packet carries exactly those (a keep-alive), that
    very tuple is returned and the labels are neither checked again nor interned
    again. A mapping, not a function: `dict.get` costs no Python call.
    """
    if len(data) > MAX_PACKET_BYTES:
        raise PacketError("too_large", f"{len(data)} bytes")
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise PacketError("not_json", str(exc)[:80]) from None
    if known is not None:
        # The common case first: a known node's keep-alive, with the labels it is
        # known to have. Anything else (a join, new labels, a goodbye, a relayed or
        # malformed packet) takes the full checks below, from the same parse.
        try:
            body = doc["discovery"]
            hostname = body["hostname"]
            record = known.get(hostname)
            if (
                record is not None
                and doc["message"] == HI
                and type(raw := body["labels"]) is list
                and tuple(raw) == (have := record.labels)
                and type(body.get("last_check", 0)) is int
                and "relay" not in doc
            ):
                sig = doc.get("sig")
                if sig is None:
                    return _new_tuple(Packet, (hostname, have, HI, have, 0, None, None))
                ts = doc.get("ts")
                if type(sig) is str and type(ts) is int:
                    return _new_tuple(Packet, (hostname, have, HI, have, ts, sig, None))
        except (KeyError, TypeError):  # not the shape of a keep-alive: see below
            pass
    return _decode_doc(doc, known)


def _decode_doc(doc: object, known: Known | None) -> Packet:
    """decode_packet's full checks, on the parsed document."""
    if type(doc) is not dict:
        raise PacketError("bad_shape", "envelope is not an object")
    message = doc.get("message")
    if message != HI and message != GOODBYE:
        raise PacketError("bad_message", repr(message)[:40])
    body = doc.get("discovery")
    if type(body) is not dict:
        raise PacketError("bad_shape", "discovery is not an object")
    hostname = body.get("hostname")
    if type(hostname) is not str or not hostname:
        raise PacketError("bad_hostname", "hostname is missing or empty")
    record = known.get(hostname) if known is not None else None
    have = record.labels if record is not None else None
    if have is None:  # a node we know passed these checks with this very hostname
        if len(hostname) > MAX_HOSTNAME_BYTES // 4 and len(hostname.encode()) > MAX_HOSTNAME_BYTES:
            raise PacketError("bad_hostname", "hostname is too long")
        if _CONTROL.search(hostname) or not hostname.strip():
            raise PacketError("bad_hostname", "hostname contains a control character or blanks")
    last_check = body.get("last_check", 0)
    if type(last_check) is not int:
        raise PacketError("bad_shape", "last_check is not an integer")
    sig = doc.get("sig")
    if message == HI:
        raw = body.get("labels")
        if have is not None and type(raw) is list and len(raw) == len(have) and tuple(raw) == have:
            labels = wire = have
        else:
            labels, wire = _wire_labels(raw)
    else:
        labels = ()
        wire = _signed_goodbye_labels(body.get("labels")) if sig is not None else ()
    relay = None
    if "relay" in doc:
        relay = doc["relay"] if type(doc["relay"]) is str else ""
    if sig is None:
        return _new_tuple(Packet, (hostname, labels, message, wire, 0, None, relay))
    ts = doc.get("ts")
    if type(sig) is not str or type(ts) is not int:
        # malformed signature fields: keep it marked as signed, so that it fails
        # verification instead of passing for an unsigned packet
        return _new_tuple(Packet, (hostname, labels, message, wire, 0, "", relay))
    return _new_tuple(Packet, (hostname, labels, message, wire, ts, sig, relay))


def encode_envelope(
    message: Literal["hi", "goodbye"],
    discovery: Discovery,
    signature: tuple[int, str] | None = None,
) -> bytes:
    """The Go implementation's exact bytes: compact JSON, last_check 0, sorted labels;
    with a `signature` (ts, sig), the two fields `ts` and `sig` follow (SPEC §13.1)."""
    doc: dict[str, object] = {
        "discovery": {
            "hostname": discovery.hostname,
            "labels": list(discovery.labels),
            "last_check": 0,
        },
        "message": message,
    }
    if signature is not None:
        doc["ts"], doc["sig"] = signature
    return orjson.dumps(doc)


# -- sync requests (side topic, Python peers only) -----------------------------------


SYNC: Final = "sync"


@dataclass(frozen=True, slots=True)
class SyncRequest:
    hostname: str
    ts: int = 0
    sig: str | None = None


def encode_sync(hostname: str, signature: tuple[int, str] | None = None) -> bytes:
    """Ask every peer to announce itself now (fast join); signed like an envelope."""
    doc: dict[str, object] = {"message": SYNC, "hostname": hostname}
    if signature is not None:
        doc["ts"], doc["sig"] = signature
    return orjson.dumps(doc)


def decode_sync(data: bytes | bytearray | memoryview | str) -> SyncRequest:
    """The request (who asks, and its signature if any); raises PacketError."""
    if len(data) > 4096:
        raise PacketError("too_large", f"{len(data)} bytes")
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise PacketError("not_json") from None
    if type(doc) is not dict or doc.get("message") != "sync":
        raise PacketError("bad_message", "not a sync request")
    hostname = doc.get("hostname")
    if type(hostname) is not str:
        raise PacketError("bad_hostname")
    sig = doc.get("sig")
    if sig is None:
        return SyncRequest(hostname)
    ts = doc.get("ts")
    if type(sig) is not str or type(ts) is not int:
        return SyncRequest(hostname, 0, "")
    return SyncRequest(hostname, ts, sig)


# -- relays (SPEC §15) -------------------------------------------------------------------


def add_relay(data: bytes, hostname: str) -> bytes:
    """`data` (a JSON object) with a top-level `"relay": hostname` added, every other byte
    kept as it was, so a signature over the rest still verifies."""
    body = data.rstrip()
    if not body.endswith(b"}"):
        raise PacketError("bad_shape", "not a JSON object")
    return body[:-1] + b',"relay":' + orjson.dumps(hostname) + b"}"


def is_relayed(data: bytes | bytearray | memoryview | str) -> bool:
    """Whether a packet already has a top-level "relay" field (False for garbage)."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return type(doc) is dict and "relay" in doc


_PRETTY = orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE


def pretty(value: object) -> bytes:
    """JSON as the Go daemon answered it: 2-space indent, trailing newline."""
    return orjson.dumps(value, option=_PRETTY)


def discoveries_json(discoveries: Iterable[Discovery]) -> bytes:
    """The body of GET /v1/discoveries (also the callback's standard input)."""
    return pretty([d.to_dict() for d in discoveries])
