"""Import a package's submodules without running the package's `__init__` first.

`from uvicorn.server import Server` runs uvicorn/__init__.py before uvicorn/server.py,
and that imports uvicorn.main: click and the reloaders (watchfiles, multiprocessing),
which lobbyd never uses. nats-py's client imports JetStream (`nats.js`), redis-py's
`redis/__init__` imports the cluster and Sentinel clients and every command module.
Together that is several MiB of an idle daemon's RSS (bench/README.md, "Memory.").

`defer_init("uvicorn")` puts the package into `sys.modules` as it is before its
`__init__` runs: name, spec and `__path__`, so `import uvicorn.server` finds and runs
uvicorn/server.py as usual, and nothing else. Nothing is lost: the first look-up of a
name the package does not have yet imports the submodule of that name if there is
one, or else runs the package's `__init__` after all (`uvicorn.run`, `nats.connect`,
`nats.js.api` all still work, they only cost their memory when first used).

Call it before the first import of the package, parent packages first
(`defer_init("nats")`, then `defer_init("nats.js")`). A package already imported is
left as it is, so is a name that is not a package. One difference remains: until the
`__init__` has run, a name that is both a submodule and something the `__init__`
binds over it (`uvicorn.main`, the module, is the click command once
uvicorn/__init__ ran) is the submodule.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Mapping
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

__all__ = ["defer_init"]


def defer_init(name: str, **exports: str) -> None:
    """Let `import name.sub` import name/sub.py without running name/__init__.py.

    `exports`: names the `__init__` binds from a submodule (`Config="uvicorn.config"`
    for its `from uvicorn.config import Config`), for submodules that ask the package
    for them (`from uvicorn import Config`): taken from that submodule, not by running
    the `__init__`."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return  # not a package: it imports as usual
    package = importlib.util.module_from_spec(spec)
    package.__getattr__ = _finish(package, spec, exports)  # type: ignore[method-assign]
    sys.modules[name] = package
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, package)


def _finish(package: ModuleType, spec: ModuleSpec, exports: Mapping[str, str]) -> Any:
    """The package's `__getattr__`: only called for names it does not have (yet)."""

    def __getattr__(attr: str) -> Any:
        if attr in exports:
            value = getattr(importlib.import_module(exports[attr]), attr)
            setattr(package, attr, value)
            return value
        full = f"{package.__name__}.{attr}"
        if not attr.startswith("__") and importlib.util.find_spec(full) is not None:
            return importlib.import_module(full)  # a submodule: just that
        # anything else is the package's own: run its __init__ now, once
        package.__dict__.pop("__getattr__", None)
        assert spec.loader is not None
        spec.loader.exec_module(package)
        return getattr(package, attr)

    return __getattr__
