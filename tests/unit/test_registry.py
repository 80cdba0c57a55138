import pytest

from lobby.model import Discovery
from lobby.registry import Change, Registry


class Clock:
    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = 1_764_000_000.0

    def tick(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def reg(clock: Clock) -> Registry:
    return Registry(30, clock=lambda: clock.mono, wall_clock=lambda: clock.wall)


def d(host: str, *labels: str) -> Discovery:
    return Discovery(host, tuple(sorted(labels)))


def test_join_sets_last_check_from_our_clock(reg, clock):
    assert reg.update(d("a", "x"))
    assert reg.discoveries() == [Discovery("a", ("x",), 1_764_000_000)]


def test_ttl_edge_is_exact(reg, clock):
    reg.update(d("a"))
    clock.tick(29.999)
    assert "a" in reg
    clock.tick(0.001)
    assert "a" not in reg  # live while now - last_check < TTL
    assert reg.discoveries() == []


def test_refresh_extends_life(reg, clock):
    reg.update(d("a"))
    clock.tick(20)
    reg.update(d("a"))
    clock.tick(20)
    assert [x.hostname for x in reg.discoveries()] == ["a"]


def test_index_moves_on_content_change_only(reg, clock):
    start = reg.index
    reg.update(d("a", "x"))
    joined = reg.index
    assert joined > start
    clock.tick(5)
    assert not reg.update(d("a", "x"))  # keep-alive
    assert reg.index == joined
    assert reg.update(d("a", "x", "y"))  # label change
    changed = reg.index
    assert changed > joined
    assert reg.remove("a")
    left = reg.index
    assert left > changed
    assert not reg.remove("a")
    assert reg.index == left
    reg.update(d("b"))
    joined_b = reg.index
    clock.tick(30)
    assert reg.index > joined_b  # expiry


def test_listeners_hear_every_change_in_order(reg, clock):
    seen: list[Change] = []
    reg.add_listener(seen.append)
    reg.update(d("a", "x"))
    reg.update(d("a", "x"))
    reg.update(d("a", "y"))
    reg.update(d("b"))
    reg.remove("a")
    clock.tick(31)
    reg.expire()
    assert [(c.kind, c.hostname, c.labels, c.reason) for c in seen] == [
        ("join", "a", ("x",), ""),
        ("update", "a", ("y",), ""),
        ("join", "b", (), ""),
        ("leave", "a", ("y",), "goodbye"),
        ("leave", "b", (), "expired"),
    ]
    assert [c.index for c in seen] == sorted(c.index for c in seen)
    assert seen[-1].index == reg.index


def test_expiry_pops_oldest_first_and_keeps_the_fresh(reg, clock):
    for i in range(5):
        reg.update(d(f"n{i}"))
        clock.tick(10)
    # n0 seen at t=0 ... n4 at t=40; now t=50
    assert [x.hostname for x in reg.discoveries()] == ["n3", "n4"]


def test_next_expiry(reg, clock):
    assert reg.next_expiry() is None
    reg.update(d("a"))
    clock.tick(10)
    reg.update(d("b"))
    assert reg.next_expiry() == pytest.approx(20)
    reg.pause()
    assert reg.next_expiry() is None


def test_pause_stops_the_ttl_countdown(reg, clock):
    reg.update(d("a"))
    clock.tick(10)
    reg.pause()
    clock.tick(600)
    assert "a" in reg
    reg.resume()
    clock.tick(19.9)
    assert "a" in reg  # 10 s before the pause + 19.9 s after it
    clock.tick(0.1)
    assert "a" not in reg


def test_pause_since_the_past_backdates_the_outage(reg, clock):
    reg.update(d("a"))
    clock.tick(25)
    reg.pause(since=clock.mono - 20)  # link went silent at t=5
    clock.tick(100)
    reg.resume()
    clock.tick(24.9)
    assert "a" in reg
    clock.tick(0.1)
    assert "a" not in reg


def test_wall_clock_jump_does_not_expire_or_resurrect(reg, clock):
    reg.update(d("a"))
    clock.wall += 3600
    assert "a" in reg
    clock.wall -= 7200
    clock.mono += 31
    assert "a" not in reg


def test_sorted_by_hostname_whatever_the_arrival_order(reg):
    for host in ["c", "a", "b"]:
        reg.update(d(host))
    assert [x.hostname for x in reg.discoveries()] == ["a", "b", "c"]
    reg.remove("b")
    reg.update(d("aa"))
    assert [x.hostname for x in reg.discoveries()] == ["a", "aa", "c"]


def test_label_filter_keeps_only_matching_labels(reg):
    reg.update(d("a", "service:web", "location:prague"))
    reg.update(d("b", "service:smtp"))
    reg.update(d("c", "location:brno", "service:web"))
    got = reg.with_labels(["service:web", "location:brno"])
    assert [(x.hostname, x.labels) for x in got] == [
        ("a", ("service:web",)),
        ("c", ("location:brno", "service:web")),
    ]
    assert reg.with_labels(["nothing"]) == []


def test_prefix_filter(reg):
    reg.update(d("a", "service:web", "location:prague"))
    reg.update(d("b", "service:smtp"))
    got = reg.with_prefixes(["service:", "loc"])
    assert [(x.hostname, x.labels) for x in got] == [
        ("a", ("location:prague", "service:web")),
        ("b", ("service:smtp",)),
    ]
    assert [x.hostname for x in reg.with_prefixes(["service:s"])] == ["b"]


def test_resolve(reg):
    reg.update(d("b", "service:web"))
    reg.update(d("a", "service:web"))
    reg.update(d("c", "service:webx"))
    assert reg.resolve("service:web") == ["a", "b"]
    assert reg.resolve("service:") == []


def test_filters_never_return_expired_records(reg, clock):
    reg.update(d("a", "x"))
    clock.tick(30)
    assert reg.with_labels(["x"]) == []
    assert reg.with_prefixes(["x"]) == []
    assert reg.resolve("x") == []
    assert reg.get("a") is None


def test_cache_reused_until_index_moves(reg, clock):
    builds = []

    def build() -> bytes:
        builds.append(1)
        return str(len(builds)).encode()

    reg.update(d("a"))
    assert reg.cached("k", build, timed=False) == b"1"
    clock.tick(5)
    reg.update(d("a"))  # keep-alive: no change
    assert reg.cached("k", build, timed=False) == b"1"
    reg.update(d("b"))
    assert reg.cached("k", build, timed=False) == b"2"


def test_timed_cache_also_rebuilt_each_wall_second(reg, clock):
    n = 0

    def build() -> bytes:
        nonlocal n
        n += 1
        return str(n).encode()

    reg.update(d("a"))
    assert reg.cached("all", build) == b"1"
    clock.tick(0.0001)
    assert reg.cached("all", build) in (b"1", b"2")
    clock.tick(1)
    first = reg.cached("all", build)
    assert reg.cached("all", build) == first
    assert first != b"1"


def test_cache_dropped_on_expiry(reg, clock):
    reg.update(d("a"))
    before = reg.cached("k", lambda: b"with a", timed=False)
    clock.tick(31)
    assert reg.cached("k", lambda: b"empty", timed=False) == b"empty" != before


def test_ttl_must_be_positive():
    with pytest.raises(ValueError):
        Registry(0)
