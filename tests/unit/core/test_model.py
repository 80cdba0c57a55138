import contextlib
import json
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lobby.core.model import (
    MAX_PACKET_BYTES,
    Discovery,
    LabelError,
    Packet,
    PacketError,
    add_relay,
    clean_label,
    decode_envelope,
    decode_packet,
    encode_envelope,
    encode_sync,
    is_relayed,
    label_problem,
)

SAMPLES = (
    Path(__file__).parents[3].parent / "shared" / "wire-samples" / "go-lobby-1.5-envelopes.jsonl"
)
if not SAMPLES.exists():  # CI checks out the repo alone: keep a copy
    SAMPLES = Path(__file__).parents[2] / "data" / "go-lobby-1.5-envelopes.jsonl"
GO_LINES = SAMPLES.read_bytes().splitlines()


def test_samples_are_there():
    assert len(GO_LINES) == 12


@pytest.mark.parametrize("line", GO_LINES, ids=range(len(GO_LINES)))
def test_go_messages_decode_and_reencode_byte_for_byte(line):
    envelope = decode_envelope(line)
    doc = json.loads(line)
    assert envelope.message == doc["message"]
    assert envelope.discovery.hostname == doc["discovery"]["hostname"]
    if envelope.message == "hi":
        assert list(envelope.discovery.labels) == doc["discovery"]["labels"]
        assert encode_envelope("hi", envelope.discovery) == line


def test_go_goodbye_with_null_labels():
    raw = (
        b'{"discovery":{"hostname":"old.example","labels":null,"last_check":0},"message":"goodbye"}'
    )
    envelope = decode_envelope(raw)
    assert envelope.message == "goodbye"
    assert envelope.discovery.hostname == "old.example"


def test_null_labels_on_hi_mean_no_labels():
    raw = b'{"discovery":{"hostname":"c","labels":null,"last_check":0},"message":"hi"}'
    assert decode_envelope(raw).discovery.labels == ()


def test_unknown_fields_are_ignored():
    raw = b'{"discovery":{"hostname":"c","labels":["a"],"last_check":0,"x":1},"message":"hi","v":2}'
    assert decode_envelope(raw).discovery == Discovery("c", ("a",))


def test_relay_field_is_reported_and_changes_nothing_else():
    raw = encode_envelope("hi", Discovery("c", ("a",)))
    assert decode_envelope(raw).relay is None
    relayed = decode_envelope(add_relay(raw, "relay1"))
    assert (relayed.relay, relayed.discovery, relayed.message) == (
        "relay1",
        Discovery("c", ("a",)),
        "hi",
    )
    # a relay field that is not a string still marks the packet as relayed
    odd = raw[:-1] + b',"relay":7}'
    assert decode_envelope(odd).relay == ""


@pytest.mark.parametrize("line", GO_LINES, ids=range(len(GO_LINES)))
def test_add_relay_keeps_every_byte_of_the_original(line):
    relayed = add_relay(line + b"\n", 'r\u00e9lay "1"')
    assert relayed == line[:-1] + b',"relay":"r\xc3\xa9lay \\"1\\""}'
    doc, original = orjson.loads(relayed), orjson.loads(line)
    assert doc.pop("relay") == 'r\u00e9lay "1"' and doc == original
    assert is_relayed(relayed) and not is_relayed(line)


def test_add_relay_refuses_what_is_not_an_object_and_is_relayed_tolerates_garbage():
    with pytest.raises(PacketError):
        add_relay(b"[1, 2]", "r")
    assert not is_relayed(b"\xff junk") and not is_relayed(b"[]")
    assert is_relayed(add_relay(encode_sync("a"), "r"))


def test_missing_last_check_is_fine_and_receivers_ignore_the_senders_value():
    raw = b'{"discovery":{"hostname":"c","labels":[]},"message":"hi"}'
    assert decode_envelope(raw).discovery.last_check == 0
    raw = b'{"discovery":{"hostname":"c","labels":[],"last_check":12345},"message":"hi"}'
    assert decode_envelope(raw).discovery.last_check == 0


def test_unsorted_duplicate_labels_are_normalized():
    raw = b'{"discovery":{"hostname":"c","labels":["b","a","b"],"last_check":0},"message":"hi"}'
    assert decode_envelope(raw).discovery.labels == ("a", "b")


