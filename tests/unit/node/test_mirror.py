"""An agent's copy of the cluster (lobby.node.mirror): each list replaces the copy."""

from fakes import FakeClock

from lobby.node.mirror import Mirror
from lobby.node.queries import Asker
from lobby.view.registry import Change, Registry


def test_each_list_replaces_the_copy_with_joins_updates_and_leaves():
    clock = FakeClock()
    registry = Registry(5, clock=lambda: clock.mono, wall_clock=lambda: clock.wall)
    changes: list[Change] = []
    registry.add_listener(changes.append)
    mirror = Mirror(Asker([]), registry)
    mirror.replace([{"hostname": "a", "labels": ["x"]}, {"hostname": "b", "labels": []}])
    clock.tick(3600)  # the copy's clock stands: only the listener's lists decide
    mirror.replace([{"hostname": "a", "labels": ["x", "y"]}, {"hostname": "c", "labels": []}])
    mirror.replace([{"hostname": "a", "labels": ["x", "y"]}, {"hostname": "c", "labels": []}])
    assert [(c.kind, c.hostname, c.reason) for c in changes] == [
        ("join", "a", ""),
        ("join", "b", ""),
        ("update", "a", ""),
        ("join", "c", ""),
        ("leave", "b", "expired"),
    ]
    assert registry.hostnames() == ["a", "c"]
