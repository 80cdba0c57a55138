import pytest
from fakes import FakeClock
from hypothesis import given
from hypothesis import strategies as st

from lobby.core.model import Discovery
from lobby.view.registry import Change, Registry


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def reg(clock: FakeClock) -> Registry:
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


def test_expiry_stays_exact_while_nothing_is_due(reg, clock):
    # expire() skips its scan until the oldest record can be due; whatever moved in
    # between (an empty registry, joins, refreshes, a join from a listener) never
    # makes it late
    reg.update(d("a"))
    clock.tick(31)
    assert len(reg) == 0  # nothing left: nothing is due until the next join
    reg.update(d("b"))
    clock.tick(10)
    reg.update(d("c"))
    clock.tick(5)
    reg.update(d("b"))  # b now the youngest, c the oldest
    clock.tick(24.999)
    assert names(reg) == ["b", "c"]
    clock.tick(0.001)
    assert names(reg) == ["b"]

    def rejoin(change: Change) -> None:
        if change.kind == "leave" and change.hostname == "b":
            reg.update(d("late"))  # joins during an expiry pass

    reg.add_listener(rejoin)
    clock.tick(5)
    assert names(reg) == ["late"]
    clock.tick(29.999)
    assert names(reg) == ["late"]
    clock.tick(0.001)
    assert names(reg) == []


def test_ttl_must_be_positive():
    with pytest.raises(ValueError):
        Registry(0)


# -- several links (SPEC §15): each has its own clock; a record ages on the clock of the
# -- link that refreshed it last -----------------------------------------------------------

NATS, REDIS = 0, 1  # places in Registry.links


@pytest.fixture
def two(clock: FakeClock) -> Registry:
    reg = Registry(30, clock=lambda: clock.mono, wall_clock=lambda: clock.wall)
    assert reg.add_link() is reg.links[REDIS]
    return reg


def names(reg: Registry) -> list[str]:
    return [x.hostname for x in reg.discoveries()]


def test_a_link_outage_keeps_only_the_nodes_heard_last_through_it(two, clock):
    two.update(d("nats-only"), two.links[NATS])
    two.update(d("redis-only"), two.links[REDIS])
    clock.tick(10)
    two.pause(two.links[REDIS])
    assert two.paused and two.link_paused(two.links[REDIS]) and not two.link_paused(two.links[NATS])
    clock.tick(600)  # a long Redis outage: the NATS node falls silent and expires
    assert names(two) == ["redis-only"]
    two.resume(two.links[REDIS])
    clock.tick(19.9)  # 10 s before the outage + 19.9 s after it
    assert names(two) == ["redis-only"]
    clock.tick(0.1)
    assert names(two) == []


def test_a_node_refreshed_through_a_live_link_during_the_outage_expires_normally(two, clock):
    # "both" lives on both brokers; its Redis copy happened to arrive last
    two.update(d("both"), two.links[NATS])
    two.update(d("both"), two.links[REDIS])
    two.pause(two.links[REDIS])
    clock.tick(5)
    two.update(d("both"), two.links[NATS])  # still heard through NATS: it now ages on NATS' clock
    clock.tick(29.9)
    assert names(two) == ["both"]
    clock.tick(0.1)  # then silent for TTL on a live link: dead, whatever Redis would say
    assert names(two) == []


def test_a_node_heard_last_through_the_down_link_is_kept(two, clock):
    two.update(d("both"), two.links[REDIS])
    two.update(d("both"), two.links[NATS])
    clock.tick(1)
    two.update(d("both"), two.links[REDIS])  # the last word came through Redis, which then fails
    two.pause(two.links[REDIS])
    clock.tick(600)
    assert names(two) == ["both"]


def test_each_link_pauses_on_its_own_clock_and_since_backdates_it(two, clock):
    two.update(d("a"), two.links[NATS])
    two.update(d("b"), two.links[REDIS])
    clock.tick(25)
    two.pause(two.links[REDIS], since=clock.mono - 20)  # Redis went silent at t=5
    two.pause(two.links[NATS])  # NATS down now, at t=25
    clock.tick(100)
    two.resume(two.links[NATS])
    two.resume(two.links[REDIS])
    assert not two.paused
    clock.tick(4.9)
    assert names(two) == ["a", "b"]  # a: 25 + 4.9; b: 5 + 4.9
    clock.tick(0.1)
    assert names(two) == ["b"]
    clock.tick(20)
    assert names(two) == []


