"""What a started lobbyd with default settings leaves unimported (issue 19, the idle RSS):
prometheus_client until the first GET /metrics, no web framework or ASGI server at all
(the API is lobby.api's own protocol on httptools), logging.config, lobby.checks
without CHECKS, watchfiles while there is no label directory, the idna codec, the
dashboard's files until /ui is asked for.

Asserted on the modules the running daemon holds, never on RSS (bench/memory.py measures
that)."""

from __future__ import annotations

import sys
from pathlib import Path

from support import wait_for

# runs lobbyd (`python -m lobby`) in this process and writes the names of the loaded
# modules to argv[1] each time argv[1].go appears; the thread uses only modules that
# any lobbyd has loaded anyway
DUMP = """
import os, runpy, sys, threading, time

out = sys.argv[1]


def dump():
    while True:
        if os.path.exists(out + ".go"):
            names = " ".join(sorted(sys.modules))
            with open(out + ".tmp", "w") as f:
                f.write(names)
            os.remove(out + ".go")
            os.replace(out + ".tmp", out)
        time.sleep(0.05)


threading.Thread(target=dump, daemon=True).start()
sys.argv = ["lobbyd"]
runpy.run_module("lobby", run_name="__main__", alter_sys=True)
"""

NOT_AT_IDLE = (
    "prometheus_client",
    "click",
    "uvicorn",
    "starlette",
    "multiprocessing",
    "logging.config",
    "logging.handlers",
    "lobby.node.checks",
    "watchfiles",
    "encodings.idna",
    "fastapi",
    "pydantic",
)


def modules(out: Path) -> set[str]:
    out.unlink(missing_ok=True)
    out.with_name(out.name + ".go").touch()
    wait_for(out.exists, 10, what="the module list")
    return set(out.read_text().split())


def test_an_idle_daemon_imports_only_what_it_uses(broker, spawn, tmp_path) -> None:
    out = tmp_path / "modules"
    node = spawn("idle", broker.env(), wrapper=[sys.executable, "-c", DUMP, str(out)])
    assert not node.labels_path.exists()
    wait_for(lambda: node.hostnames() == ["idle"], 15, what="lobbyd to list itself")
    for path in ("/v1/discoveries", "/v1/stats", "/v1/health"):
        assert node.get(path).status_code == 200
    with node.client() as client:  # a monitor's HEAD or OPTIONS probe
        assert client.request("HEAD", "/v1/health").status_code == 200
        assert client.request("OPTIONS", "/v1/health").status_code == 405
    loaded = modules(out)
    assert "lobby.daemon" in loaded and "lobby.api.protocol" in loaded  # the list is real
    driver = "nats.aio.client" if broker.kind == "nats" else "redis.asyncio.client"
    assert driver in loaded
    assert sorted(name for name in NOT_AT_IDLE if name in loaded) == []

    metrics = node.get("/metrics")  # the first scrape imports prometheus_client
    assert metrics.status_code == 200 and "lobby_nodes 1.0" in metrics.text
    assert "prometheus_client" in modules(out)
