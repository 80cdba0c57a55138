"""The HTTP API: one route table (`routes`), one dispatch (`dispatch.Api`: token,
blocking queries, gzip, metrics, access log), one protocol (`protocol`, on httptools)
and the server around it (`server`). A request can be answered without a socket:
`await Api(node).respond(Request("GET", path, query))`.
"""

from __future__ import annotations

from lobby.api.dispatch import Api
from lobby.api.http import Request, Response

__all__ = ["Api", "Request", "Response"]
