"""`./dev dist` (packaging/build_dist.py): the bundle runs where no Python is, and the
Debian package installs, runs lobbyd as its unit would, and purges without a trace.

The build runs once per test run (a session fixture, about two minutes) into a temporary
directory, never into the work tree's dist/. The package tests install into this
machine's dpkg database: they are meant for a throwaway machine (CI, as root), and purge
what they installed whatever happens.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import free_port, wait_for

import lobby
from lobby.config import VARIABLES

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("dpkg") is None or shutil.which("dpkg-deb") is None,
        reason="dpkg is not installed: the Debian package cannot be built nor installed",
    ),
    pytest.mark.timeout(600),
]

ROOT = Path(__file__).resolve().parents[2]
VERSION = lobby.__version__
BUNDLE = f"lobby-{VERSION}-linux-x86_64"
# what the bundle may take from the system: glibc alone
GLIBC = re.compile(r"^(libc|libm|libpthread|libdl|librt|libutil|ld-linux-x86-64)\.so")


def run(*argv: str | Path, timeout: float = 300, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kw
    )


def as_root(*argv: str | Path, env: dict[str, str] | None = None) -> list[str]:
    """`argv` as root: itself when we are root, else through sudo (which would reset the
    environment: `env` is passed on the command line then)."""
    if os.geteuid() == 0:
        return [str(a) for a in argv]
    pairs = [f"{k}={v}" for k, v in (env or {}).items()]
    return ["sudo", "-n", "env", *pairs, *map(str, argv)]


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory `./dev dist` fills, built once for the whole run."""
    top = tmp_path_factory.mktemp("dist")
    started = time.monotonic()
    done = run(
        sys.executable,
        ROOT / "packaging" / "build_dist.py",
        "--outdir",
        top / "out",
        "--workdir",
        top / "work",
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    print(f"\nFIGURE ./dev dist built in {time.monotonic() - started:.0f} s")
    print("".join(line + "\n" for line in done.stderr.splitlines() if line.startswith("dist:")))
    return top / "out"


@pytest.fixture(scope="session")
def bundle(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tarball, unpacked as an operator would."""
    where = tmp_path_factory.mktemp("unpacked")
    with tarfile.open(dist / f"{BUNDLE}.tar.gz") as tar:
        tar.extractall(where, filter="tar")
    return where / BUNDLE


def test_dist_makes_the_four_artifacts(dist: Path) -> None:
    names = sorted(p.name for p in dist.iterdir())
    assert names == sorted(
        [
            f"lobbyd-{VERSION}-py3-none-any.whl",
            f"lobbyd-{VERSION}.tar.gz",
            f"{BUNDLE}.tar.gz",
            f"lobby_{VERSION}_amd64.deb",
        ]
    )
    for name in names:
        print(f"FIGURE {name}: {(dist / name).stat().st_size / 1e6:.1f} MB")
    with tarfile.open(dist / f"{BUNDLE}.tar.gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert {m.split("/")[0] for m in members} == {BUNDLE}  # one top directory
    for program in ("lobbyd", "lobbyctl", "nats-server"):
        member = members[f"{BUNDLE}/{program}"]
        assert member.isfile() and member.mode & 0o111, program
    assert f"{BUNDLE}/_internal" in members and f"{BUNDLE}/LICENSE" in members
    assert {(m.uid, m.gid) for m in members.values()} == {(0, 0)}


def test_bundle_runs_where_no_python_is(bundle: Path, tmp_path: Path) -> None:
    """In a mount namespace where the system's, pyenv's and this venv's Python are
    covered by empty tmpfs: lobbyd starts (with its embedded nats-server) and lobbyctl
    talks to it."""
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is missing: ./dev test installs it")
    hidden = [
        *sorted(Path("/usr/lib").glob("python3*")),
        *sorted(Path("/usr/local/lib").glob("python3*")),
        Path("/root/.pyenv"),
        Path(sys.prefix),
        Path(sys.base_prefix),
    ]
    hidden = [p for p in dict.fromkeys(hidden) if p.is_dir()]
    hidden = [p for p in hidden if not any(p != q and p.is_relative_to(q) for q in hidden)]
    port, nats_port = free_port(), free_port()
    script = tmp_path / "inside.sh"
    script.write_text(
        "set -u\n"
        + "".join(f"mount -t tmpfs none '{p}'\n" for p in hidden)
        # the proof that Python is gone: no interpreter here can start any more
        + "for py in python3 /usr/bin/python3 "
        + f"'{Path(sys.executable)}'; do\n"
        + '  if "$py" -c "import encodings" 2>/dev/null; then echo "PYTHON WORKS: $py"; fi\n'
        + "done\n"
        + f"'{bundle}/lobbyd' > '{tmp_path}/lobbyd.log' 2>&1 &\n"
        + "pid=$!\n"
        + "for i in $(seq 100); do\n"
        + f"  out=$('{bundle}/lobbyctl' -port {port} resolve role:bundle 2>/dev/null) && break\n"
        + "  sleep 0.1\n"
        + "done\n"
        + 'echo "RESOLVE $out"\n'
        + f"'{bundle}/lobbyctl' -port {port} -json discovery\n"
        # what lobbyctl imports only when asked: jinja2, httpx, the key code
        + f"'{bundle}/lobbyctl' -port {port} render '{tmp_path}/t.j2'\n"
        + f"timeout 3 '{bundle}/lobbyctl' -port {port} watch\n"
        + f"'{bundle}/lobbyctl' keygen | wc -c\n"
        + 'kill -TERM $pid; wait $pid; echo "EXIT $?"\n'
    )
    (tmp_path / "t.j2").write_text("RENDERED {{ nodes | length }} {{ nodes[0].hostname }}\n")
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "EMBEDDED_NATS_PORT": str(nats_port),
        "HOSTNAME": "bundle.example",
        "LABELS": "role:bundle",
        "LABELS_PATH": str(tmp_path / "labels"),
    }
    done = run(
        *as_root("unshare", "-m", "--propagation", "private", "sh", script, env=env), env=env
    )
    log = (tmp_path / "lobbyd.log").read_text() if (tmp_path / "lobbyd.log").exists() else ""
    assert done.returncode == 0, done.stdout + done.stderr + log
    assert "PYTHON WORKS" not in done.stdout, done.stdout
    assert "RESOLVE bundle.example\n" in done.stdout, done.stdout + done.stderr + log
    after = done.stdout.split("RESOLVE bundle.example\n")[1]
    discovery = json.loads(after.split("RENDERED")[0])
    assert discovery["hostname"] == "bundle.example" and discovery["labels"] == ["role:bundle"]
    assert "RENDERED 1 bundle.example\n" in after
    assert "join   bundle.example  role:bundle\n" in after
    assert "45\n" in after  # keygen: 44 base64 characters and a newline
    assert "EXIT 0" in done.stdout, done.stdout + log
    assert "started embedded nats-server" in log and "Traceback" not in log, log


def test_bundle_links_only_glibc_and_its_own_libraries(bundle: Path) -> None:
    internal = bundle / "_internal"
    elves = [
        p
        for p in sorted(bundle.rglob("*"))
        if p.is_file() and not p.is_symlink() and p.read_bytes()[:4] == b"\x7fELF"
    ]
    assert len(elves) > 20 and bundle / "lobbyd" in elves and bundle / "lobbyctl" in elves
    # as at run time: the bootloader puts _internal/ first on the library path
    env = {**os.environ, "LD_LIBRARY_PATH": str(internal)}
    outside: dict[str, set[str]] = {}
    for elf in elves:
        done = run("ldd", elf, env=env)
        if "not a dynamic executable" in done.stdout + done.stderr:
            continue  # nats-server: a static Go program
        assert done.returncode == 0, f"{elf}: {done.stdout}{done.stderr}"
        for line in done.stdout.splitlines():
            name, _, where = line.strip().partition(" => ")
            assert "not found" not in where, f"{elf.relative_to(bundle)}: {line}"
            path = where.split(" (")[0].strip()
            if not path or path.startswith(str(bundle)):
                continue  # linux-vdso, or a library of the bundle
            if not GLIBC.match(Path(name.split(" (")[0]).name):
                outside.setdefault(name, set()).add(str(elf.relative_to(bundle)))
    assert outside == {}, f"libraries from the system beyond glibc: {outside}"


# -- the Debian package -------------------------------------------------------------------


def test_deb_contents_and_environment_file(dist: Path, tmp_path: Path) -> None:
    deb = dist / f"lobby_{VERSION}_amd64.deb"
    fields = run("dpkg-deb", "--field", deb).stdout
    assert f"Version: {VERSION}\n" in fields and "Architecture: amd64\n" in fields
    depends = re.search(r"^Depends: .*libc6 \(>= (2\.\d+)\).*adduser", fields, re.M)
    assert depends, fields
    listing = run("dpkg-deb", "--contents", deb).stdout
    for path in (
        "./opt/lobby/lobbyd",
        "./opt/lobby/lobbyctl",
        "./opt/lobby/nats-server",
        "./lib/systemd/system/lobbyd.service",
        "./etc/default/lobby",
        "./usr/share/doc/lobby/copyright",
        "./usr/share/doc/lobby/changelog.gz",
        "./usr/share/lintian/overrides/lobby",
    ):
        assert re.search(rf" {re.escape(path)}$", listing, re.M), path
    assert re.search(r" \./usr/bin/lobbyd -> /opt/lobby/lobbyd$", listing, re.M)
    assert re.search(r" \./usr/bin/lobbyctl -> /opt/lobby/lobbyctl$", listing, re.M)
    assert {line.split()[1] for line in listing.splitlines()} == {"root/root"}

    control = tmp_path / "control"
    assert run("dpkg-deb", "--control", deb, control).returncode == 0
    assert (control / "conffiles").read_text() == "/etc/default/lobby\n"
    for script in ("postinst", "prerm", "postrm"):
        assert run("sh", "-n", control / script).returncode == 0, script
    assert "adduser --system --group" in (control / "postinst").read_text()
    assert "deb-systemd-invoke stop 'lobbyd.service'" in (control / "prerm").read_text()

    unpacked = tmp_path / "root"
    assert run("dpkg-deb", "--extract", deb, unpacked).returncode == 0
    # the libc6 it depends on is the newest glibc any of its ELF files asks for
    wanted = set()
    for elf in (unpacked / "opt" / "lobby").rglob("*"):
        if elf.is_file() and not elf.is_symlink() and elf.read_bytes()[:4] == b"\x7fELF":
            wanted.update(re.findall(rb"GLIBC_(2\.\d+)\x00", elf.read_bytes()))
    newest = max(tuple(int(x) for x in v.split(b".")) for v in wanted)
    assert tuple(int(x) for x in depends[1].split(".")) == newest, (depends[1], newest)
    assert newest >= (2, 17)  # a modern bundle: the check above compares numbers
    settings = (unpacked / "etc" / "default" / "lobby").read_text()
    lines = settings.splitlines()
    assert all(not line or line.startswith("#") for line in lines)  # nothing set
    for var in VARIABLES:  # every setting, at its default, ready to uncomment
        assert any(re.fullmatch(rf"#{var.name}=.*", line) for line in lines), var.name
    assert "#PORT=1313" in lines and "#LABELS_PATH=/etc/lobby/labels" in lines
    unit = (unpacked / "lib" / "systemd" / "system" / "lobbyd.service").read_text()
    assert "\nExecStart=/usr/bin/lobbyd\n" in unit
    assert "\nEnvironmentFile=-/etc/default/lobby\n" in unit and "User=lobby" in unit


def test_lintian_finds_nothing_beyond_the_overrides(dist: Path) -> None:
    lintian = shutil.which("lintian")
    if lintian is None:
        pytest.fail("lintian is missing: ./dev test installs it")
    deb = dist / f"lobby_{VERSION}_amd64.deb"
    # --allow-root: lintian only reads the package; info tags shown, to see unused overrides
    done = run(lintian, "--allow-root", "--fail-on", "error,warning", "--display-info", deb)
    complaints = [line for line in done.stdout.splitlines() if re.match(r"^[EW]: ", line)]
    assert complaints == [], done.stdout
    assert "unused-override" not in done.stdout and "mismatched-override" not in done.stdout
    assert done.returncode == 0, done.stdout + done.stderr
    overridden = run(lintian, "--allow-root", "--show-overrides", deb).stdout  # exits 2 then
    tags = re.findall(r"^O: lobby: (\S+)", overridden, re.M)
    assert tags, overridden  # the overrides are read (and so, above, hide what they say)
    print(f"\nFIGURE lintian: 0 errors, 0 warnings; overridden: {sorted(set(tags))}")


PREEXISTING: set[str] = set()


def _installed() -> bool:
    status = run("dpkg-query", "--show", "--showformat=${db:Status-Status}", "lobby")
    return status.returncode == 0 and status.stdout.strip() not in ("", "not-installed")


@pytest.fixture
def installed(dist: Path) -> Iterator[list[str]]:
    """The package installed with dpkg -i; its file list. Purged afterwards in any case."""
    if _installed():
        pytest.fail("a lobby package is installed on this machine already: not touching it")
    # another lobbyd on this machine, run by hand with the default LABELS_PATH, may have
    # made /etc/lobby: then purge must leave it (and what is in it)
    PREEXISTING.clear()
    PREEXISTING.update(p for p in ("/etc/lobby", "/etc/lobby/labels") if Path(p).exists())
    done = run(*as_root("dpkg", "-i", dist / f"lobby_{VERSION}_amd64.deb"))
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        yield run("dpkg", "-L", "lobby").stdout.split()
    finally:
        if _installed():
            run(*as_root("dpkg", "--purge", "lobby"))


def _get(port: int, path: str) -> object:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
        return json.loads(answer.read())


def test_deb_installs_runs_as_its_unit_and_purges_without_a_trace(installed, tmp_path):
    files = installed
    assert "/opt/lobby/lobbyd" in files and "/etc/default/lobby" in files
    user = run("getent", "passwd", "lobby").stdout.split(":")
    assert user[0] == "lobby" and user[5] == "/var/lib/lobby", user
    assert int(user[2]) < 1000 and user[6].strip() in ("/usr/sbin/nologin", "/bin/false")
    for directory in ("/var/lib/lobby", "/etc/lobby/labels"):
        assert Path(directory).owner() == "lobby", directory
    assert Path("/usr/bin/lobbyd").resolve() == Path("/opt/lobby/lobbyd")
    analyze = shutil.which("systemd-analyze")
    if analyze is not None:  # ./dev installs systemd where it can; the unit as installed
        verified = run(analyze, "verify", "/lib/systemd/system/lobbyd.service")
        assert (verified.returncode, verified.stderr) == (0, ""), verified.stderr

    # as the unit starts it: its user, its environment file, its UMask; free ports
    port, nats_port = free_port(), free_port()
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "EMBEDDED_NATS_PORT": str(nats_port),
        "LABELS": "role:packaged",
    }
    for line in Path("/etc/default/lobby").read_text().splitlines():
        if line and not line.startswith("#"):  # none as installed, but as systemd would
            key, _, value = line.partition("=")
            env.setdefault(key, value.strip('"'))
    log = (tmp_path / "lobbyd.log").open("w")
    argv = as_root(
        "setpriv", "--reuid", "lobby", "--regid", "lobby", "--init-groups", "--",
        "sh", "-c", "umask 0022 && exec /usr/bin/lobbyd",
        env=env,
    )  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd="/")
    try:
        me = wait_for(lambda: _get(port, "/v1/discovery"), 30, what="the packaged lobbyd")
        assert isinstance(me, dict) and "role:packaged" in me["labels"]
        nodes = wait_for(lambda: _get(port, "/v1/discoveries"), 10, what="discoveries")
        assert [n["hostname"] for n in nodes] == [me["hostname"]]  # it lists itself
        ctl = run("/usr/bin/lobbyctl", "-port", port, "resolve", "role:packaged")
        assert (ctl.returncode, ctl.stdout, ctl.stderr) == (0, f"{me['hostname']}\n", "")
        # runtime labels: written by the lobby user into the package's LABELS_PATH
        added = run("/usr/bin/lobbyctl", "-port", port, "labels", "add", "state:kept")
        assert added.returncode == 0, added.stderr
        assert "state:kept" in Path("/etc/lobby/labels/_runtime").read_text().split()
        assert Path("/etc/lobby/labels/_runtime").owner() == "lobby"
        ps = run("ps", "-o", "user=,comm=", "--ppid", str(proc.pid)).stdout.split()
        assert ps[:2] == ["lobby", "nats-server"], ps  # /opt/lobby's, as lobby
    finally:
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=15)
        log.close()
    output = (tmp_path / "lobbyd.log").read_text()
    assert status == 0 and "Traceback" not in output, output
    assert "started embedded nats-server" in output

    done = run(*as_root("dpkg", "--purge", "lobby"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert not _installed()
    left = [f for f in files if Path(f).exists() and not _shared_directory(f)]
    assert left == [], left
    for gone in ("/opt/lobby", "/var/lib/lobby", "/etc/lobby", "/etc/default/lobby"):
        if gone not in PREEXISTING:
            assert not Path(gone).exists(), gone
    if "/etc/lobby/labels" not in PREEXISTING:
        assert not Path("/etc/lobby/labels/_runtime").exists()
    assert run("getent", "passwd", "lobby").returncode == 2
    assert run("getent", "group", "lobby").returncode == 2
    helper_state = list(Path("/var/lib/systemd").glob("deb-systemd-helper-*/**/lobbyd*"))
    assert helper_state == []


def _shared_directory(path: str) -> bool:
    """/usr/bin, /lib/systemd/system, ...: directories other packages own too."""
    return Path(path).is_dir() and not path.startswith(("/opt/lobby", "/usr/share/doc/lobby"))
