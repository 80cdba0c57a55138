"""GET /docs: Swagger UI served from the package, so it works offline (SPEC §14.3).

FastAPI's own /docs page loads Swagger UI from a CDN (blank without internet) and
/redoc does too; both are switched off and replaced by this page, whose assets
lobbyd serves itself from `lobby/api/swagger/` (see its README: swagger-ui-dist,
stored gzipped, sent as they are to browsers that accept gzip).

With TOKEN set, the page and its assets need no token: they are the same static
files for everyone and tell nothing about the cluster. `/openapi.json` and every
API route stay protected: the page asks for the token when the document answers
403, keeps it in the tab's sessionStorage (never in a URL), and Swagger UI sends it
with every request it makes, "Try it out" included (`swagger/docs.js`).
"""

from __future__ import annotations

import gzip
from functools import cache
from importlib import resources
from typing import Final

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from starlette.exceptions import HTTPException

PREFIX: Final = "/docs"
STATIC: Final = "/docs/static/"

# name -> (file in lobby/api/swagger, content type); nothing else is served
ASSETS: Final = {
    "swagger-ui-bundle.js": ("swagger-ui-bundle.js.gz", "text/javascript; charset=utf-8"),
    "swagger-ui.css": ("swagger-ui.css.gz", "text/css; charset=utf-8"),
    "docs.js": ("docs.js", "text/javascript; charset=utf-8"),
    "LICENSE": ("LICENSE", "text/plain; charset=utf-8"),
    "NOTICE": ("NOTICE", "text/plain; charset=utf-8"),
    "THIRD-PARTY-LICENSES.txt": ("THIRD-PARTY-LICENSES.txt", "text/plain; charset=utf-8"),
}

PAGE: Final = """\
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>lobbyd API</title>
<link rel="stylesheet" href="docs/static/swagger-ui.css">
<style>
  #token-form { font-family: sans-serif; max-width: 40em; margin: 2em auto; }
  #token-form input { font-size: 1em; padding: .3em; width: 24em; }
</style>
</head>
<body>
<form id="token-form" hidden>
  <p id="token-note"></p>
  <input id="token" type="password" autocomplete="off" aria-label="API token">
  <button type="submit">Use token</button>
</form>
<div id="swagger-ui"></div>
<script src="docs/static/swagger-ui-bundle.js"></script>
<script src="docs/static/docs.js"></script>
</body>
</html>
"""


def is_public(path: str) -> bool:
    """The page and its assets: no token needed (the API calls still need it)."""
    return path == PREFIX or (path.startswith(STATIC) and path[len(STATIC) :] in ASSETS)


@cache
def _asset(name: str) -> bytes:
    return resources.files("lobby.api").joinpath("swagger", name).read_bytes()


@cache
def _gunzipped(name: str) -> bytes:
    return gzip.decompress(_asset(name))


def add_routes(app: FastAPI) -> None:
    @app.get(PREFIX, include_in_schema=False)
    async def docs_page() -> Response:
        return HTMLResponse(PAGE, headers={"Cache-Control": "no-cache"})

    @app.get(STATIC + "{name}", include_in_schema=False)
    async def docs_asset(name: str, request: Request) -> Response:
        if name not in ASSETS:
            raise HTTPException(404, "Not Found")
        filename, content_type = ASSETS[name]
        headers = {"Cache-Control": "public, max-age=3600"}
        if not filename.endswith(".gz"):
            return Response(_asset(filename), media_type=content_type, headers=headers)
        headers["Vary"] = "Accept-Encoding"
        if "gzip" in request.headers.get("accept-encoding", ""):
            headers["Content-Encoding"] = "gzip"
            return Response(_asset(filename), media_type=content_type, headers=headers)
        return Response(_gunzipped(filename), media_type=content_type, headers=headers)
