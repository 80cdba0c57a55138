"""The docs site (mkdocs.yml, docs/) builds in strict mode, offline, and its reference
pages hold what the code says: every setting, every metric, every API path, every
lobbyctl command, the client's methods, the benchmarks of bench/README.md.

`./dev test` installs the `[docs]` extra, so these never skip there; elsewhere, without
MkDocs, they skip and say so. A headless Chromium (Debian's) then loads the built site
from a local http.server and checks it shows its navigation without asking any other
host for anything.
"""

from __future__ import annotations

import functools
import html
import http.server
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import wait_for

from lobby import config, ctl
from lobby.ops.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
MKDOCS = Path(sys.executable).parent / "mkdocs"
BUILD_SECONDS = 60  # about 5 s here; the issue asks for under 20 on a quiet machine


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, float]]:
    """The built site: (directory, mkdocs's output, seconds it took)."""
    if not MKDOCS.exists():
        pytest.skip("mkdocs is not installed: pip install -e '.[docs]' (./dev test does)")
    out = tmp_path_factory.mktemp("site")
    started = time.monotonic()
    result = subprocess.run(
        [str(MKDOCS), "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=180,
    )
    took = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{output}"
    yield out, output, took


def page(site: tuple[Path, str, float], path: str) -> str:
    return (site[0] / path / "index.html").read_text(encoding="utf-8")


def text_of(page_html: str) -> str:
    """The page's text, near enough: tags out, entities back."""
    return html.unescape(re.sub(r"<[^>]+>", "", page_html))


def test_builds_strict_without_warnings_and_fast(site) -> None:
    _, output, took = site
    assert "WARNING" not in output, output
    assert took < BUILD_SECONDS, f"the build took {took:.1f} s"


def test_settings_page_has_every_setting(site) -> None:
    text = text_of(page(site, "reference/settings"))
    for var in config.VARIABLES:
        assert var.name in text, f"{var.name} is not on the settings page"
        assert html.unescape(var.help.replace("`", ""))[:30] in text


def test_metrics_page_has_every_metric(site) -> None:
    text = text_of(page(site, "reference/metrics"))
    for family in Metrics().registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        assert name in text, f"{name} is not on the metrics page"
        assert family.documentation in text


def test_api_page_has_every_path(site) -> None:
    text = text_of(page(site, "reference/api"))
    for path in (
        "/v1/discoveries",
        "/v1/discovery",
        "/v1/resolve",
        "/v1/labels",
        "/v1/stats",
        "/v1/checks",
        "/v1/prometheus/{name}",
        "/v1/health",
        "/v1/events",
        "/metrics",
    ):
        assert path in text, f"{path} is not on the API page"
    for method_and_path in ("GET /v1/resolve", "POST /v1/labels", "DELETE /v1/labels"):
        assert method_and_path in text
    assert "Schemas" in text and "TargetGroup" in text  # the named schemas
    assert "the exact label" in text  # a parameter's description, from the code


def test_lobbyctl_page_has_every_command(site) -> None:
    text = text_of(page(site, "reference/lobbyctl"))
    for words in ctl.COMMANDS:
        assert f"lobbyctl {' '.join(words)}" in text
    assert "-cacert FILE" in text  # the usage, as lobbyctl -help prints it


def test_client_page_documents_the_client(site) -> None:
    text = text_of(page(site, "reference/client"))
    for name in ("Lobby", "AsyncLobby", "LobbyException", "get_discoveries", "find_by_labels"):
        assert name in text, f"{name} is not on the client page"


def test_benchmarks_page_is_bench_readme(site) -> None:
    bench_html = page(site, "benchmarks")
    bench = (ROOT / "bench" / "README.md").read_text(encoding="utf-8")
    for heading in re.findall(r"^## (.+)$", bench, re.M):
        assert heading.replace("`", "") in text_of(bench_html)
    for image in re.findall(r"!\[[^\]]*\]\(([^)/]+\.png)\)", bench):
        assert f"../bench/{image}" in bench_html
        assert (site[0] / "bench" / image).is_file()


def test_diagram_and_screenshot_are_local_files(site) -> None:
    assert (site[0] / "assets" / "architecture.svg").is_file()
    assert "assets/architecture.svg" in page(site, "concepts")
    assert (site[0] / "dashboard.png").is_file()


def test_no_page_loads_anything_from_another_host(site) -> None:
    """No CDN: no script, stylesheet, font, image or frame from elsewhere (links are fine)."""
    loads = re.compile(
        r"<(?:script|img|iframe|source)[^>]*\ssrc=[\"'](?:https?:)?//"
        r"|<link[^>]*\shref=[\"'](?:https?:)?//[^\"']*[\"'][^>]*>"
        r"|url\([\"']?(?:https?:)?//",
        re.I,
    )
    offenders = []
    for built in site[0].rglob("*.html"):
        for m in loads.finditer(built.read_text(encoding="utf-8")):
            if 'rel="canonical"' in m.group(0) or "rel=canonical" in m.group(0):
                continue
            offenders.append(f"{built.relative_to(site[0])}: {m.group(0)[:120]}")
    for css in site[0].rglob("*.css"):
        for m in re.finditer(r"url\([\"']?(?:https?:)?//[^)]*\)", css.read_text("utf-8")):
            offenders.append(f"{css.relative_to(site[0])}: {m.group(0)[:120]}")
    assert not offenders, "\n".join(offenders)


# -- in a real browser ------------------------------------------------------------------


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def served(site) -> Iterator[str]:
    handler = functools.partial(QuietHandler, directory=str(site[0]))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_site_shows_its_navigation_offline_in_chromium(served, tmp_path) -> None:
    from integration.test_docs_browser import CHROMIUM, Browser

    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: ./dev test installs it (apt-get install chromium)")
    browser = Browser(tmp_path / "profile")
    try:
        browser.open(f"{served}/index.html")
        links = "document.querySelectorAll('nav.md-nav--primary a.md-nav__link')"
        wait_for(
            lambda: browser.js(f"document.readyState == 'complete' && {links}.length > 0"),
            30,
            what="the page and its navigation",
        )
        nav = browser.js(
            "[...document.querySelectorAll('nav.md-nav--primary a.md-nav__link')]"
            ".map(a => a.textContent.trim())"
        )
        for title in ("Getting started", "Concepts", "Settings", "HTTP API", "Metrics"):
            assert title in nav, f"{title} not in the navigation: {nav}"
        loaded = browser.js("performance.getEntriesByType('resource').map(e => e.name)")
        assert loaded, "the page loaded no stylesheet or script at all"
        elsewhere = [url for url in loaded if not url.startswith(served)]
        assert not elsewhere, f"asked another host: {elsewhere}"
        # a reference page, generated at build time, shows its table
        browser.open(f"{served}/reference/settings/index.html")
        wait_for(
            lambda: browser.js("document.body.innerText.includes('API_MAX_CONNECTIONS')"),
            30,
            what="the settings table",
        )
    finally:
        browser.close()