def test_next_expiry_looks_at_running_links_only(two, clock):
    two.update(d("a"), two.links[NATS])
    clock.tick(10)
    two.update(d("b"), two.links[REDIS])
    assert two.next_expiry() == pytest.approx(20)
    two.pause(two.links[NATS])
    assert two.next_expiry() == pytest.approx(30)
    two.pause(two.links[REDIS])
    assert two.next_expiry() is None


def test_expiry_is_exact_across_links_whose_clocks_differ(two, clock):
    # a NATS outage makes NATS' clock lag: a record refreshed earlier through NATS may
    # now outlive one refreshed later through Redis; neither may show past its TTL
    two.update(d("nats"), two.links[NATS])
    clock.tick(5)
    two.update(d("redis"), two.links[REDIS])
    two.pause(two.links[NATS])
    clock.tick(14)
    two.resume(two.links[NATS])
    clock.tick(16)  # redis silent 30 s; nats 35 s of which 14 paused: 21 s
    assert names(two) == ["nats"]
    clock.tick(9)
    assert names(two) == []


def test_goodbye_and_changes_work_across_links(two, clock):
    seen: list[Change] = []
    two.add_listener(seen.append)
    two.update(d("a", "x"), two.links[NATS])
    assert not two.update(d("a", "x"), two.links[REDIS])  # same content through another link
    assert two.update(d("a", "y"), two.links[NATS])
    assert len(two) == 1 and two.get("a") == Discovery("a", ("y",), 1_764_000_000)
    assert two.remove("a")
    assert names(two) == [] and not two.remove("a")
    assert [(c.kind, c.hostname) for c in seen] == [
        ("join", "a"),
        ("update", "a"),
        ("leave", "a"),
    ]
    two.update(d("a"), two.links[REDIS])  # a record removed from its queue too: it can come back
    clock.tick(30)
    assert names(two) == []


def test_a_link_added_later_keeps_the_records_already_there(reg, clock):
    reg.update(d("a"))
    second = reg.add_link()
    reg.update(d("b"), second)
    assert names(reg) == ["a", "b"] and reg.links == (reg.first_link, second)
    reg.pause(second)
    clock.tick(30)
    assert names(reg) == ["b"]


def test_refresh_many_is_refresh_in_a_loop(clock):
    def run(batched: bool) -> tuple[list[Discovery], list[tuple[str, str, tuple[str, ...]]]]:
        reg = Registry(30, clock=lambda: clock.mono, wall_clock=lambda: clock.wall)
        reg.add_link()
        changes: list[tuple[str, str, tuple[str, ...]]] = []
        reg.add_listener(lambda c: changes.append((c.kind, c.hostname, c.labels)))
        steps = [
            (NATS, [("a", ("x",)), ("b", ()), ("a", ("x",)), ("c", ("y",))]),
            (REDIS, [("b", ()), ("a", ("z",)), ("d", ())]),  # b and a move to REDIS
            (NATS, [("c", ("y", "z")), ("a", ("z",)), ("c", ("y", "z"))]),
        ]
        for via, nodes in steps:
            clock.tick(10)
            if batched:
                reg.refresh_many(nodes, reg.links[via])
            else:
                for hostname, labels in nodes:
                    reg.refresh(hostname, labels, reg.links[via])
        clock.tick(25)  # b and d (last heard at +20) expire; a, c (+30) do not
        return reg.discoveries(), changes

    start = (clock.mono, clock.wall)
    one_by_one = run(False)
    clock.mono, clock.wall = start
    assert run(True) == one_by_one
    assert [x.hostname for x in one_by_one[0]] == ["a", "c"]


def test_lists_are_built_without_the_collector_which_is_left_as_found(reg):
    import gc

    reg.update(d("a", "x"))
    seen = []

    def pick(labels):
        seen.append(gc.isenabled())
        if len(seen) == 2:
            raise RuntimeError("a broken view")
        return labels

    assert reg.view(pick) == [Discovery("a", ("x",), 1_764_000_000)]
    assert seen == [False] and gc.isenabled()
    with pytest.raises(RuntimeError):
        reg.view(pick)
    assert gc.isenabled()  # back on after a failure too
    gc.disable()
    try:
        reg.discoveries()
        assert not gc.isenabled()  # paused by someone else: not turned on under them
    finally:
        gc.enable()


