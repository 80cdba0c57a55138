"""Pydantic models that describe answers in the OpenAPI document, and nothing else.

The hot paths serialize with orjson directly (lobby.model); these only give
/openapi.json its shapes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class DiscoveryModel(BaseModel):
    """One node's discovery packet as the API returns it."""

    hostname: str = Field(description="the node's hostname")
    labels: list[str] = Field(description="sorted, unique labels")
    last_check: int = Field(description="Unix time this daemon last heard the node")


class TargetGroupModel(BaseModel):
    """One HTTP SD target group (keys as the Go daemon wrote them)."""

    Targets: list[str] = Field(description="`host:port` addresses to scrape")
    Labels: dict[str, str] = Field(description="labels Prometheus puts on every target")


class CheckModel(BaseModel):
    """One health check (SPEC §19) as GET /v1/checks returns it."""

    name: str = Field(description="`LABELS=CHECK` as configured (a URL's password hidden)")
    check: str = Field(description="tcp://HOST:PORT, http(s)://URL or exec:COMMAND")
    labels: list[str] = Field(description="the labels it governs")
    source: str = Field(description="`CHECKS` or the path of CHECKS_FILE")
    state: Literal["up", "down"] = Field(description="up: its labels are announced")
    passes: int = Field(description="passes in a row (0 after a failure)")
    failures: int = Field(description="failures in a row (0 after a pass)")
    last_result: Literal["pass", "fail"] | None = Field(description="null before the first run")
    last_detail: str = Field(description="`connected to ...`, `HTTP 200 OK`, `exit status 1`, ...")
    last_output: str = Field(description="the first 200 bytes of the output or answer body")
    last_run: float | None = Field(description="Unix time of the last run")
    changed: float = Field(description="Unix time the state last changed (or the check started)")
    transitions: int = Field(description="state changes since the check started")
    runs: int = Field(description="runs since the check started")
