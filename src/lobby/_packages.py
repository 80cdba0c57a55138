"""Import a package's submodules without running the package's `__init__` first,
or a module that is imported but not used before its first use.

`from uvicorn.server import Server` runs uvicorn/__init__.py before uvicorn/server.py,
and that imports uvicorn.main: click and the reloaders (watchfiles, multiprocessing),
which lobbyd never uses. nats-py's client imports JetStream (`nats.js`), redis-py's
`redis/__init__` imports the cluster and Sentinel clients and every command module;
uvicorn.config imports `logging.config` (with logging.handlers, socketserver, pickle)
for a setting lobbyd does not use. Together that is several MiB of an idle daemon's
RSS (bench/README.md, "Memory.").

`defer_init("uvicorn")` puts the module into `sys.modules` as it is before its code
runs: name, spec and, for a package, `__path__`, so `import uvicorn.server` finds and
runs uvicorn/server.py as usual, and nothing else. Nothing is lost: the first look-up
of a name the module does not have yet imports the submodule of that name if there is
one, or else runs the module's code after all (`uvicorn.run`, `nats.connect`,
`nats.js.api`, `logging.config.dictConfig` all still work, they only cost their memory
when first used). The standard library's `importlib.util.LazyLoader` cannot do this
on Python 3.11: the next `import` statement of the module already loads it.

Call it before the first import of the module, parent packages first
(`defer_init("nats")`, then `defer_init("nats.js")`). A module already imported is
left as it is. One difference remains: until the `__init__` has run, a name that is
both a submodule and something the `__init__` binds over it (`uvicorn.main`, the
module, is the click command once uvicorn/__init__ ran) is the submodule.
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
    """Let `import name.sub` import name/sub.py without running name/__init__.py, and
    `import name` import a module whose code runs when a name of it is first read.

    `exports`: names the `__init__` binds from a submodule (`Config="uvicorn.config"`
    for its `from uvicorn.config import Config`), for submodules that ask the package
    for them (`from uvicorn import Config`): taken from that submodule, not by running
    the `__init__`."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return  # nothing to import: let the import fail as usual
    module = importlib.util.module_from_spec(spec)
    module.__getattr__ = _finish(module, spec, exports)  # type: ignore[method-assign]
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)


def _finish(module: ModuleType, spec: ModuleSpec, exports: Mapping[str, str]) -> Any:
    """The module's `__getattr__`: only called for names it does not have (yet)."""

    def __getattr__(attr: str) -> Any:
        if attr in exports:
            value = getattr(importlib.import_module(exports[attr]), attr)
            setattr(module, attr, value)
            return value
        full = f"{module.__name__}.{attr}"
        is_package = spec.submodule_search_locations is not None
        if is_package and not attr.startswith("__") and importlib.util.find_spec(full):
            return importlib.import_module(full)  # a submodule: just that
        # anything else is the module's own: run its code now, once
        module.__dict__.pop("__getattr__", None)
        assert spec.loader is not None
        spec.loader.exec_module(module)
        return getattr(module, attr)

    return __getattr__
