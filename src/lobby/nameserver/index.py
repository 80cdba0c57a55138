"""Who carries what, for DNS queries that never scan the registry (SPEC §17).

`LabelIndex` keeps, per lower-cased (label name, value), the hostnames that carry it,
and per lower-cased hostname and Prometheus service name the nodes behind them. It
follows the registry's changes (a listener: O(labels) per join, update or leave,
nothing per keep-alive).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import TypeVar

from lobby.nameserver.names import dns_name, service_of, split_label
from lobby.view.registry import Change, Registry

_K = TypeVar("_K")


class LabelIndex:
    """Who carries what, by lower-cased DNS name, kept up to date from registry changes."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.hosts: dict[str, set[str]] = {}  # lower-cased hostname -> hostnames
        self.labels: dict[tuple[str, str], set[str]] = {}  # (name, value) -> hostnames
        self.names: Counter[str] = Counter()  # label name -> how many (node, value) pairs
        self.services: dict[str, set[str]] = {}  # lower-cased service -> hostnames
        for discovery in registry.discoveries():
            self._host(discovery.hostname, add=True)
            self._add(discovery.hostname, *_keys(discovery.labels))
        registry.add_listener(self.on_change)

    def on_change(self, change: Change) -> None:
        hostname = change.hostname
        if change.kind == "join":
            self._host(hostname, add=True)
            self._add(hostname, *_keys(change.labels))
        elif change.kind == "leave":
            self._host(hostname, add=False)
            self._remove(hostname, *_keys(change.labels))
        else:  # several labels can give one key (`service:smtp`, `service:SMTP`): diff keys
            old, old_services = _keys(change.old_labels)
            new, new_services = _keys(change.labels)
            self._remove(hostname, old - new, old_services - new_services)
            self._add(hostname, new - old, new_services - old_services)

    def _host(self, hostname: str, *, add: bool) -> None:
        if dns_name(hostname):
            if add:
                self.hosts.setdefault(hostname.lower(), set()).add(hostname)
            else:
                _discard(self.hosts, hostname.lower(), hostname)

    def _add(self, hostname: str, keys: set[tuple[str, str]], services: set[str]) -> None:
        for key in keys:
            self.labels.setdefault(key, set()).add(hostname)
            self.names[key[0]] += 1
        for service in services:
            self.services.setdefault(service, set()).add(hostname)

    def _remove(self, hostname: str, keys: set[tuple[str, str]], services: set[str]) -> None:
        for key in keys:
            _discard(self.labels, key, hostname)
            self.names[key[0]] -= 1
            if self.names[key[0]] <= 0:
                del self.names[key[0]]
        for service in services:
            _discard(self.services, service, hostname)


def _keys(labels: Iterable[str]) -> tuple[set[tuple[str, str]], set[str]]:
    """The (name, value) keys and lower-cased Prometheus services that `labels` give."""
    keys: set[tuple[str, str]] = set()
    services: set[str] = set()
    for label in labels:
        key = split_label(label)
        if key is not None:
            keys.add(key)
        elif label.startswith("prometheus:") and (service := service_of(label)):
            services.add(service.lower())
    return keys, services


def _discard(table: dict[_K, set[str]], key: _K, hostname: str) -> None:
    members = table.get(key)
    if members is not None:
        members.discard(hostname)
        if not members:
            del table[key]
