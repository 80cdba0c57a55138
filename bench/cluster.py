"""Several real lobbyd processes on one broker: propagation, join, failure detection.

Propagation: a label POSTed on node A until node B lists it. The clock starts just
before the POST (so it includes A writing its runtime label file, with fsync, and
announcing at once) and stops at the first answer of B's
/v1/discoveries?labels=<that label> that contains A, polled in a tight loop over a
keep-alive connection (one poll costs well under a millisecond). A background of
simulated nodes keeps announcing meanwhile. Each trial uses a new label and
removes it afterwards, so A's label set does not grow.

Join: a fresh node started among N simulated nodes (announcing every KEEP_ALIVE,
spread evenly) and one real peer: time from spawning the process until its own
API lists everyone. A node learns a Go peer at that peer's next keep-alive, so
among Go peers this is start-up + up to KEEP_ALIVE. Python peers answer the fast-join
request a fresh node publishes on the sync topic by announcing themselves within
0.2 s; the simulated nodes do that too in the second variant.

Failure detection: an observer and a victim (short TTL and KEEP_ALIVE so a trial
takes seconds). SIGKILL: the victim vanishes without a word; the observer should
drop it TTL after its last keep-alive, so between TTL - KEEP_ALIVE and TTL after
the kill. SIGTERM: the victim says goodbye, the observer drops it at once.
"""

from __future__ import annotations

import http.client
import random
import signal
import statistics
import time
from functools import partial
from pathlib import Path
from typing import Any

from procs import Broker, Lobbyd, Sim, scope, wait_for


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "trials": len(values),
        "p50": round(percentile(values, 50), 4),
        "p99": round(percentile(values, 99), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "mean": round(statistics.fmean(values), 4),
    }


def propagation(
    broker: Broker, workdir: Path, trials: int, background: int, say: Any
) -> dict[str, Any]:
    with scope() as sc:
        a = sc.add(Lobbyd(workdir, broker, "bench-a"))
        b = sc.add(Lobbyd(workdir, broker, "bench-b"))
        a.start(wait=False)
        b.start(wait=False)
        a.wait_ready()
        b.wait_ready()
        sim = sc.add(Sim(broker, workdir))
        if background:
            sim.call("fill", start=0, stop=background, rate=0)
            sim.call("keepalive", n=background, every=5, flip=False)
        wait_for(lambda: "bench-a" in b.hostnames(), 15, "B to list A")
        post, seen, polls = [], [], []
        for i in range(trials):
            label = f"bench:probe-{i}"
            query = f"/v1/discoveries?labels={label}"
            t0 = time.perf_counter()
            status, body = a.http.request("POST", "/v1/labels", label.encode())
            t_post = time.perf_counter()
            if status != 200:
                raise RuntimeError(f"POST /v1/labels on A: {status} {body!r}")
            n = 0
            while True:
                n += 1
                if b'"bench-a"' in b.http.get(query):
                    break
                if time.perf_counter() - t0 > 10:
                    raise TimeoutError(f"{label} did not reach B within 10 s")
            t1 = time.perf_counter()
            post.append(t_post - t0)
            seen.append(t1 - t0)
            polls.append(n)
            a.http.request("DELETE", "/v1/labels", label.encode())
            time.sleep(random.uniform(0.005, 0.02))
        sim.call("stop")
    result: dict[str, Any] = {
        "background_nodes": background,
        "visible_s": summary(seen),
        "post_s": summary(post),
        "polls_p50": percentile([float(p) for p in polls], 50),
        "samples": [round(s, 5) for s in seen],
    }
    say(
        f"    label on A -> visible on B: p50 {result['visible_s']['p50'] * 1e3:.1f} ms,"
        f" p99 {result['visible_s']['p99'] * 1e3:.1f} ms over {trials} trials"
        f" (the POST itself: p50 {result['post_s']['p50'] * 1e3:.1f} ms)"
    )
    return result


