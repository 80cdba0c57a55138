"""Prometheus HTTP SD (SPEC §6). Placeholder: being written."""

from __future__ import annotations

from typing import Any

from lobby.registry import Registry


def add_routes(app: Any, registry: Registry, default_port: int) -> None:
    """Add GET /v1/prometheus/{name} to `app`."""
