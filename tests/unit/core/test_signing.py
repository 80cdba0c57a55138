"""Signed announcements (SPEC §13.1): the canonical form, keys, the gate, the envelope.

The expected signatures are computed here independently, with hashlib and hmac, from
the SPEC's wording, so a change to the canonical form cannot pass unnoticed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import orjson
import pytest

from lobby.core.model import Discovery, PacketError, decode_envelope, decode_sync, encode_envelope
from lobby.core.model import encode_sync as model_encode_sync
from lobby.core.signing import (
    Gate,
    Keyring,
    SigningKeyError,
    canonical,
    decode_key,
    generate_key,
    key_id,
    parse_keys,
    parse_keys_file,
)

K1 = bytes(range(32))
K2 = bytes(range(100, 132))
K1_TEXT = base64.b64encode(K1).decode()
K2_TEXT = base64.b64encode(K2).decode()
TS = 1_764_000_000_000


def spec_sig(key: bytes, message: str, hostname: str, ts: int, labels: list[str]) -> str:
    """The SPEC's words, literally."""
    keyid = hashlib.sha256(key).hexdigest()[:8]
    text = message + "\n" + hostname + "\n" + str(ts) + "\n" + "\n".join(sorted(labels))
    mac = hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()
    return keyid + "." + base64.urlsafe_b64encode(mac).decode().rstrip("=")


class Wall:
    def __init__(self, now: float = TS / 1000) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- keys ---------------------------------------------------------------------------


def test_generated_keys_are_32_random_bytes_in_base64():
    one, two = generate_key(), generate_key()
    assert one != two
    assert len(base64.b64decode(one, validate=True)) == 32


def test_key_id_is_the_first_8_hex_digits_of_sha256():
    assert key_id(K1) == hashlib.sha256(K1).hexdigest()[:8]
    assert Keyring([K1]).signer.id == key_id(K1)


def test_keys_parse_from_the_variable_and_the_file():
    assert parse_keys(f" {K1_TEXT} ,{K2_TEXT},") == [K1, K2]
    text = f"# lobby keys\n\n{K2_TEXT}   # new\n  {K1_TEXT}\n"
    assert parse_keys_file(text) == [K2, K1]
    assert parse_keys("") == [] and parse_keys_file("# none\n") == []
    # url-safe base64 is accepted too
    assert decode_key(base64.urlsafe_b64encode(K2).decode().rstrip("=")) == K2


@pytest.mark.parametrize(
    "bad",
    ["not base64!", base64.b64encode(b"short").decode(), base64.b64encode(K1 + b"x").decode()],
)
def test_a_bad_key_is_refused_without_echoing_it(bad):
    with pytest.raises(SigningKeyError) as info:
        parse_keys(f"{K1_TEXT},{bad}")
    assert bad not in str(info.value) and K1_TEXT not in str(info.value)


def test_nothing_secret_in_reprs():
    ring = Keyring([K1, K2])
    for text in (repr(ring), repr(ring.signer)):
        assert K1_TEXT not in text and str(K1) not in text and key_id(K1) in text


# -- signatures ---------------------------------------------------------------------


def test_signature_is_exactly_the_spec_form():
    labels = ["service:web", "location:prague", "public_ip6:2a03::1", "ünï:cödé"]
    sig = Keyring([K1]).sign("hi", "a.example", TS, sorted(labels))
    assert sig == spec_sig(K1, "hi", "a.example", TS, labels)
    keyid, mac = sig.split(".")
    assert len(keyid) == 8 and len(mac) == 43 and "=" not in mac


def test_canonical_form_without_labels_ends_after_the_third_newline():
    assert canonical("goodbye", "b", 5, ()) == b"goodbye\nb\n5\n"
    assert canonical("hi", "b", 5, ["x", "y"]) == b"hi\nb\n5\nx\ny"