def join(
    broker: Broker, workdir: Path, n: int, keep_alive: int, trials: int, say: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {"n": n, "keep_alive": keep_alive}
    with scope() as sc:
        sim = sc.add(Sim(broker, workdir))
        sim.call("fill", start=0, stop=n, rate=0)
        peer = sc.add(Lobbyd(workdir, broker, "bench-peer", KEEP_ALIVE=keep_alive))
        peer.start()
        for peers in ("go", "python"):
            # Go peers ignore a fast-join request; Python peers answer it
            sim.call("keepalive", n=n, every=keep_alive, flip=False, answer_sync=peers == "python")
            wait_for(partial(peer.has_nodes, n + 1), 3 * keep_alive + 10, f"peer to list {n}")
            runs = [
                _join_once(workdir, broker, n, keep_alive, f"{peers}-{i}") for i in range(trials)
            ]
            for run in runs:
                say(
                    f"    fresh node among {n:,} {peers.capitalize()} peers: connected"
                    f" {run['connected_s']:.2f} s after spawn, lists all {run['listed']:,}"
                    f" {run['complete_after_connect_s']:.2f} s later (KEEP_ALIVE={keep_alive})"
                )
            out[peers] = {
                "runs": runs,
                "complete_s": summary([r["complete_s"] for r in runs]),
                "complete_after_connect_s": summary([r["complete_after_connect_s"] for r in runs]),
            }
        sim.call("stop")
    return out


def _join_once(workdir: Path, broker: Broker, n: int, keep_alive: int, name: str) -> dict[str, Any]:
    time.sleep(random.uniform(0, keep_alive))  # random phase against the keep-alives
    fresh = Lobbyd(workdir, broker, f"bench-join-{name}", KEEP_ALIVE=keep_alive)
    fresh.start(wait=False)
    t_spawn = fresh.started_at
    t_api = t_link = 0.0
    want = n + 2  # the simulated nodes, the peer, itself
    try:
        while True:
            if not fresh.running:
                raise RuntimeError(f"fresh lobbyd exited:\n{fresh.output()}")
            try:
                stats = fresh.stats()
            except (OSError, http.client.HTTPException):
                time.sleep(0.01)
                continue
            now = time.monotonic()
            t_api = t_api or now
            if stats["broker"]["connected"]:
                t_link = t_link or now
            if stats["nodes"] >= want:
                t_full = now
                break
            if now - t_spawn > 3 * keep_alive + 20:
                raise TimeoutError(f"fresh node lists {stats['nodes']} of {want}")
            time.sleep(0.005)
        listed = len(fresh.hostnames())
    finally:
        fresh.stop()
    return {
        "api_up_s": round(t_api - t_spawn, 3),
        "connected_s": round(t_link - t_spawn, 3),
        "complete_s": round(t_full - t_spawn, 3),
        "complete_after_connect_s": round(t_full - t_link, 3),
        "listed": listed,
    }


def failure(
    broker: Broker, workdir: Path, ttl: int, keep_alive: int, trials: int, say: Any
) -> dict[str, Any]:
    env: dict[str, str | int] = {"TTL": ttl, "KEEP_ALIVE": keep_alive, "LABELS": "bench:victim"}
    killed, stopped, exit_s = [], [], []
    query = "/v1/discoveries?labels=bench:victim"
    with scope() as sc:
        observer = sc.add(Lobbyd(workdir, broker, "bench-observer", TTL=ttl, KEEP_ALIVE=keep_alive))
        observer.start()

        def listed() -> bool:
            return b'"bench-victim"' in observer.http.get(query)

        for how in ("kill", "term"):
            for _ in range(trials):
                victim = sc.add(Lobbyd(workdir, broker, "bench-victim", **env))
                victim.start()
                wait_for(listed, 15, "observer to list the victim")
                time.sleep(random.uniform(0.2, keep_alive + 0.2))  # random phase
                t0 = time.monotonic()
                victim.signal(signal.SIGKILL if how == "kill" else signal.SIGTERM)
                wait_for(lambda: not listed(), ttl + 30, "observer to drop the victim", 0.01)
                gone = time.monotonic() - t0
                if how == "kill":
                    killed.append(gone)
                else:
                    assert victim.popen is not None
                    victim.popen.wait(10)
                    exit_s.append(time.monotonic() - t0)
                    stopped.append(gone)
                victim.stop()
                say(
                    f"    SIG{how.upper()} -> gone from the observer after {gone:.3f} s (TTL={ttl})"
                )
    return {
        "ttl": ttl,
        "keep_alive": keep_alive,
        "sigkill_s": summary(killed),
        "sigterm_s": summary(stopped),
        "sigterm_exit_s": summary(exit_s),
    }
