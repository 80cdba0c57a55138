"""The node layer sits below the settings: it reads them through Protocols that
lobby.config.Settings satisfies, and never imports lobby.config (issue 25)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lobby

NODE_LAYER = [
    "presence",
    "identity",
    "receive",
    "announcer",
    "link",
    "labels",
    "relay",
    "checks",
    "brokers",
]


def imported(module: str) -> set[str]:
    tree = ast.parse((Path(lobby.__file__).parent / f"{module}.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("module", NODE_LAYER)
def test_the_node_layer_does_not_import_the_settings(module):
    names = imported(module)
    assert not {n for n in names if n.startswith(("lobby.config", "lobby.settings_framework"))}
    assert "lobby.config" not in {n.rsplit(".", 1)[0] for n in names if n.startswith("lobby.")}


def test_settings_satisfy_every_node_protocol():
    # mypy checks this statically (Presence(settings, ...) in lobby.daemon); here at run
    # time too: every property a node Protocol names is a Settings attribute
    from lobby import config
    from lobby.brokers import BrokerSettings
    from lobby.checks import CheckSettings
    from lobby.presence import PresenceSettings

    settings = config.load({})
    for protocol in (PresenceSettings, BrokerSettings, CheckSettings):
        for cls in protocol.__mro__:
            for name, value in vars(cls).items():
                if isinstance(value, property):
                    assert hasattr(settings, name), f"{protocol.__name__}.{name}"