def test_labelled_walks_live_nodes_like_discoveries(reg, clock):
    reg.update(d("b", "y"))
    clock.tick(20)
    reg.update(d("a", "x", "z"))
    assert list(reg.labelled()) == [(x.hostname, x.labels) for x in reg.discoveries()]
    assert list(reg.labelled()) == [("a", ("x", "z")), ("b", ("y",))]
    clock.tick(15)  # b is past its TTL: expired before the walk
    assert list(reg.labelled()) == [("a", ("x", "z"))]


def test_labels_of_skips_nodes_gone_meanwhile(reg, clock):
    reg.update(d("a", "x"))
    reg.update(d("b", "y"))
    names = reg.hostnames()
    reg.remove("a")
    assert list(reg.labels_of(names)) == [("b", ("y",))]


async def test_snapshot_hands_the_loop_back_and_sees_changes(reg, clock):
    import asyncio

    for i in range(100):
        reg.update(d(f"n{i:03d}", "x"))

    def rows() -> list[tuple[str, tuple[str, ...], int]]:
        return [(x.hostname, x.labels, x.last_check) for x in reg.discoveries()]

    turns = 0

    async def count() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    counter = asyncio.ensure_future(count())
    whole = await reg.snapshot(step=10)
    assert whole == rows()
    assert turns >= 9  # the loop ran between the slices

    async def change() -> None:
        await asyncio.sleep(0)
        reg.update(d("n000", "changed"))  # a slice already taken: made again
        reg.remove("n099")

    changed, _ = await asyncio.gather(reg.snapshot(step=10), change())
    assert changed == rows()
    assert changed[0][1] == ("changed",) and len(changed) == 99

    async def churn() -> None:  # a change at every turn: after 3 tries, at once
        for i in range(50):
            reg.update(d("n001", f"turn:{i}"))
            await asyncio.sleep(0)

    moving, _ = await asyncio.gather(reg.snapshot(step=10, tries=3), churn())
    counter.cancel()
    assert len(moving) == 99 and moving[1][0] == "n001"


# -- this node's own record, and the echo it expects (issue 24) ------------------------


def test_own_record_is_never_expired_and_its_labels_change_at_once(reg, clock):
    reg.update(d("peer"))
    reg.set_own("me", ("a:1",))
    clock.tick(31)
    assert [x.hostname for x in reg.discoveries()] == ["me"]  # the peer expired, not we
    index = reg.index
    clock.tick(3600)
    assert reg.get("me").labels == ("a:1",) and reg.index == index
    reg.set_own("me", ("a:2",))  # a local change: no echo needed
    assert reg.get("me").labels == ("a:2",) and reg.index == index + 1


def test_own_record_under_a_new_hostname_replaces_the_old(reg, clock):
    reg.set_own("old", ("a:1",))
    reg.set_own("new", ("a:1",))
    assert [x.hostname for x in reg.discoveries()] == ["new"]
    reg.set_own(None)  # leaving: an ordinary record from now on
    clock.tick(31)
    assert reg.discoveries() == []


def test_an_overdue_echo_holds_the_link_from_the_last_echo(reg, clock):
    reg.update(d("peer"))  # seen at 1000
    clock.tick(20)
    reg.expect_echo(reg.first_link, since=clock.mono, within=7.5)  # our echo at 1020
    clock.tick(7.4)
    assert not reg.paused and "peer" in reg
    clock.tick(0.2)  # the echo is overdue: no task had to notice it
    assert reg.echo_overdue(reg.first_link) and reg.paused
    clock.tick(3600)  # a hung broker: the peer aged only to 1020 on the link's clock
    assert "peer" in reg
    reg.expect_echo(reg.first_link, since=clock.mono, within=60)  # the echo is back
    assert not reg.paused and not reg.echo_overdue(reg.first_link)
    clock.tick(9.9)  # 20 s old at the hold, so 10 s left
    assert "peer" in reg
    clock.tick(0.2)
    assert "peer" not in reg


def test_an_echo_hold_and_a_link_down_must_both_resume(reg, clock):
    reg.update(d("peer"))
    reg.expect_echo(reg.first_link, since=clock.mono, within=1)
    reg.pause(reg.first_link, since=clock.mono)  # the driver says down
    clock.tick(5)
    assert reg.echo_overdue(reg.first_link)
    reg.expect_echo(reg.first_link, since=clock.mono, within=1)  # an echo, yet the driver is down
    assert reg.paused
    reg.resume(reg.first_link)
    assert not reg.paused
    clock.tick(29.9)
    assert "peer" in reg


