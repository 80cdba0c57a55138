"""The web dashboard (SPEC §16) in a real headless browser, against real lobbyd processes.

One Debian Chromium (driven by selenium through Debian's chromedriver, nothing
downloaded) and one two-node cluster serve every test of this module.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import Lobbyd, NatsServer, unique, wait_for

from lobby.api import ui

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must never download a browser
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="lobby-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


class Cluster:
    def __init__(self, workdir: Path, nats: NatsServer) -> None:
        self.workdir = workdir
        self.env = {"NATS_URL": nats.url, "NATS_DISCOVERY_CHANNEL": unique(), "KEEP_ALIVE": "1"}
        self.nodes: list[Lobbyd] = []

    def start(self, name: str, labels: str, **extra: str) -> Lobbyd:
        node = Lobbyd(self.workdir, {**self.env, "LABELS": labels, **extra}, name)
        self.nodes.append(node)
        node.start()
        return node

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop(timeout=3)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, nats_server: NatsServer) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("dashboard"), nats_server)
    try:
        a = c.start("a.example", "service:web,location:prague,prometheus:node")
        c.start("b.example", "service:db,location:brno")
        wait_for(lambda: a.hostnames() == ["a.example", "b.example"], 15, what="a and b")
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def locked(cluster: Cluster) -> Lobbyd:
    """A third lobbyd of the cluster that wants a token."""
    node = cluster.start("locked.example", "service:vault", TOKEN=TOKEN)
    wait_for(lambda: "locked.example" in cluster.nodes[0].hostnames(), 15, what="locked listed")
    return node


def js(driver: Any, script: str) -> Any:
    return driver.execute_script(script)


def rows(driver: Any) -> list[str]:
    """Hostnames of the rows on screen that are not leaving."""
    return js(
        driver,
        "return [...document.querySelectorAll('.row:not([hidden])')]"
        ".filter(r => r.dataset.state !== 'leave').map(r => r.dataset.host).sort()",
    )


def open_ui(driver: Any, node: Lobbyd, fragment: str = "") -> None:
    driver.get(f"{node.url}/ui/{fragment}")
    wait_for(
        lambda: js(driver, "return window.lobbyUI && window.lobbyUI.state().live") == "live",
        15,
        what="the dashboard's event stream to go live",
    )


def type_filter(driver: Any, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.ID, "filter")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.BACKSPACE)
    if text:
        box.send_keys(text)


# -- the files, over HTTP --------------------------------------------------------------


def test_page_and_assets_are_served_from_the_package_without_a_token(locked):
    with httpx.Client(base_url=locked.url, timeout=5) as http:
        assert http.get("/v1/discoveries").status_code == 403  # data still needs the token
        page = http.get("/ui/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.headers["cache-control"] == "no-cache"
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert http.get("/ui/", headers={"If-None-Match": page.headers["etag"]}).status_code == 304
        assert http.get("/ui").headers["location"] == "/ui/"
        assert not re.search(r"(src|href)=\"(https?:)?//", page.text)  # no CDN
        total = len(page.content)
        for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
            ref = re.search(rf'"({name}\?v=[0-9a-f]+)"', page.text)
            assert ref, f"{name} not referenced with a version"
            asset = http.get(f"/ui/{ref.group(1)}")
            assert asset.status_code == 200
            assert asset.headers["content-type"].startswith(kind)
            assert "immutable" in asset.headers["cache-control"]
            assert asset.headers["x-content-type-options"] == "nosniff"
            total += len(asset.content)
            unversioned = http.get(f"/ui/{name}")
            assert unversioned.headers["cache-control"] == "no-cache"
        assert total < 150 * 1024
        assert http.get("/ui/secret.txt").status_code == 404
        assert http.post("/ui/").status_code == 403  # only GET and HEAD pass without a token
        assert http.get("/openapi.json").status_code == 403
    # dot segments are not resolved on the way in: /ui/.. never reaches a data route
    with socket.create_connection(("127.0.0.1", locked.port), timeout=5) as raw:
        raw.sendall(b"GET /ui/../v1/discoveries HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 404"), answer[:100]
    assert b"a.example" not in answer
    with locked.client() as http:
        assert "/ui/" not in http.get("/openapi.json").json()["paths"]


def test_the_package_carries_the_assets():
    assets = ui.load()
    assert set(assets) == {"index.html", "app.js", "app.css"}
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    for suffix in ("html", "js", "css"):
        assert f'"ui/*.{suffix}"' in pyproject  # [tool.setuptools.package-data]: in the wheel


# -- the page, in Chromium ---------------------------------------------------------------


def test_lists_the_nodes_of_the_cluster(browser, cluster):
    a = cluster.nodes[0]
    open_ui(browser, a)
    wait_for(lambda: {"a.example", "b.example"} <= set(rows(browser)), 15, what="a and b listed")
    assert js(browser, "return document.getElementById('self-name').textContent") == "a.example"
    chips = js(
        browser,
        "return [...document.querySelectorAll('.row[data-host=\"a.example\"] .lb')]"
        ".map(c => [c.querySelector('.k').textContent, c.querySelector('.v').textContent,"
        " getComputedStyle(c.querySelector('.k')).backgroundColor,"
        " getComputedStyle(c.querySelector('.v')).backgroundColor])",
    )
    assert [c[:2] for c in chips] == [
        ["location", "prague"],
        ["prometheus", "node"],
        ["service", "web"],
    ]
    assert all(k_bg != v_bg for _, _, k_bg, v_bg in chips)  # name and value look different
    assert len({k_bg for _, _, k_bg, _ in chips}) == 3  # each label name its own colour
    same_name = js(
        browser,
        "return [...document.querySelectorAll('.lb')].filter(c => c.dataset.label.startsWith('service:'))"
        ".map(c => getComputedStyle(c.querySelector('.k')).backgroundColor)",
    )
    assert len(same_name) >= 2 and len(set(same_name)) == 1  # consistent per name
    assert js(browser, "return document.getElementById('count').textContent") == str(
        len(a.hostnames())
    )
    wait_for(
        lambda: js(browser, "return document.getElementById('broker-dot').className") == "dot ok",
        10,
        what="the broker link shown as up",
    )
    age = js(
        browser, "return document.querySelector('.row[data-host=\"b.example\"] .age').textContent"
    )
    assert re.fullmatch(r"now|\d+ s", age), age


def test_a_node_that_joins_appears_live_and_its_sigterm_removes_it(browser, cluster):
    a = cluster.nodes[0]
    open_ui(browser, a)
    js(browser, "window.__sameDocument = true")
    c = cluster.start("c.example", "service:cache")
    wait_for(lambda: "c.example" in a.hostnames(), 15, what="a's API to list c")
    # the page shows it, highlighted as a join (read in the same poll: the highlight fades)
    state = wait_for(
        lambda: js(
            browser,
            "const r = document.querySelector('.row[data-host=\"c.example\"]:not([hidden])');"
            "return r && (r.dataset.state || 'none')",
        ),
        10,
        interval=0.02,
        what="c on the page",
    )
    assert state == "join"
    assert js(browser, "return window.__sameDocument") is True  # no reload
    c.signal(signal.SIGTERM)
    assert c.wait(10) == 0
    wait_for(lambda: "c.example" not in a.hostnames(), 15, what="a's API to drop c")
    wait_for(
        lambda: js(
            browser, "return !document.querySelector('.row[data-host=\"c.example\"]:not([hidden])')"
        ),
        5,
        what="c gone from the page",
    )
    assert js(browser, "return window.__sameDocument") is True


def test_filter_narrows_the_list_and_lives_in_the_fragment(browser, cluster):
    a = cluster.nodes[0]
    open_ui(browser, a)
    wait_for(lambda: {"a.example", "b.example"} <= set(rows(browser)), 15, what="both listed")
    type_filter(browser, "service:web")
    wait_for(lambda: rows(browser) == ["a.example"], 15, what="only a")
    wait_for(lambda: browser.current_url.endswith("#q=service:web"), 15, what="the fragment")
    hit = js(
        browser,
        "return [...document.querySelectorAll('.row[data-host=\"a.example\"] .lb.hit')].map(c => c.dataset.label)",
    )
    assert hit == ["service:web"]
    type_filter(browser, "location:")
    wait_for(lambda: {"a.example", "b.example"} <= set(rows(browser)), 15, what="prefix: both")
    type_filter(browser, "location:brno")
    wait_for(lambda: rows(browser) == ["b.example"], 15, what="only b")
    type_filter(browser, "b.exa")
    wait_for(lambda: rows(browser) == ["b.example"], 15, what="a hostname word: only b")
    type_filter(browser, "service:nothing")
    wait_for(lambda: rows(browser) == [], 15, what="nothing")
    assert "No node matches" in js(browser, "return document.getElementById('empty').textContent")
    # the fragment brings the filter back: when it changes, and on a fresh load
    open_ui(browser, a, "#q=service:db")
    wait_for(lambda: rows(browser) == ["b.example"], 15, what="only b from the fragment")
    assert js(browser, "return document.getElementById('filter').value") == "service:db"
    browser.refresh()
    wait_for(lambda: js(browser, "return window.lobbyUI.state().live") == "live", 10, what="live")
    wait_for(lambda: rows(browser) == ["b.example"], 15, what="only b after a reload")


def test_node_detail_and_prometheus_view(browser, cluster):
    from selenium.webdriver.common.by import By

    a = cluster.nodes[0]
    open_ui(browser, a)
    wait_for(lambda: "a.example" in rows(browser), 15, what="a listed")
    browser.find_element(By.CSS_SELECTOR, '.row[data-host="a.example"]').click()
    wait_for(
        lambda: js(browser, "return !document.getElementById('detail').hidden"), 5, what="detail"
    )
    detail = js(
        browser, "return [...document.querySelectorAll('#detail .lb')].map(c => c.dataset.label)"
    )
    assert detail == ["location:prague", "prometheus:node", "service:web"]
    assert "node=a.example" in browser.current_url
    browser.find_element(By.ID, "tab-prometheus").click()
    wait_for(
        lambda: (
            js(browser, "return [...document.querySelectorAll('.target')].map(t => t.textContent)")
            == ["a.example:9100"]
        ),
        5,
        what="the target of service node",
    )
    services = js(
        browser,
        "return [...document.querySelectorAll('#services button')].map(b => b.dataset.service)",
    )
    assert services == ["node"]
    assert "view=prometheus" in browser.current_url


def test_a_broken_stream_resumes_with_last_event_id(browser, cluster):
    a, b = cluster.nodes[0], cluster.nodes[1]
    open_ui(browser, a)
    before = js(browser, "return window.lobbyUI.state()")
    assert before["lastEventId"] is not None
    js(browser, "window.lobbyUI.dropStream()")
    wait_for(
        lambda: js(browser, "return window.lobbyUI.state()")["resumed"] == before["resumed"] + 1,
        10,
        what="a resumed stream (Last-Event-ID, no reset)",
    )
    assert js(browser, "return window.lobbyUI.state()")["resets"] == before["resets"]
    b.request("POST", "/v1/labels", content="role:replica\n")
    try:
        wait_for(
            lambda: js(
                browser,
                'return !!document.querySelector(\'.row[data-host="b.example"] .lb[data-label="role:replica"]\')',
            ),
            5,
            what="b's new label on the page",
        )
    finally:
        b.request("DELETE", "/v1/labels", content="role:replica\n")


def test_token_prompt_wrong_token_message_and_right_token(browser, locked):
    from selenium.webdriver.common.by import By

    browser.get(f"{locked.url}/ui/")
    wait_for(
        lambda: js(browser, "return document.getElementById('token-dialog').open"),
        10,
        what="prompt",
    )
    entry = browser.find_element(By.ID, "token-input")
    entry.send_keys("wrong-token")
    browser.find_element(By.ID, "token-submit").click()
    wait_for(
        lambda: "403" in js(browser, "return document.getElementById('token-msg').textContent"),
        10,
        what="the refusal message",
    )
    assert js(browser, "return document.getElementById('token-dialog').open") is True
    assert js(browser, "return document.getElementById('token-msg').className") == "error"
    browser.find_element(By.ID, "token-input").send_keys(TOKEN)
    browser.find_element(By.ID, "token-submit").click()
    wait_for(lambda: "locked.example" in rows(browser), 10, what="the nodes, with the token")
    wait_for(lambda: js(browser, "return window.lobbyUI.state().live") == "live", 10, what="live")
    # kept for the tab: a reload asks no more
    browser.refresh()
    wait_for(
        lambda: js(browser, "return window.lobbyUI.state().live") == "live", 10, what="live again"
    )
    assert js(browser, "return document.getElementById('token-dialog').open") is False
    assert js(browser, "return sessionStorage.getItem('lobby.token')") == TOKEN
    # the worker that refreshes "heard" from last_check sends the token too
    wait_for(
        lambda: js(browser, "return window.lobbyUI.state().heardPolls") >= 1,
        15,
        what="a heard poll",
    )
    # and never in a URL: nothing the page fetched names it
    urls = js(browser, "return performance.getEntriesByType('resource').map(e => e.name)")
    assert urls and not any(TOKEN in u for u in urls)


def test_the_dashboard_on_an_agent_lists_the_cluster_live(browser, cluster):
    """An agent (LISTEN=false, SPEC §20) hears nobody: its dashboard's list and stream
    come through a listener."""
    a = cluster.nodes[0]
    wait_for(lambda: a.stats()["queries"]["warm"], 15, what="a warm listener")
    agent = cluster.start("agent.example", "service:agent", LISTEN="false")
    try:
        open_ui(browser, agent)
        wait_for(
            lambda: {"a.example", "b.example", "agent.example"} <= set(rows(browser)),
            15,
            what="the cluster on the agent's page",
        )
        d = cluster.start("d.example", "service:late")
        wait_for(lambda: "d.example" in rows(browser), 15, what="a join on the agent's page")
        d.signal(signal.SIGTERM)
        assert d.wait(10) == 0
        wait_for(lambda: "d.example" not in rows(browser), 15, what="the leave on the agent's page")
        assert agent.stats()["packets"]["received"] == 0
    finally:  # the module's cluster goes on without it
        agent.stop(timeout=3)
        wait_for(lambda: "agent.example" not in a.hostnames(), 15, what="the agent gone")
