"""Pydantic models that describe answers in the OpenAPI document, and nothing else.

The hot paths serialize with orjson directly (lobby.model); these only give
/openapi.json its shapes.
"""

from __future__ import annotations

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