def test_labels_sort_by_code_point():
    labels = ["b", "B", "a", "é", "Z"]
    assert Keyring([K1]).sign("hi", "h", 1, sorted(labels)) == spec_sig(K1, "hi", "h", 1, labels)
    assert sorted(labels) == ["B", "Z", "a", "b", "é"]


def test_every_key_verifies_the_first_signs():
    old, both, swapped, new = Keyring([K1]), Keyring([K1, K2]), Keyring([K2, K1]), Keyring([K2])
    by_old = old.sign("hi", "h", TS, ["a"])
    by_new = swapped.sign("hi", "h", TS, ["a"])
    assert both.sign("hi", "h", TS, ["a"]) == by_old  # the first key signs
    assert by_new.startswith(key_id(K2) + ".")
    for ring in (old, both, swapped):
        assert ring.verify("hi", "h", TS, by_old, ["a"]) is None
    for ring in (both, swapped, new):
        assert ring.verify("hi", "h", TS, by_new, ["a"]) is None
    assert new.verify("hi", "h", TS, by_old, ["a"]) == "unknown_key"
    assert old.verify("hi", "h", TS, by_new, ["a"]) == "unknown_key"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"message": "goodbye"}, "bad_signature"),
        ({"hostname": "i"}, "bad_signature"),
        ({"ts": TS + 1}, "bad_signature"),
        ({"labels": ["b"]}, "bad_signature"),
        ({"labels": []}, "bad_signature"),
        ({"sig": "garbage"}, "bad_signature"),
        ({"sig": ""}, "bad_signature"),
        ({"sig": "0123456789"}, "bad_signature"),
        ({"sig": "01234567.AAAA"}, "unknown_key"),
    ],
)
def test_any_change_breaks_the_signature(change, reason):
    ring = Keyring([K1])
    good = {"message": "hi", "hostname": "h", "ts": TS, "labels": ["a"]}
    good["sig"] = ring.sign("hi", "h", TS, ["a"])
    packet = {**good, **change}
    verdict = ring.verify(
        packet["message"], packet["hostname"], packet["ts"], packet["sig"], packet["labels"]
    )
    assert verdict == reason


def test_a_wrong_separator_is_not_a_signature():
    ring = Keyring([K1])
    sig = ring.sign("hi", "h", TS, ())
    assert ring.verify("hi", "h", TS, sig[:8] + "X" + sig[9:], ()) == "bad_signature"


# -- the gate -----------------------------------------------------------------------


def make_gate(wall: Wall, keys=(K1,), accept_unsigned: bool = False, ttl: float = 30) -> Gate:
    return Gate(Keyring(list(keys)), ttl=ttl, accept_unsigned=accept_unsigned, wall=wall)


def signed(message: str, host: str, ts: int, labels=(), key: bytes = K1) -> tuple:
    return message, host, ts, Keyring([key]).sign(message, host, ts, labels), labels


def test_without_keys_everything_passes_and_nothing_is_signed():
    gate = Gate(None, ttl=30, wall=Wall())
    assert not gate.enabled
    assert gate.admit("hi", "h", 0, None, ()) is None
    assert gate.admit("hi", "h", 0, "forged", ()) is None  # as the Go daemon: not checked
    assert gate.stamp("hi", "h", ()) is None
    assert gate.count_signed({"a", "b"}, 2) == (0, 2)


def test_unsigned_and_forged_packets_are_refused_by_reason():
    wall = Wall()
    gate = make_gate(wall)
    assert gate.admit("hi", "h", 0, None, ()) == "unsigned"
    assert gate.admit(*signed("hi", "h", TS, key=K2)) == "unknown_key"
    message, host, ts, sig, _ = signed("hi", "h", TS, ("a",))
    assert gate.admit(message, host, ts, sig, ("b",)) == "bad_signature"
    assert gate.admit(message, host, ts, sig, ("a",)) is None


