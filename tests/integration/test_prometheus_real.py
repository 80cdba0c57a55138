"""A real Prometheus (Debian's 2.42) discovers its targets from a real lobbyd.

Prometheus throws away a whole HTTP SD answer it does not like and silently keeps
its old targets, so seeing the expected targets and labels in its own API is the
proof that our answers are ones it accepts (Content-Type, keys, label names).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import Proc, free_port, wait_for

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
TOKEN = "s3cret"


class Prometheus(Proc):
    """prometheus on a free loopback port, scraping what `sd_url` lists every second."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir / f"prometheus-{self.port}"
        self.config = self.workdir / "prometheus.yml"
        super().__init__(
            [
                PROMETHEUS,
                f"--web.listen-address=127.0.0.1:{self.port}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--config.file={self.config}",
            ],
            self.workdir / "prometheus.log",
        )

    def start_with(self, sd_url: str, token: str) -> None:
        auth = {"type": "Token", "credentials": token}  # lobbyd's "Authorization: Token X"
        self.start_scraping(
            {
                "job_name": "lobby",
                "http_sd_configs": [
                    {"url": sd_url, "refresh_interval": "1s", "authorization": auth}
                ],
            }
        )

    def start_scraping(self, *scrape_configs: dict[str, Any]) -> None:
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": list(scrape_configs),
        }
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(json.dumps(config, indent=2))  # JSON is YAML
        self.start()

        def ready() -> bool:
            if not self.running:
                raise AssertionError(f"prometheus exited:\n{self.output()}")
            return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200

        wait_for(ready, 30, what="prometheus ready")

    def targets(self) -> dict[str, dict[str, Any]]:
        """Active targets by instance, as Prometheus itself reports them."""
        r = httpx.get(f"{self.url}/api/v1/targets", params={"state": "active"}, timeout=5)
        r.raise_for_status()
        return {t["labels"]["instance"]: t for t in r.json()["data"]["activeTargets"]}

    def target_labels(self) -> dict[str, dict[str, str]]:
        return {instance: t["labels"] for instance, t in self.targets().items()}

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5)
        r.raise_for_status()
        return list(r.json()["data"]["result"])


@pytest.fixture
def prometheus(tmp_path: Path, procs: list[Proc]) -> Prometheus:
    if not Path(PROMETHEUS).exists():
        pytest.skip("prometheus is not installed (apt-get install prometheus)")
    server = Prometheus(tmp_path)
    procs.append(server)  # stopped by PID at teardown
    return server


def test_prometheus_discovers_targets_and_labels_from_lobbyd(
    nats_server, channel, spawn, prometheus
):
    env = {
        "NATS_URL": nats_server.url,
        "NATS_DISCOVERY_CHANNEL": channel,
        "KEEP_ALIVE": "1",
        "TOKEN": TOKEN,
        "NODE_EXPORTER_PORT": "9200",
    }
    self_scrape = f"127.0.0.1:{prometheus.port}"  # Prometheus's own /metrics: scrapeable
    a = spawn(
        "a.example",
        {
            **env,
            "LABELS": ",".join(
                [
                    f"prometheus:node:host:{self_scrape}",
                    "prometheus:node:host:::1",
                    "prometheus:node:location:prague",
                    # Prometheus would reject the whole answer for this one: left out
                    "prometheus:node:my-label:x",
                    "prometheus:other:host:10.9.9.9",
                ]
            ),
        },
    )
    # the bare label makes the hostname the target; "localhost" needs no DNS (loopback only)
    spawn("localhost", {**env, "LABELS": "prometheus:node,service:web"})
    spawn("c.example", {**env, "LABELS": "service:db"})
    wait_for(lambda: len(a.hostnames()) == 3, what="a lists every node")

    prometheus.start_with(f"{a.url}/v1/prometheus/node", TOKEN)
    job = {"job": "lobby"}
    expected = {
        self_scrape: {"instance": self_scrape, "location": "prague", **job},
        "[::1]:9200": {"instance": "[::1]:9200", "location": "prague", **job},
        "localhost:9200": {"instance": "localhost:9200", **job},
    }
    wait_for(
        lambda: prometheus.target_labels() == expected,
        30,
        what=f"prometheus targets {expected}",
    )
    # the target built from the labels really is scraped
    wait_for(
        lambda: prometheus.targets()[self_scrape]["health"] == "up",
        30,
        what="the self-scrape target up",
    )
    # HTTP SD's own meta label says where the target came from
    discovered = prometheus.targets()["localhost:9200"]["discoveredLabels"]
    assert discovered["__meta_url"] == f"{a.url}/v1/prometheus/node"

    # a label added at run time reaches Prometheus
    r = a.request("POST", "/v1/labels", content="prometheus:node:env:prod\n")
    assert (r.status_code, r.text) == (200, "OK")
    for instance in (self_scrape, "[::1]:9200"):
        expected[instance] = {**expected[instance], "env": "prod"}
    wait_for(lambda: prometheus.target_labels() == expected, 30, what="env=prod in prometheus")

    # a deleted label goes away, a new host label becomes a target
    r = a.request("DELETE", "/v1/labels", content="prometheus:node:env:prod\n")
    assert r.status_code == 200
    r = a.request("POST", "/v1/labels", content="prometheus:node:host:127.0.0.1:1\n")
    assert r.status_code == 200
    for instance in (self_scrape, "[::1]:9200"):
        expected[instance] = {k: v for k, v in expected[instance].items() if k != "env"}
    expected["127.0.0.1:1"] = {"instance": "127.0.0.1:1", "location": "prague", **job}
    wait_for(lambda: prometheus.target_labels() == expected, 30, what="prometheus follows")


def test_prometheus_scrapes_lobbyds_own_metrics(nats_server, channel, spawn, prometheus):
    """SPEC §14.1: a real Prometheus scrapes /metrics (with the token) and finds it up."""
    a = spawn(
        "a.example",
        {"NATS_URL": nats_server.url, "NATS_DISCOVERY_CHANNEL": channel, "TOKEN": TOKEN},
    )
    target = f"127.0.0.1:{a.port}"
    prometheus.start_scraping(
        {
            "job_name": "lobbyd",
            "metrics_path": "/metrics",
            "authorization": {"type": "Token", "credentials": TOKEN},
            "static_configs": [{"targets": [target]}],
        }
    )
    wait_for(
        lambda: prometheus.targets()[target]["health"] == "up",
        30,
        what=f"lobbyd's /metrics up in prometheus: {prometheus.targets()}",
    )
    assert prometheus.targets()[target]["lastError"] == ""
    wait_for(lambda: prometheus.query('lobby_broker_up{driver="NATS"}'), 30, what="a sample")
    (sample,) = prometheus.query('lobby_broker_up{driver="NATS"}')
    assert sample["value"][1] == "1"
    (nodes,) = prometheus.query("lobby_nodes")
    assert nodes["value"][1] == "1"
