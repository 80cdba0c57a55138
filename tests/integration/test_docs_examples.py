"""The docs' examples run against a real cluster, and say what it really answers.

A page marks a shell block to run with an HTML comment on the line before it (MkDocs
renders nothing for it), and the answer to expect with another before a text block
right after it:

    <!-- lobby-example: NAME -->
    ```shell
    curl -s localhost:1313/v1/resolve?label=service:web
    ```

    <!-- lobby-output -->
    ```text
    ["web1", "web2"]
    ```

An example runs on the cluster that its page starts in a block marked
`<!-- lobby-cluster -->` before it, else on the one Getting started starts. A cluster
block is read here (each line's HOSTNAME, PORT, LABELS and DNS_PORT) and started as real
lobbyd processes on the test nats-server, on free ports, on a subject of its own. In the
examples `localhost:1313` (and 1314, 1315: each documented PORT) becomes that node's real
address, `-port 1314` and `dig -p 8600` (a documented DNS_PORT) too; lobbyctl finds the
first node through PORT, as it would find 1313 by default. Volatile fields
(`last_check`) are normalised on both sides.

A shell block that talks to lobbyd (curl on localhost:13xx, lobbyctl, dig) is either an
example, the cluster, or says why it does not run (`<!-- not-run: REASON -->`): the last
test here keeps it so.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import Lobbyd, NatsServer, free_port, unique, wait_for

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if p.name != "SPEC.md")

BLOCK = re.compile(
    r"(?:<!-- (?P<marker>[^\n]*?) -->\n)?```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)\n```\n", re.S
)
OUTPUT = re.compile(r"\s*<!-- lobby-output -->\n```text\n(?P<body>.*?)\n```\n", re.S)
TALKS_TO_LOBBYD = re.compile(
    r"localhost:13\d\d|127\.0\.0\.1:13\d\d|^\s*(\S*/)?lobbyctl |\bdig @", re.M
)
DEFAULT_CLUSTER = "getting-started.md"
LAST_CHECK = re.compile(r'("last_check": ?)\d+(\.\d+)?')


@dataclass(frozen=True)
class Example:
    page: str
    name: str
    script: str
    expected: str | None
    cluster: str  # the page whose lobby-cluster block it runs on

    @property
    def id(self) -> str:
        return f"{self.page}:{self.name}"


def blocks(page: Path) -> Iterator[tuple[str, str, str, int]]:
    """(marker, language, body, end offset) of every fenced block of a page."""
    text = page.read_text(encoding="utf-8")
    for m in BLOCK.finditer(text):
        yield (m.group("marker") or "", m.group("lang"), m.group("body"), m.end())


def examples() -> list[Example]:
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        cluster = DEFAULT_CLUSTER
        for marker, lang, body, end in blocks(page):
            if marker == "lobby-cluster":
                cluster = str(page.relative_to(DOCS))
            if not marker.startswith("lobby-example:"):
                continue
            assert lang == "shell", f"{page}: example {marker} is not a shell block"
            output = OUTPUT.match(text, end)
            found.append(
                Example(
                    str(page.relative_to(DOCS)),
                    marker.split(":", 1)[1].strip(),
                    body,
                    output.group("body") if output else None,
                    cluster,
                )
            )
    return found


def documented_cluster(name: str = DEFAULT_CLUSTER) -> list[dict[str, str]]:
    """The nodes of the block marked lobby-cluster on a page: the variables each sets."""
    for page in [DOCS / name]:
        for marker, _lang, body, _end in blocks(page):
            if marker == "lobby-cluster":
                nodes = []
                for command in body.replace("\\\n", " ").splitlines():
                    if not command.strip():
                        continue
                    env = {}
                    for word in shlex.split(command, comments=True):
                        name, eq, value = word.partition("=")
                        if not eq or not name.isupper():
                            break
                        env[name] = value
                    nodes.append(env)
                return nodes
    raise AssertionError(f"no block marked <!-- lobby-cluster --> in docs/{name}")


def normalise(text: str) -> str:
    text = LAST_CHECK.sub(r"\g<1>0", text)
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())


def lists(node: Lobbyd, names: list[str]) -> bool:
    return node.hostnames() == names


@dataclass
class Cluster:
    nodes: dict[str, Lobbyd]  # by documented PORT
    dns: dict[str, int]  # real DNS port by documented DNS_PORT


@pytest.fixture(scope="module")
def clusters(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory):
    """The documented clusters, started when an example first needs one: page -> Cluster."""
    started: dict[str, Cluster] = {}

    def start(page: str) -> Cluster:
        if page in started:
            return started[page]
        workdir = tmp_path_factory.mktemp("docs-cluster")
        channel = unique()
        cluster = started[page] = Cluster({}, {})
        for env in documented_cluster(page):
            node_env = {
                "HOSTNAME": env["HOSTNAME"],
                "LABELS": env.get("LABELS", ""),
                "NATS_URL": nats_server.url,
                "NATS_DISCOVERY_CHANNEL": channel,
            }
            if env.get("DNS_PORT"):
                node_env["DNS_PORT"] = str(free_port())
                cluster.dns[env["DNS_PORT"]] = int(node_env["DNS_PORT"])
            node = Lobbyd(workdir, node_env, env["HOSTNAME"])
            cluster.nodes[env.get("PORT", "1313")] = node
            node.start()
        names = sorted(node.name for node in cluster.nodes.values())
        for node in cluster.nodes.values():
            lists_all = functools.partial(lists, node, names)
            wait_for(lists_all, what=f"{node.name} lists the cluster")
        return cluster

    try:
        yield start
    finally:
        for cluster in started.values():
            for node in cluster.nodes.values():
                node.stop(timeout=5)


def run(script: str, cluster: Cluster) -> subprocess.CompletedProcess[str]:
    nodes = cluster.nodes

    def address(m: re.Match[str]) -> str:
        return f"127.0.0.1:{nodes[m.group(2)].port}"

    script = re.sub(r"(localhost|127\.0\.0\.1):(13\d\d)\b", address, script)
    script = re.sub(r"-port (13\d\d)\b", lambda m: f"-port {nodes[m.group(1)].port}", script)
    script = re.sub(
        r"(dig @\S+ -p) (\d+)", lambda m: f"{m.group(1)} {cluster.dns[m.group(2)]}", script
    )
    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": os.environ.get("HOME", "/tmp"),
        "HOST": "127.0.0.1",
        "PORT": str(nodes["1313"].port),
        "NO_COLOR": "1",
        "LANG": "C.UTF-8",
    }
    return subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=20,
    )


@pytest.mark.parametrize("example", examples(), ids=lambda e: e.id)
def test_example(example: Example, clusters) -> None:
    result = run(example.script, clusters(example.cluster))
    assert result.returncode == 0, (
        f"{example.id} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    )
    if example.expected is not None:
        assert normalise(result.stdout) == normalise(example.expected), (
            f"{example.id}: the page shows another answer than lobbyd gives; it gave:\n"
            f"{result.stdout}"
        )


def test_there_are_examples() -> None:
    names = {e.id for e in examples()}
    assert len(names) == len(examples()), "two examples share a page and a name"
    assert len(names) >= 5


def test_readme_starts_the_documented_cluster() -> None:
    """README.md's 3-node example starts the cluster Getting started documents."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8").replace("\\\n", " ")
    for env in documented_cluster():
        assert f"HOSTNAME={env['HOSTNAME']} " in readme
        assert f'LABELS="{env["LABELS"]}"' in readme


