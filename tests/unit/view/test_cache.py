"""lobby.cache: answers kept until the registry changes, one invalidation for all."""

import pytest
from fakes import FakeClock

from lobby.core.answer import Answer
from lobby.core.model import Discovery
from lobby.view.cache import Answers, Store
from lobby.view.registry import Registry


def d(host: str, *labels: str) -> Discovery:
    return Discovery(host, tuple(sorted(labels)))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def reg(clock: FakeClock) -> Registry:
    return Registry(30, clock=lambda: clock.mono, wall_clock=lambda: clock.wall)


@pytest.fixture
def answers(reg: Registry, clock: FakeClock) -> Answers:
    return Answers(reg, wall=lambda: clock.wall)


def test_cache_reused_until_index_moves(reg, answers, clock):
    builds = []

    def build() -> bytes:
        builds.append(1)
        return str(len(builds)).encode()

    reg.update(d("a"))
    assert answers.cached("k", build, timed=False) == b"1"
    clock.tick(5)
    reg.update(d("a"))  # keep-alive: no change
    assert answers.cached("k", build, timed=False) == b"1"
    reg.update(d("b"))
    assert answers.cached("k", build, timed=False) == b"2"


def test_timed_cache_also_rebuilt_each_wall_second(reg, answers, clock):
    n = 0

    def build() -> bytes:
        nonlocal n
        n += 1
        return str(n).encode()

    reg.update(d("a"))
    assert answers.cached("all", build) == b"1"
    clock.tick(0.0001)
    assert answers.cached("all", build) in (b"1", b"2")
    clock.tick(1)
    first = answers.cached("all", build)
    assert answers.cached("all", build) == first
    assert first != b"1"


def test_cache_dropped_on_expiry(reg, answers, clock):
    reg.update(d("a"))
    before = answers.cached("k", lambda: b"with a", timed=False)
    clock.tick(31)
    assert answers.cached("k", lambda: b"empty", timed=False) == b"empty" != before


def test_a_store_keeps_its_bound_and_empties_on_a_change(reg, clock):
    store: Store[bytes] = Store(reg, len, entries=2, limit=10)
    store.put("a", b"1234")
    store.put("b", b"1234")
    assert (store.get("a"), len(store)) == (b"1234", 2)
    store.put("c", b"12")  # a third entry: past the bound, it starts afresh
    assert (store.get("a"), store.get("c"), len(store)) == (None, b"12", 1)
    store.put("d", b"123456789")  # 2 + 9 bytes > 10
    assert (store.get("c"), store.get("d")) == (None, b"123456789")
    reg.update(d("a"))  # any change empties it
    assert len(store) == 0


def test_timed_and_untimed_answers_of_one_key_are_apart(reg, answers, clock):
    reg.update(d("a"))
    assert answers.cached("k", lambda: b"timed") == b"timed"
    assert answers.cached("k", lambda: b"untimed", timed=False) == b"untimed"
    clock.tick(1)  # a new second: only the timed one is built again
    assert answers.cached("k", lambda: b"timed 2") == b"timed 2"
    assert answers.cached("k", lambda: b"again", timed=False) == b"untimed"


def test_listing_is_the_registry_encoded_and_kept(reg, answers):
    reg.update(d("b", "x:1"))
    reg.update(d("a"))
    listing = answers.listing()
    assert isinstance(listing, Answer) and answers.listing() is listing
    assert listing.body.startswith(b'[\n  {\n    "hostname": "a"')
    assert answers.all_json() == listing.body
