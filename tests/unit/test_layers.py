"""The layout's rules, held against the code (issue 25): folders by role, data flowing
one way, no import from a lower layer to a higher one and no circle.

| folder | may import (of ours) |
| --- | --- |
| core, system, ops | nothing |
| drivers | system |
| view | core |
| node | drivers, view, core, system |
| api, nameserver, hooks | view, core, system, config |
| calls (the clients' side) | nothing |

The top level (config, daemon, lobbyd, ctl, client) wires the rest and may import
anything; the package root is imported for its version alone.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lobby

ROOT = Path(lobby.__file__).parent
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "system": set(),
    "ops": set(),
    "drivers": {"system"},
    "view": {"core"},
    "node": {"drivers", "view", "core", "system"},
    "api": {"view", "core", "system", "config"},
    "nameserver": {"view", "core", "system", "config"},
    "hooks": {"view", "core", "system", "config"},
    "calls": set(),
}
TOP_LEVEL = {"__init__", "__main__", "config", "daemon", "lobbyd", "ctl", "client"}


def modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def ours(path: Path) -> set[str]:
    """The lobby modules `path` imports (at any depth: lazy imports count too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "lobby":  # from lobby import x: x is the module
                names.update(f"lobby.{alias.name}" for alias in node.names)
            elif node.module.startswith("lobby."):
                names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("lobby."))
    return names


def layer(dotted: str) -> str:
    """lobby.view.registry -> view; lobby.config -> config; lobby.__version__ -> ''."""
    part = dotted.split(".")[1]
    return "" if part.startswith("__") else part


def test_no_top_level_module_beyond_the_wiring():
    top = {p.stem for p in ROOT.glob("*.py")}
    assert top <= TOP_LEVEL, top - TOP_LEVEL
    entries = [p for p in ROOT.iterdir() if p.name != "__pycache__" and p.suffix != ".typed"]
    assert len(entries) <= 25


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_a_folder_imports_only_the_layers_below_it(folder):
    wrong = {}
    for path in (ROOT / folder).rglob("*.py"):
        bad = {name for name in ours(path) if layer(name) not in ALLOWED[folder] | {folder, ""}}
        if bad:
            wrong[str(path.relative_to(ROOT))] = sorted(bad)
    assert wrong == {}


def test_no_circles_between_folders():
    edges: dict[str, set[str]] = {}
    for path in modules():
        rel = path.relative_to(ROOT)
        src = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        for name in ours(path):
            dst = layer(name)
            if dst and dst != src:
                edges.setdefault(src, set()).add(dst)
    seen: set[str] = set()
    stack: list[str] = []

    def visit(node: str) -> None:
        assert node not in stack, f"a circle: {' -> '.join([*stack, node])}"
        if node in seen:
            return
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            visit(nxt)
        stack.pop()
        seen.add(node)

    for start in sorted(edges):
        visit(start)


def test_settings_satisfy_every_node_protocol():
    # mypy checks this statically (Presence(settings, ...) in lobby.daemon); here at run
    # time too: every property a node Protocol names is a Settings attribute
    from lobby import config
    from lobby.node.brokers import BrokerSettings
    from lobby.node.checks import CheckSettings
    from lobby.node.presence import PresenceSettings

    settings = config.load({})
    for protocol in (PresenceSettings, BrokerSettings, CheckSettings):
        for cls in protocol.__mro__:
            for name, value in vars(cls).items():
                if isinstance(value, property):
                    assert hasattr(settings, name), f"{protocol.__name__}.{name}"
