"""The dashboard at 10,000 nodes, in Debian's headless Chromium: first paint and typing.

One lobbyd holds N simulated nodes that announce every 5 s (so it ingests N/5
packets/s meanwhile) while one of them changes its labels once a second, so the page
receives a live event every second. Chromium runs on the other core(s), beside the
broker and the simulator.

- Load (5 times, each a fresh navigation): the page's own marks, in ms from the start
  of navigation: `lobby:first-rows` (the first rows are in the DOM), the Element Timing
  of the first row's hostname (when it was painted), `lobby:live` (the event stream's
  snapshot is applied), and first-contentful-paint.
- Typing: filters typed one key at a time, 80 ms apart, as keyboard events (CDP
  `Input.dispatchKeyEvent`: selenium's `send_keys` would run its own script in the page);
  every long task (> 50 ms on the main thread, PerformanceObserver `longtask`) from the
  first key until the page is quiet again is counted, and the longest is reported.
  `lobby:filter` measures how long each recomputation of the list took.
"""

from __future__ import annotations

import statistics
import time
from functools import partial
from typing import Any

from browser import chromium
from procs import Broker, Lobbyd, Sim, scope, wait_for

KEEP_ALIVE = 5
LOADS = 5
KEY_GAP = 0.08  # seconds between keys: a quick typist
FILTERS = ("service:web", "location:prague", "public_ip4:", "node-0999", "role:primary,role:edge")

_OBSERVE = """
window.__longtasks = [];
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) window.__longtasks.push([e.startTime, e.duration]);
}).observe({type: 'longtask', buffered: true});
window.__frames = [];  // long animation frames: how much of each was script, how much rendering
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) {
    const script = e.scripts.reduce((a, s) => a + s.duration, 0);
    const render = e.renderStart ? e.startTime + e.duration - e.renderStart : 0;
    window.__frames.push([e.startTime, e.duration, script, render]);
  }
}).observe({type: 'long-animation-frame', buffered: true});
"""

_MARKS = """
const done = arguments[arguments.length - 1];
const mark = (n) => { const e = performance.getEntriesByName(n)[0]; return e ? e.startTime : null; };
const fcp = performance.getEntriesByName('first-contentful-paint')[0];
let element = null;
try {
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) if (e.identifier === 'lobby-first-row') element = e.renderTime || e.loadTime;
  }).observe({type: 'element', buffered: true});
} catch (err) {}
setTimeout(() => done({
  first_rows: mark('lobby:first-rows'), live: mark('lobby:live'), element,
  fcp: fcp ? fcp.startTime : null, rows: document.querySelectorAll('.row:not([hidden])').length,
  nodes: window.lobbyUI.state().nodes,
}), 100);
"""


def _load(driver: Any, url: str, n: int) -> dict[str, Any]:
    driver.get("about:blank")
    driver.get(url)
    wait_for(
        lambda: driver.execute_script(
            "return window.lobbyUI && performance.getEntriesByName('lobby:live').length > 0"
        ),
        30,
        "the dashboard's snapshot",
    )
    wait_for(
        lambda: driver.execute_script("return window.lobbyUI.state().nodes") >= n,
        30,
        f"{n} nodes on the page",
    )
    return driver.execute_async_script(_MARKS)  # type: ignore[no-any-return]


def _key(driver: Any, key: str, text: str = "", code: int = 0) -> None:
    """One key press as the keyboard sends it (CDP Input), with no driver script in the page."""
    down: dict[str, Any] = {"type": "keyDown", "key": key}
    if text:
        down.update(text=text, unmodifiedText=text)
    if code:
        down["windowsVirtualKeyCode"] = code
    driver.execute_cdp_cmd("Input.dispatchKeyEvent", down)
    driver.execute_cdp_cmd("Input.dispatchKeyEvent", {"type": "keyUp", "key": key})