def test_encode_is_compact_and_go_ordered():
    data = encode_envelope("goodbye", Discovery("h", ("a", "b"), 99))
    assert (
        data
        == b'{"discovery":{"hostname":"h","labels":["a","b"],"last_check":0},"message":"goodbye"}'
    )


def _packet(**discovery):
    body = {"hostname": "h", "labels": [], "last_check": 0}
    body.update(discovery)
    return orjson.dumps({"discovery": body, "message": "hi"})


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "not_json"),
        (b"not json", "not_json"),
        (b"\xff\xfe", "not_json"),
        (b'{"discovery":', "not_json"),
        (b"[]", "bad_shape"),
        (b"null", "bad_shape"),
        (b'"hi"', "bad_shape"),
        (b'{"message":"hi"}', "bad_shape"),
        (b'{"message":"hi","discovery":[]}', "bad_shape"),
        (b'{"message":"hello","discovery":{"hostname":"h"}}', "bad_message"),
        (b'{"message":null,"discovery":{"hostname":"h"}}', "bad_message"),
        (b'{"discovery":{"hostname":"h"}}', "bad_message"),
        (_packet(hostname=""), "bad_hostname"),
        (_packet(hostname=None), "bad_hostname"),
        (_packet(hostname=5), "bad_hostname"),
        (_packet(hostname="a\nb"), "bad_hostname"),
        (_packet(hostname="   "), "bad_hostname"),
        (_packet(hostname="x" * 1025), "bad_hostname"),
        (_packet(labels="a,b"), "bad_labels"),
        (_packet(labels={"a": 1}), "bad_labels"),
        (_packet(labels=[1]), "bad_labels"),
        (_packet(labels=[None]), "bad_labels"),
        (_packet(labels=[["a"]]), "bad_labels"),
        (_packet(labels=[""]), "bad_label"),
        (_packet(labels=["  "]), "bad_label"),
        (_packet(labels=["a\nb"]), "bad_label"),
        (_packet(labels=["nul\x00"]), "bad_label"),
        (_packet(labels=["del\x7f"]), "bad_label"),
        (_packet(labels=["c1\x85"]), "bad_label"),
        (_packet(labels=["x" * 1025]), "bad_label"),
        (_packet(labels=["é" * 513]), "bad_label"),
        (_packet(last_check="0"), "bad_shape"),
        (_packet(last_check=1.5), "bad_shape"),
        (_packet(labels=["a"] * 20000), "too_large"),
        (b"[" * 100_000, "too_large"),
        (b"[" * 10_000 + b"]" * 10_000, "not_json"),  # nesting beyond orjson's limit
        (b" " * (MAX_PACKET_BYTES + 1), "too_large"),
    ],
)
def test_garbage_is_rejected_with_a_reason(data, reason):
    with pytest.raises(PacketError) as info:
        decode_envelope(data)
    assert info.value.reason == reason


def test_exactly_1024_bytes_is_a_valid_label():
    assert decode_envelope(_packet(labels=["x" * 1024])).discovery.labels == ("x" * 1024,)
    assert label_problem("é" * 512) is None


def test_labels_are_interned():
    a = decode_envelope(_packet(labels=["service:" + "web"]))
    b = decode_envelope(_packet(hostname="other", labels=["service:" + "web"]))
    assert a.discovery.labels[0] is b.discovery.labels[0]


def test_clean_label_trims_and_names_the_bad_label():
    assert clean_label("  service:web \t") == "service:web"
    with pytest.raises(LabelError, match="'a\\\\nb'"):
        clean_label("a\nb")
    with pytest.raises(LabelError, match="empty"):
        clean_label("   ")


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_anything_but_packet_error(data):
    with contextlib.suppress(PacketError):
        decode_envelope(data)


label_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=40
).filter(lambda s: s.strip() != "")


@given(
    st.text(min_size=1, max_size=30).filter(lambda h: h.strip() and label_problem(h) is None),
    st.lists(label_text, max_size=20),
)
def test_encode_decode_roundtrip(hostname, labels):
    discovery = Discovery(hostname, tuple(sorted(set(labels))))
    assert decode_envelope(encode_envelope("hi", discovery)).discovery == discovery


def test_lone_surrogates_are_not_labels():
    # os.environ turns non-UTF-8 bytes into lone surrogates, which cannot go on the wire
    with pytest.raises(LabelError, match="UTF-8"):
        clean_label("loc:\udcff")


# -- the hot path: decode_packet with the labels a node is known to have -------------