def test_readme_example_runs(clusters) -> None:
    """The commands of README.md's 3-node example, after the lines that start the nodes."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```shell\n(.*?)\n```", readme, re.S) if "HOSTNAME=" in b)
    commands = block.replace("\\\n", " ").splitlines()
    asks = [
        line for line in commands if line.strip() and not re.search(r"lobbyd &|dev run &", line)
    ]
    assert len(asks) >= 5, asks
    result = run("\n".join(asks), clusters(DEFAULT_CLUSTER))
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert '"web1",\n  "web2"' in result.stdout  # resolve service:web
    assert "web1\n" in result.stdout  # lobbyctl resolve service:smtp


def test_every_block_that_talks_to_lobbyd_runs_or_says_why_not() -> None:
    unmarked = []
    for page in PAGES:
        for marker, lang, body, _end in blocks(page):
            if lang not in ("shell", "sh", "bash", "console", ""):
                continue
            if not TALKS_TO_LOBBYD.search(body):
                continue
            ok = marker.startswith(("lobby-example:", "not-run:")) or marker == "lobby-cluster"
            if not ok:
                unmarked.append(f"{page.relative_to(DOCS)}: {body.splitlines()[0]}")
    assert not unmarked, "mark these <!-- lobby-example: NAME --> or <!-- not-run: WHY -->:\n" + (
        "\n".join(unmarked)
    )