def test_ts_must_be_within_ttl_of_our_clock():
    wall = Wall()
    gate = make_gate(wall, ttl=30)
    assert gate.admit(*signed("hi", "a", TS + 30_000)) is None  # exactly TTL: fine
    assert gate.admit(*signed("hi", "b", TS - 30_000)) is None
    assert gate.admit(*signed("hi", "c", TS + 30_001)) == "stale"
    assert gate.admit(*signed("hi", "d", TS - 30_001)) == "stale"

    # a caller that read the clock once for a batch: its reading, not the gate's
    assert gate.admit(*signed("hi", "e", TS + 60_000), now_ms=TS + 40_000) is None
    assert gate.admit(*signed("hi", "f", TS), now_ms=TS + 30_001) == "stale"


def test_replays_and_duplicates():
    wall = Wall()
    gate = make_gate(wall)
    first = signed("hi", "h", TS)
    assert gate.admit(*first) is None
    assert gate.admit(*first) == "duplicate"  # the same packet again (a relayed copy)
    assert gate.admit(*signed("hi", "h", TS, ("other",))) == "replay"  # same ts, other packet
    assert gate.admit(*signed("hi", "h", TS - 1)) == "replay"
    assert gate.admit(*signed("hi", "h", TS + 1)) is None
    assert gate.admit(*signed("hi", "other", TS - 1)) is None  # per hostname


def test_a_replayed_hi_cannot_undo_a_goodbye_even_after_pruning():
    wall = Wall()
    gate = make_gate(wall, ttl=30)
    captured = signed("hi", "h", TS)
    assert gate.admit(*captured) is None
    assert gate.admit(*signed("goodbye", "h", TS + 5)) is None
    assert gate.admit(*captured) == "replay"
    for step in range(1, 8):  # a minute and more later, pruned along the way
        wall.now += 10
        gate.prune()
        assert gate.admit(*captured) in ("replay", "stale"), step
    assert len(gate.announcements) == 0  # forgotten once it could not matter
    assert gate.admit(*captured) == "stale"


def test_prune_keeps_what_is_younger_than_ttl():
    wall = Wall()
    gate = make_gate(wall, ttl=30)
    assert gate.admit(*signed("hi", "old", TS - 20_000)) is None
    assert gate.admit(*signed("hi", "new", TS)) is None
    wall.now += 15  # "old" is 35 s old, "new" 15 s
    assert gate.prune() == 1
    assert set(gate.announcements.last) == {"new"}
    assert gate.prune() == 0  # at most once per TTL


def test_sync_requests_have_their_own_replay_memory():
    wall = Wall()
    gate = make_gate(wall)
    assert gate.admit(*signed("hi", "h", TS + 5)) is None
    # a sync request stamped earlier than the hi, arriving later on its own topic
    assert gate.admit(*signed("sync", "h", TS)) is None
    assert gate.admit(*signed("sync", "h", TS)) == "duplicate"


def test_accept_unsigned_until_a_hostname_is_seen_signed():
    wall = Wall()
    gate = make_gate(wall, accept_unsigned=True)
    assert gate.admit("hi", "go-peer", 0, None, ()) is None
    assert gate.admit(*signed("hi", "py-peer", TS)) is None
    assert gate.admit("hi", "py-peer", 0, None, ()) == "unsigned"
    assert gate.admit("goodbye", "py-peer", 0, None, ()) == "unsigned"
    assert gate.admit(*signed("hi", "go-peer", TS, key=K2)) == "unknown_key"  # still verified
    assert gate.admit("hi", "go-peer", 0, None, ()) is None
    assert gate.count_signed({"go-peer", "py-peer"}, 2) == (1, 1)
    assert make_gate(wall).count_signed({"a"}, 1) == (1, 0)


def test_stamps_increase_strictly_and_verify():
    wall = Wall()
    sender, receiver = make_gate(wall), make_gate(Wall())
    stamps = [sender.stamp("hi", "me", ("a",)) for _ in range(3)]
    assert [ts for ts, _ in stamps] == [TS, TS + 1, TS + 2]  # same millisecond
    for ts, sig in stamps:
        assert receiver.admit("hi", "me", ts, sig, ("a",)) is None
    wall.now -= 60  # the wall clock stepped back: still no ts reused
    assert sender.stamp("hi", "me", ())[0] == TS + 3