def _type(driver: Any, text: str) -> dict[str, Any]:
    driver.execute_script("const f = document.getElementById('filter'); f.focus(); f.select()")
    _key(driver, "Backspace", code=8)
    time.sleep(0.5)
    t0 = driver.execute_script(
        "performance.clearMeasures('lobby:filter'); return performance.now()"
    )
    for ch in text:
        _key(driver, ch, ch)
        time.sleep(KEY_GAP)
    time.sleep(1.0)  # let the last keys' work and any event batch finish
    t1 = driver.execute_script("return performance.now()")
    got = driver.execute_script(
        "return {long: window.__longtasks.filter(([s]) => s >= arguments[0] && s <= arguments[1]),"
        " frames: window.__frames.filter(([s]) => s >= arguments[0] && s <= arguments[1]),"
        " filter: performance.getEntriesByName('lobby:filter').map(e => e.duration),"
        " shown: window.lobbyUI.state().visible}",
        t0,
        t1,
    )
    longs = [d for _, d in got["long"]]
    worst = max(got["frames"], key=lambda f: f[1], default=None)
    return {
        "worst_frame_ms": None
        if worst is None
        else {"total": round(worst[1]), "script": round(worst[2]), "render": round(worst[3])},
        "text": text,
        "keys": len(text),
        "shown": got["shown"],
        "long_tasks": len(longs),
        "longest_task_ms": round(max(longs), 1) if longs else 0.0,
        "filter_ms_max": round(max(got["filter"]), 2) if got["filter"] else None,
        "filter_ms_median": round(statistics.median(got["filter"]), 2) if got["filter"] else None,
    }


def measure(broker: Broker, workdir: Any, n: int, say: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"n": n, "keep_alive": KEEP_ALIVE}
    with scope() as sc:
        daemon = sc.add(Lobbyd(workdir, broker, "bench-ui", KEEP_ALIVE=KEEP_ALIVE))
        daemon.start()
        sim = sc.add(Sim(broker, workdir))
        sim.call("prepare", n=n)
        sim.call("fill", start=0, stop=n, rate=0)
        wait_for(partial(daemon.has_nodes, n + 1), 60, f"{n} nodes", every=0.05)
        sim.call("keepalive", n=n, every=KEEP_ALIVE, flip=True)
        out["answer_bytes"] = len(daemon.http.get("/v1/discoveries"))
        url = f"http://127.0.0.1:{daemon.port}/ui/"
        with chromium(1440, 900) as driver:
            loads = [_load(driver, url, n + 1) for _ in range(LOADS)]
            for i, load in enumerate(loads):
                say(
                    f"    load {i + 1}: first rows {load['first_rows']:.0f} ms, painted {load['element'] or 0:.0f} ms,"
                    f" snapshot applied {load['live']:.0f} ms, FCP {load['fcp'] or 0:.0f} ms, {load['rows']} rows in the DOM"
                )
            out["loads"] = loads
            for key in ("first_rows", "element", "live", "fcp"):
                values = [x[key] for x in loads if x.get(key) is not None]
                if values:
                    out[f"{key}_ms"] = {
                        "p50": round(statistics.median(values)),
                        "min": round(min(values)),
                        "max": round(max(values)),
                    }
            driver.execute_script(_OBSERVE)
            typing = []
            for text in FILTERS:
                r = _type(driver, text)
                typing.append(r)
                say(
                    f"    typed {text!r:<26} {r['shown']:>6,} shown; filter {r['filter_ms_median']} ms median,"
                    f" {r['filter_ms_max']} ms max; long tasks {r['long_tasks']} (longest {r['longest_task_ms']} ms);"
                    f" worst frame {r['worst_frame_ms']}"
                )
            out["typing"] = typing
            out["longest_task_ms"] = max(r["longest_task_ms"] for r in typing)
            out["filter_ms_max"] = max(r["filter_ms_max"] or 0 for r in typing)
        sim.call("stop")
    return out
