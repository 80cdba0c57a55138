"""How fast `lobbyctl resolve LABEL` starts, asks a running lobbyd and exits.

    .venv/bin/python bench/ctl_start.py [--runs 20] [--bundle DIR] [--lobbyctl PATH ...]

Starts one lobbyd (this venv's, embedded nats-server, free loopback ports, stopped by
PID), then runs each lobbyctl `--runs` times after 3 warm-ups: the venv's console
script, the bundle's executable (DIR: an unpacked `./dev dist` tarball; by default
build/dist/lobby-VERSION-linux-x86_64, where ./dev dist assembles it) and any other
`--lobbyctl` (another checkout's venv, to compare). Prints a markdown table: median
wall time from start to exit, and median peak RSS (GNU time's %M, the kernel's maxrss
of the one process: the bundle's bootloader execs itself, it does not fork).
bench/README.md quotes it. Needs /usr/bin/time (Debian's `time` package).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
LABEL = "service:bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(argv: list[str], env: dict[str, str], report: Path) -> tuple[float, float, str]:
    """One run: wall seconds, peak RSS in MiB, what it printed.

    The peak is GNU time's (%M): the kernel's maxrss of a process forked by the small
    `time`, not by this Python, whose size a child would inherit until it execs.
    """
    started = time.perf_counter()
    done = subprocess.run(
        ["/usr/bin/time", "-f", "%M", "-o", str(report), *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{argv[0]} exited {done.returncode}")
    return wall, int(report.read_text().split()[-1]) / 1024, done.stdout.decode()


def main() -> int:
    from lobby import __version__

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument(
        "--bundle", type=Path, default=ROOT / "build" / "dist" / f"lobby-{__version__}-linux-x86_64"
    )
    parser.add_argument("--lobbyctl", action="append", default=[], help="another lobbyctl")
    args = parser.parse_args()

    candidates = [("venv (console script)", VENV_BIN / "lobbyctl")]
    if (args.bundle / "lobbyctl").exists():
        candidates.append(("bundle (PyInstaller)", args.bundle / "lobbyctl"))
    else:
        print(f"no bundle at {args.bundle}: ./dev dist makes it", file=sys.stderr)
    candidates += [(str(p), Path(p)) for p in args.lobbyctl]

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "EMBEDDED_NATS_PORT": str(free_port()),
            "HOSTNAME": "bench.example",
            "LABELS": LABEL,
            "LABELS_PATH": tmp,
        }
        daemon = subprocess.Popen(
            [str(VENV_BIN / "lobbyd")],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/discovery", timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline or daemon.poll() is not None:
                        raise SystemExit("lobbyd did not start") from None
                    time.sleep(0.1)
            time.sleep(3)  # lobbyd's own start-up work (first announces, imports) is done
            ctl_env = {k: v for k, v in os.environ.items() if k not in ("HOST", "PORT", "TOKEN")}
            rows = []
            for name, path in candidates:
                argv = [str(path), "-port", str(port), "resolve", LABEL]
                report = Path(tmp) / "time.out"
                for _ in range(3):
                    measure(argv, ctl_env, report)
                runs = [measure(argv, ctl_env, report) for _ in range(args.runs)]
                if any(out != "bench.example\n" for _, _, out in runs):
                    raise SystemExit(f"{name}: unexpected answer {runs[0][2]!r}")
                wall = statistics.median(w for w, _, _ in runs) * 1000
                rss = statistics.median(r for _, r, _ in runs)
                rows.append(f"| {name} | {wall:.0f} ms | {rss:.1f} MiB |")
        finally:
            daemon.terminate()
            daemon.wait(10)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"`lobbyctl resolve {LABEL}`, median of {args.runs} runs, {os.cpu_count()} cores, "
        f"load average {load}\n"
    )
    print("| lobbyctl | wall | peak RSS |\n| --- | --- | --- |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