# -- envelopes ----------------------------------------------------------------------


def test_unsigned_envelopes_stay_byte_exact_go():
    data = encode_envelope("hi", Discovery("a.example", ("location:prague", "service:web")))
    assert data == (
        b'{"discovery":{"hostname":"a.example","labels":["location:prague","service:web"],'
        b'"last_check":0},"message":"hi"}'
    )
    env = decode_envelope(data)
    assert (env.ts, env.sig) == (0, None)


def test_signed_envelopes_add_ts_and_sig_and_round_trip():
    ring = Keyring([K1])
    labels = ("location:prague", "service:web")
    sig = ring.sign("hi", "a.example", TS, labels)
    data = encode_envelope("hi", Discovery("a.example", labels), (TS, sig))
    assert data.endswith(f',"message":"hi","ts":{TS},"sig":"{sig}"}}'.encode())
    env = decode_envelope(data)
    assert (env.ts, env.sig, env.wire_labels) == (TS, sig, labels)
    assert env.discovery == Discovery("a.example", labels)
    gate = make_gate(Wall())
    assert gate.admit(env.message, "a.example", env.ts, env.sig, env.wire_labels) is None


def test_signature_covers_the_wire_labels_not_the_cleaned_ones():
    wire = ["b", "a", "b"]  # out of order, with a duplicate
    sig = spec_sig(K1, "hi", "h", TS, wire)
    doc = {
        "discovery": {"hostname": "h", "labels": wire, "last_check": 0},
        "message": "hi",
        "ts": TS,
        "sig": sig,
    }
    env = decode_envelope(orjson.dumps(doc))
    assert env.discovery.labels == ("a", "b")
    assert env.wire_labels == ("a", "b", "b")
    assert Keyring([K1]).verify("hi", "h", TS, sig, env.wire_labels) is None


def test_signed_goodbye_covers_its_labels_too():
    sig = spec_sig(K1, "goodbye", "h", TS, ["x"])
    doc = {
        "discovery": {"hostname": "h", "labels": ["x"], "last_check": 0},
        "message": "goodbye",
        "ts": TS,
        "sig": sig,
    }
    env = decode_envelope(orjson.dumps(doc))
    assert env.discovery.labels == () and env.wire_labels == ("x",)
    assert Keyring([K1]).verify("goodbye", "h", TS, sig, env.wire_labels) is None
    doc["discovery"]["labels"] = [1]  # type: ignore[index]
    with pytest.raises(PacketError, match="bad_labels"):
        decode_envelope(orjson.dumps(doc))


@pytest.mark.parametrize(("ts", "sig"), [("1", "x"), (1.5, "x"), (True, "x"), (1, 7), (1, None)])
def test_malformed_signature_fields_never_pass_for_unsigned(ts, sig):
    doc = {
        "discovery": {"hostname": "h", "labels": [], "last_check": 0},
        "message": "hi",
        "ts": ts,
        "sig": sig,
    }
    env = decode_envelope(orjson.dumps(doc))
    gate = make_gate(Wall())
    verdict = gate.admit("hi", "h", env.ts, env.sig, env.wire_labels)
    assert verdict == ("unsigned" if sig is None else "bad_signature")


def test_sync_requests_are_signed_with_no_labels():
    ring = Keyring([K1])
    sig = ring.sign("sync", "me", TS, ())
    assert sig == spec_sig(K1, "sync", "me", TS, [])
    request = decode_sync(model_encode_sync("me", (TS, sig)))
    assert (request.hostname, request.ts, request.sig) == ("me", TS, sig)
    assert decode_sync(model_encode_sync("me")).sig is None
    assert decode_sync(b'{"message":"sync","hostname":"me","sig":1,"ts":2}').sig == ""