def test_refresh_after_an_overdue_echo_does_not_expire_first(reg, clock):
    reg.update(d("a"))
    reg.update(d("b"))
    reg.expect_echo(reg.first_link, since=clock.mono, within=1)
    clock.tick(100)  # a and b would be long dead on a running clock
    reg.refresh_many([("c", ())])  # the hot path reads the clock first
    assert sorted(x.hostname for x in reg.discoveries()) == ["a", "b", "c"]


def test_grant_ttl_gives_every_node_of_a_link_a_whole_ttl_from_now(two, clock):
    first, second = two.links
    two.update(d("old"), via=first)  # 25 s old when its link comes back
    clock.tick(10)
    two.update(d("other"), via=second)
    clock.tick(15)
    two.pause(first)
    clock.tick(60)  # the outage: nothing ages
    two.resume(first)
    two.grant_ttl(first)
    clock.tick(29.999)  # without the grant "old" had 5 s left
    assert "old" in two
    assert "other" not in two  # the other link's nodes age as before
    clock.tick(0.001)
    assert "old" not in two  # a whole TTL, not more


def test_a_mirrors_registry_expires_nothing_while_paused(reg, clock):
    reg.pause(why="mirror")
    reg.update(d("a"))
    clock.tick(3600)
    assert "a" in reg
    assert reg.remove("a", "expired")
    assert "a" not in reg


def scan(reg: Registry, labels: set[str]) -> list[str]:
    return [d.hostname for d in reg.discoveries() if labels & set(d.labels)]


def test_the_label_index_follows_joins_updates_leaves_and_expiry(reg, clock):
    reg.update(d("a", "x", "y"))
    reg.update(d("b", "y"))
    clock.tick(10)
    reg.update(d("c", "x"))
    assert reg.resolve("x") == ["a", "c"] and reg.resolve("y") == ["a", "b"]
    reg.update(d("a", "y", "z"))  # loses x, gains z
    assert reg.resolve("x") == ["c"] and reg.resolve("z") == ["a"]
    assert reg.carrying(["x", "z"]) == ["a", "c"]
    reg.remove("c")
    assert reg.resolve("x") == [] and reg.carrying(["x"]) == []
    clock.tick(20)  # b expires (30 s old); a was refreshed at 10 s
    assert reg.resolve("y") == ["a"] and reg.carrying(["y", "z"]) == ["a"]
    clock.tick(10)  # a expires
    assert reg.resolve("y") == [] and reg.carrying(["y", "z"]) == []
    reg.update(d("b", "y"))  # back again
    assert reg.resolve("y") == ["b"]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c", "d"]),
            st.frozensets(st.sampled_from(["x", "y", "z"])),
            st.booleans(),
        ),
        max_size=30,
    )
)
def test_the_label_index_answers_as_a_scan_would(steps):
    clock = FakeClock()
    reg = Registry(30, clock=lambda: clock.mono, wall_clock=lambda: clock.wall)
    for host, labels, leave in steps:
        if leave:
            reg.remove(host)
        else:
            reg.update(d(host, *labels))
        clock.tick(3)
        for label in ("x", "y", "z"):
            assert reg.resolve(label) == scan(reg, {label})
        assert reg.carrying(["x", "z"]) == scan(reg, {"x", "z"})


def test_hostnames_stay_sorted_through_joins_leaves_and_returns(reg, clock):
    import random

    rng = random.Random(7)
    names = [f"n{i:03d}" for i in range(300)]
    for name in rng.sample(names, 200):
        reg.update(d(name, "x"))
    kept = reg.hostnames()
    assert kept == sorted(reg.records)
    first = list(kept)
    for _ in range(40):  # a few changes between reads: made from the previous list
        for _ in range(rng.randint(1, 6)):
            name = rng.choice(names)
            if name in reg.records and rng.random() < 0.5:
                reg.remove(name)
            else:
                reg.update(d(name, f"v{rng.random()}"))
        listed = reg.hostnames()
        assert listed == sorted(reg.records)
        assert len(set(listed)) == len(listed)
    assert kept == first and kept is not reg.hostnames()  # replaced, never changed in place
    reg.remove("n000")
    reg.update(d("n000", "back"))  # left and joined again between two reads: once
    assert reg.hostnames().count("n000") == 1
