"""What lobbyd uses of uvicorn, imported without uvicorn/__init__.py.

That `__init__` imports uvicorn.main, the command line: click, and the reloaders
with watchfiles and multiprocessing (1.2 MiB of an idle daemon's RSS). The server
(`uvicorn.server.Server`, `uvicorn.config.Config`) and the httptools protocol do not
need it (lobby._packages). Nor is `logging.config` run, which uvicorn.config imports
for its `log_config` (lobbyd sets up logging itself: lobby.logs).
"""

from __future__ import annotations

from lobby._packages import defer_init

defer_init("logging.config")  # uvicorn.config imports it for log_config, never set here
defer_init("uvicorn", Config="uvicorn.config")  # uvicorn.lifespan asks for it

from uvicorn.config import Config  # noqa: E402
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol  # noqa: E402
from uvicorn.server import Server  # noqa: E402

__all__ = ["STATUS_LINE", "Config", "HttpToolsProtocol", "Server"]
