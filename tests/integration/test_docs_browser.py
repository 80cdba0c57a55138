"""/docs in a real headless browser (Debian's chromium), on a machine without internet:
Swagger UI renders from lobbyd's own assets, and with TOKEN set the page asks for the
token and sends it with the API calls it makes ("Try it out").

The browser is driven through the DevTools protocol over a pipe (--remote-debugging-pipe:
JSON messages separated by NUL bytes on fds 3 and 4), so no driver package is needed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support import wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TOKEN = "s3cret"


class Browser:
    """Headless chromium with one page, driven over --remote-debugging-pipe."""

    def __init__(self, profile: Path) -> None:
        to_browser_r, self._write = os.pipe()
        self._read, from_browser_w = os.pipe()
        argv = [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "about:blank",
        ]
        # the browser reads commands on fd 3 and writes answers on fd 4
        script = (
            f'exec "$@" 3<&{to_browser_r} 4>&{from_browser_w} {to_browser_r}<&- {from_browser_w}>&-'
        )
        self.proc = subprocess.Popen(
            ["bash", "-c", script, "chromium", *argv],
            pass_fds=(to_browser_r, from_browser_w),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.session = ""

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._read, 65536)
                if not chunk:
                    raise AssertionError("chromium closed its DevTools pipe")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise AssertionError(f"{method}: {answer['error']}")
                return dict(answer.get("result", {}))

    def open(self, url: str) -> None:
        target = self.call("Target.createTarget", url=url)["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]

    def js(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        os.close(self._read)
        os.close(self._write)


@pytest.fixture
def browser(tmp_path: Path):
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: ./dev test installs it (apt-get install chromium)")
    b = Browser(tmp_path / "profile")
    try:
        yield b
    finally:
        b.close()


OPERATIONS = "document.querySelectorAll('.opblock').length"


def try_it_out(browser: Browser, path: str) -> None:
    """Open an operation, press "Try it out", then "Execute"."""
    browser.js(
        f"""[...document.querySelectorAll('.opblock-summary-path')]
            .find(e => e.getAttribute('data-path') === '{path}').click()"""
    )
    wait_for(lambda: browser.js("!!document.querySelector('.try-out__btn')"), 15)
    browser.js("document.querySelector('.try-out__btn').click()")
    wait_for(lambda: browser.js("!!document.querySelector('.execute')"), 15)
    browser.js("document.querySelector('.execute').click()")


def response_text(browser: Browser) -> str:
    return str(browser.js("document.querySelector('.live-responses-table')?.innerText || ''"))


def test_docs_render_offline_from_lobbyds_own_assets(nats_server, channel, spawn, browser):
    a = spawn("a.example", {"NATS_URL": nats_server.url, "NATS_DISCOVERY_CHANNEL": channel})
    browser.open(f"{a.url}/docs")
    wait_for(lambda: browser.js(OPERATIONS) >= 8, 30, what="Swagger UI lists the operations")
    assert browser.js("document.querySelector('.title')?.innerText").startswith("lobbyd")
    try_it_out(browser, "/v1/discovery")
    wait_for(lambda: "a.example" in response_text(browser), 15, what="the answer shown")


def test_with_a_token_the_page_asks_for_it_and_sends_it(nats_server, channel, spawn, browser):
    a = spawn(
        "a.example",
        {"NATS_URL": nats_server.url, "NATS_DISCOVERY_CHANNEL": channel, "TOKEN": TOKEN},
    )
    browser.open(f"{a.url}/docs")
    wait_for(lambda: browser.js("document.getElementById('token-form').hidden === false"), 30)
    assert browser.js(OPERATIONS) == 0  # the document is protected
    browser.js(
        f"""document.getElementById('token').value = '{TOKEN}';
            document.getElementById('token-form').requestSubmit()"""
    )
    wait_for(lambda: browser.js(OPERATIONS) >= 8, 30, what="Swagger UI with the token")
    assert browser.js("document.getElementById('token-form').hidden") is True
    assert browser.js("location.href") == f"{a.url}/docs"  # the token is never in a URL
    try_it_out(browser, "/v1/discovery")
    wait_for(lambda: "a.example" in response_text(browser), 15, what="an authorized answer")
    assert "access denied" not in response_text(browser)
    # a reload keeps the token for the tab: no question, the operations again
    browser.js("window.before_reload = true; location.reload()")
    wait_for(
        lambda: browser.js(f"!window.before_reload && {OPERATIONS} >= 8"),
        30,
        what="the reloaded page with the operations",
    )
    assert browser.js("document.getElementById('token-form').hidden") is True