class Known:
    """A record as decode_packet sees it (Registry.records maps hostnames to these)."""

    def __init__(self, labels: tuple[str, ...]) -> None:
        self.labels = labels


def test_a_keep_alive_reuses_the_known_labels_tuple():
    known = ("location:prague", "service:web")
    data = encode_envelope("hi", Discovery("a.example", known))
    packet = decode_packet(data, {"a.example": Known(known)})
    assert type(packet) is Packet
    assert packet == Packet("a.example", known, "hi", known, 0, None, None)
    assert packet.labels is known and packet.wire is known


def test_changed_or_unknown_labels_are_checked_as_always():
    known = {"a.example": Known(("service:web",))}
    data = encode_envelope("hi", Discovery("a.example", ("service:db",)))
    assert decode_packet(data, known).labels == ("service:db",)
    bad = orjson.dumps({"discovery": {"hostname": "a.example", "labels": ["x\n"]}, "message": "hi"})
    with pytest.raises(PacketError, match="control character"):
        decode_packet(bad, known)
    unsorted = orjson.dumps(
        {"discovery": {"hostname": "a.example", "labels": ["b", "a", "b"]}, "message": "hi"}
    )
    assert decode_packet(unsorted, {"a.example": Known(("a", "b"))}).labels == ("a", "b")


def test_an_unknown_hostname_is_checked():
    bad = orjson.dumps({"discovery": {"hostname": "a\x00b", "labels": []}, "message": "hi"})
    with pytest.raises(PacketError, match="bad_hostname"):
        decode_packet(bad, {})
    assert decode_envelope(encode_envelope("goodbye", Discovery("a", ()))).message == "goodbye"


# A signed or unsigned keep-alive with up to two faults in the fields decode_packet
# looks at, to hold its keep-alive shortcut to exactly what the full checks decide.
_LABELS = ["location:prague", "service:web"]
_FAULTS = {
    "goodbye": lambda doc, body: doc.update(message="goodbye"),
    "message": lambda doc, body: doc.update(message="hello"),
    "message null": lambda doc, body: doc.update(message=None),
    "hostname int": lambda doc, body: body.update(hostname=7),
    "hostname list": lambda doc, body: body.update(hostname=["a.example"]),
    "hostname unknown": lambda doc, body: body.update(hostname="b.example"),
    "labels unsorted": lambda doc, body: body.update(labels=_LABELS[::-1]),
    "labels other": lambda doc, body: body.update(labels=["service:other"]),
    "label int": lambda doc, body: body.update(labels=[*_LABELS, 1]),
    "labels null": lambda doc, body: body.update(labels=None),
    "labels str": lambda doc, body: body.update(labels="service:web"),
    "last_check str": lambda doc, body: body.update(last_check="0"),
    "last_check float": lambda doc, body: body.update(last_check=0.5),
    "relay": lambda doc, body: doc.update(relay="r.example"),
    "relay int": lambda doc, body: doc.update(relay=3),
    "ts str": lambda doc, body: doc.update(ts="1"),
    "sig int": lambda doc, body: doc.update(sig=7),
    "no message": lambda doc, body: doc.pop("message"),
    "no hostname": lambda doc, body: body.pop("hostname"),
    "no labels": lambda doc, body: body.pop("labels"),
    "no last_check": lambda doc, body: body.pop("last_check"),
    "body list": lambda doc, body: doc.update(discovery=list(body)),
    "body str": lambda doc, body: doc.update(discovery="body"),
    "no body": lambda doc, body: doc.pop("discovery"),
}


@settings(max_examples=400)
@given(
    faults=st.lists(st.sampled_from(sorted(_FAULTS)), max_size=2, unique=True),
    signed=st.booleans(),
)
def test_the_keep_alive_shortcut_decides_as_the_full_checks(faults, signed):
    body: dict[str, object] = {"hostname": "a.example", "labels": _LABELS, "last_check": 0}
    doc: dict[str, object] = {"discovery": body, "message": "hi"}
    if signed:
        doc.update(ts=1_700_000_000_000, sig="abcd1234." + "A" * 43)
    for fault in faults:
        _FAULTS[fault](doc, body)
    data = orjson.dumps(doc)

    def outcome(known: object) -> object:
        try:
            return decode_packet(data, known)  # type: ignore[arg-type]
        except PacketError as exc:
            return exc.reason

    expected = outcome(None)
    assert outcome({"a.example": Known(tuple(_LABELS))}) == expected
    assert outcome({"a.example": Known(("service:other",))}) == expected
