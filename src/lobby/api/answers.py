"""What the routes answer, shared by the fast path (`fast`) and the FastAPI routes (`app`).

`Node` is what the HTTP layer needs from the daemon. A route turns a request into a
`Prepared`: a function that builds the answer (called after a blocking query was
held), or None when the framework must answer (an error).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from lobby.api.blocking import split_list
from lobby.core.answer import Answer, Slices
from lobby.core.model import Discovery, pretty
from lobby.view.cache import Answers
from lobby.view.registry import Registry, make_view

Body = Answer | Slices | bytes
Prepared = Callable[[], Body] | None


class Node(Protocol):
    """What the API needs from the daemon."""

    registry: Registry
    answers: Answers  # what is built from the registry, kept until it changes

    def own_discovery(self) -> Discovery: ...

    async def add_labels(self, labels: list[str]) -> None: ...

    async def delete_labels(self, labels: list[str]) -> None: ...

    def stats(self) -> dict[str, Any]: ...

    def health(self) -> tuple[bool, dict[str, str]]: ...


def discoveries_answer(answers: Answers, labels: str | None, prefixes: str | None) -> Prepared:
    """GET /v1/discoveries[?labels=|?prefixes=]: labels win over prefixes (SPEC §5)."""
    wanted = split_list(labels)
    if wanted:
        chosen = frozenset(wanted)
        key: Any = ("labels", chosen)
        view = make_view(labels=wanted)
        return lambda: answers.listing(key, view, chosen)
    starts = split_list(prefixes)
    if starts:
        key = ("prefixes", tuple(sorted(set(starts))))
        view = make_view(prefixes=starts)
        return lambda: answers.listing(key, view)
    return answers.listing


def resolve_answer(answers: Answers, label: str) -> Prepared:
    """GET /v1/resolve?label=L (a non-empty label)."""
    registry = answers.registry
    key = ("resolve", label)

    def build() -> bytes:
        return pretty(registry.resolve(label))

    return lambda: answers.cached_answer(key, build, timed=False)
