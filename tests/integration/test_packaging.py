"""Packaging (SPEC §14.3): the wheel, the systemd unit, the license.

The wheel test builds with `python -m build` from a copy of the tree (so the work tree
stays clean), installs the wheel into a fresh venv and runs both commands from there.
The wheel goes in with --no-deps and the fresh venv borrows this environment's
dependencies through a .pth line: installing them anew from the registry takes about a
minute. That the wheel declares every distribution lobby imports is checked on its own,
statically (test_every_imported_distribution_is_declared).
"""

from __future__ import annotations

import ast
import contextlib
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

import lobby

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
UNIT = ROOT / "packaging" / "lobbyd.service"


def run(*argv: str | Path, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=300, **kw)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("tree")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, tree / name)
    shutil.copytree(
        ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    out = tree / "dist"
    done = run(sys.executable, "-m", "build", "--wheel", "--outdir", out, tree)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (built,) = out.glob("lobbyd-*.whl")
    return built


def test_wheel_installs_into_a_clean_venv_and_runs(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    assert run(sys.executable, "-m", "venv", venv).returncode == 0
    done = run(venv / "bin" / "pip", "install", "--no-deps", "--no-index", wheel)
    assert done.returncode == 0, done.stderr
    # the dependencies, from this environment (see the module docstring)
    clean_site = Path(
        run(
            venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"
        ).stdout.strip()
    )
    (clean_site / "borrowed-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")

    assert run(venv / "bin" / "lobbyd", "--version").stdout == f"lobbyd {lobby.__version__}\n"
    assert run(venv / "bin" / "lobbyctl", "--version").stdout == f"lobbyctl {lobby.__version__}\n"
    help_text = run(venv / "bin" / "lobbyd", "--help").stdout
    assert "LOG_FORMAT" in help_text and "ACCESS_LOG" in help_text
    # lobby itself comes from the wheel, with its data files and its license
    probe = run(
        venv / "bin" / "python",
        "-c",
        "import lobby.api.docs as d, lobby; print(lobby.__file__); "
        "print(len(d._asset('swagger-ui-bundle.js.gz'))); "
        "from importlib import metadata; "
        "print(metadata.distribution('lobbyd').read_text('licenses/LICENSE')[:11])",
    )
    where, size, license_head = probe.stdout.split("\n")[:3]
    assert where.startswith(str(clean_site)), probe.stdout + probe.stderr
    assert int(size) > 400_000
    assert license_head == "MIT License"


def _imported_top_levels() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "src" / "lobby").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"lobby", "__future__"}


def _requirement_names(requirements: list[str]) -> set[str]:
    names = set()
    for requirement in requirements:
        if "extra ==" in requirement:
            continue
        name = re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0]
        names.add(re.sub(r"[-_.]+", "-", name).lower())
    return names


def test_every_imported_distribution_is_declared() -> None:
    """Each third-party module lobby imports comes from a declared dependency or one of
    theirs (starlette through fastapi): a wheel that forgot one would not start."""
    declared = _requirement_names(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    )
    reachable, todo = set(), list(declared)
    while todo:
        name = todo.pop()
        if name in reachable:
            continue
        reachable.add(name)
        with contextlib.suppress(metadata.PackageNotFoundError):  # other platforms' only
            todo += _requirement_names(metadata.requires(name) or [])
    owners = metadata.packages_distributions()
    for module in sorted(_imported_top_levels()):
        dists = {re.sub(r"[-_.]+", "-", d).lower() for d in owners.get(module, [])}
        assert dists & reachable, (
            f"{module} ({dists or 'not installed'}) is not a declared dependency"
        )
    assert "prometheus-client" in declared


def test_license_matches_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog and "/metrics" in changelog


# -- the systemd unit -----------------------------------------------------------------------


def _directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_unit_file_has_its_own_user_the_environment_file_hardening_and_restart() -> None:
    unit = _directives(UNIT.read_text())
    assert unit["User"] == ["lobby"] and unit["Group"] == ["lobby"]
    assert unit["EnvironmentFile"] == ["-/etc/default/lobbyd"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["ExecStart"] == ["/usr/local/bin/lobbyd"]
    for option in (
        "NoNewPrivileges",
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
    ):
        assert option in unit, option
    assert unit["ReadWritePaths"] == ["-/etc/lobby/labels"]  # the default LABELS_PATH


def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:  # ./dev installs Debian's systemd; only where it cannot:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd): unit not verified")
    # verify checks that ExecStart exists: point it at this environment's lobbyd
    unit = tmp_path / "lobbyd.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/lobbyd", str(VENV_BIN / "lobbyd")))
    done = run(analyze, "verify", unit)
    assert (done.returncode, done.stderr, done.stdout) == (0, "", "")
    security = run(analyze, "security", "--offline=true", unit)
    exposure = re.search(r"Overall exposure level for lobbyd.service: ([\d.]+)", security.stdout)
    assert exposure is not None, security.stdout + security.stderr
    print(f"\nFIGURE systemd-analyze security exposure of packaging/lobbyd.service: {exposure[1]}")
    assert float(exposure[1]) < 3.0  # "OK" on systemd's scale (a bare unit is 9.6)
    # and verify does fail a broken unit (so the check above means something)
    broken = tmp_path / "broken.service"
    broken.write_text(unit.read_text().replace("Type=exec", "Type=nonsense"))
    done = run(analyze, "verify", broken)
    assert "nonsense" in done.stderr
