"""lobby._packages.defer_init: a package's submodules without its __init__, and the
__init__ after all when a name only it binds is asked for; a module run on first use."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import uuid
from pathlib import Path

import pytest

from lobby._packages import defer_init


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    name = f"deferred_{uuid.uuid4().hex[:8]}"
    root = tmp_path / name
    root.mkdir()
    (root / "__init__.py").write_text(
        f"open({str(tmp_path / 'runs')!r}, 'a').write('x')\n"
        f"from {name}.heavy import WEIGHT\n"
        f"from {name}.light import Thing\n"
        "def run():\n    return 'ran'\n"
    )
    (root / "heavy.py").write_text("WEIGHT = 1\n")
    (root / "light.py").write_text("class Thing:\n    pass\n")
    (root / "user.py").write_text(f"from {name} import Thing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]


def runs(package: str) -> int:
    """How often the package's __init__ ran."""
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.origin is not None
    counter = Path(spec.origin).parent.parent / "runs"
    return len(counter.read_text()) if counter.exists() else 0


def test_submodules_import_without_the_init_and_the_init_runs_when_needed(package) -> None:

    defer_init(package, Thing=f"{package}.light")
    light = importlib.import_module(f"{package}.light")
    user = importlib.import_module(f"{package}.user")  # asks the package for Thing
    assert user.Thing is light.Thing
    assert runs(package) == 0
    assert f"{package}.heavy" not in sys.modules
    pkg = sys.modules[package]
    assert pkg.light is light
    assert pkg.run() == "ran"  # only the __init__ binds it: the __init__ runs now
    assert runs(package) == 1
    assert f"{package}.heavy" in sys.modules and pkg.WEIGHT == 1
    with pytest.raises(AttributeError):
        pkg.missing  # noqa: B018
    assert runs(package) == 1  # once


def test_a_package_already_imported_is_left_alone(package) -> None:
    first = importlib.import_module(package)
    defer_init(package)
    assert sys.modules[package] is first and runs(package) == 1


def test_a_module_runs_when_a_name_of_it_is_first_read(package) -> None:
    spec = importlib.util.find_spec(package)
    assert spec is not None
    plain = Path(str(spec.origin)).parent.parent / f"{package}_m.py"
    plain.write_text(f"open({str(plain.parent / 'ran')!r}, 'a').write('x')\nX = 1\n")
    defer_init(plain.stem)
    module = importlib.import_module(plain.stem)  # as `import logging.config` in uvicorn
    assert not (plain.parent / "ran").exists()
    assert module.X == 1 and (plain.parent / "ran").read_text() == "x"
    assert importlib.import_module(plain.stem).X == 1
    assert (plain.parent / "ran").read_text() == "x"  # once
    del sys.modules[plain.stem]
