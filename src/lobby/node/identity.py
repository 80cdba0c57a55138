"""Who this node is: its hostname and labels, and its own record (SPEC §2, §5).

The labels are LABELS, the label files, the API's runtime labels and, when given,
labels from elsewhere (`extra_labels`: the passing health-checked labels of
`lobby.node.checks`). `refresh_labels` re-reads them and calls `on_change` (announce at
once) when they changed.

We list ourselves from our first echo on (`lobby.node.receive`), and from then on our own
record is ours: a label change or a new hostname shows in it at once (read your own
writes, SPEC §5), and we never expire ourselves. After our goodbye (`leaving`) it is
left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from lobby.core.model import HI, MAX_PACKET_BYTES, Discovery, LabelError, encode_envelope
from lobby.node.labels import LocalLabels
from lobby.view.registry import Registry

log = logging.getLogger("lobby")


class IdentitySettings(Protocol):
    """The settings identity reads (lobby.config.Settings has them)."""

    @property
    def labels(self) -> tuple[str, ...]: ...
    @property
    def labels_path(self) -> str: ...
    @property
    def runtime_labels_filename(self) -> str: ...
    @property
    def hostname(self) -> str: ...


class Identity:
    def __init__(
        self,
        settings: IdentitySettings,
        registry: Registry,
        *,
        system_hostname: Callable[[], str],
        extra_labels: Callable[[], Iterable[str]] | None = None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.registry = registry
        self.local = LocalLabels(
            settings.labels,
            settings.labels_path,
            settings.runtime_labels_filename,
        )
        # before anything can write: a temporary file found now is a crash's leftover,
        # one found later may be a write in progress
        self.local.runtime.remove_stale_temp_files()
        self._fixed_hostname = settings.hostname
        self._system_hostname = system_hostname
        self.hostname = settings.hostname or system_hostname()
        self._extra_labels = extra_labels
        self._on_change = on_change
        self.local.read()  # at start-up; then off the loop, by Presence.watch_labels
        self.labels = self._read_labels()
        self.leaving = False  # after our goodbye: no more "hi", our record left alone

    def own_discovery(self) -> Discovery:
        return Discovery(self.hostname, self.labels, 0)

    # -- labels -------------------------------------------------------------------

    def _read_labels(self, check_only: bool = False) -> tuple[str, ...]:
        if check_only:
            self.local.request_check()  # the watch reads off the loop, then calls back
        local = self.local.current()  # no I/O on the loop; runtime writes are in already
        if self._extra_labels is None:
            return local
        return tuple(sorted(set(local).union(self._extra_labels())))

    def refresh_labels(self, *, check_only: bool = False) -> bool:
        """Take the labels as last read; announce at once when they changed.

        The label files are read off the event loop by `Presence.watch_labels`, which
        calls this after each read; a runtime label write updates them at once.
        `check_only` is the periodic path: it also asks the watch to stat the label
        sources and re-read only what changed (no file is opened per keep-alive). A
        source that cannot be read keeps its last good labels (lobby.labels.LocalLabels).
        """
        labels = self._read_labels(check_only)
        if labels == self.labels:
            return False
        self.labels = labels
        log.info("labels changed: %s", ", ".join(labels) or "(none)")
        self.own_record()  # read your own writes: before any answer, not at the echo
        self._on_change()
        return True

    def _check_size(self, runtime: list[str]) -> None:
        # our labels already hold LABELS and every file's; add the new runtime set
        labels = tuple(sorted(set(self.labels).union(runtime)))
        size = len(encode_envelope(HI, Discovery(self.hostname, labels)))
        if size > MAX_PACKET_BYTES:
            raise LabelError(
                f"too many labels: this node's announcement would be {size} bytes, "
                f"over the {MAX_PACKET_BYTES} byte limit peers accept"
            )

    async def add_labels(self, labels: list[str]) -> None:
        await self.local.runtime.add(labels, check=self._check_size)
        self.refresh_labels()

    async def delete_labels(self, labels: list[str]) -> None:
        await self.local.runtime.delete(labels)
        self.refresh_labels()

    # -- our own record -----------------------------------------------------------

    def own_record(self) -> None:
        """Our record in our own registry, as we are now, once we list ourselves (from
        our first echo on; never with REGISTER=false, SPEC §3)."""
        if self.registry.own is not None and not self.leaving:
            self.registry.set_own(self.hostname, self.labels)

    def hostname_changed(self) -> str | None:
        """The old hostname when the system hostname changed (HOSTNAME unset)."""
        if self._fixed_hostname:
            return None
        try:
            current = self._system_hostname()
        except OSError:
            return None
        if not current or current == self.hostname:
            return None
        old, self.hostname = self.hostname, current
        log.info("hostname changed from %s to %s", old, current)
        self.own_record()
        return old
