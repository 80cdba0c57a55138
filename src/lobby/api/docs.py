"""GET /docs: Swagger UI served from the package, so it works offline (SPEC §14.3).

Swagger UI is usually loaded from a CDN (blank without internet); this page's assets
lobbyd serves itself from `lobby/api/swagger/` (see its README: swagger-ui-dist,
stored gzipped, sent as they are to browsers that accept gzip).

With TOKEN set, the page and its assets need no token: they are the same static
files for everyone and tell nothing about the cluster. `/openapi.json` and every
API route stay protected: the page asks for the token when the document answers
403, keeps it in the tab's sessionStorage (never in a URL), and Swagger UI sends it
with every request it makes, "Try it out" included (`swagger/docs.js`).
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Final

from lobby.api.http import Response

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


@cache
def _asset(name: str) -> bytes:
    return resources.files("lobby.api").joinpath("swagger", name).read_bytes()


@cache
def _gunzipped(name: str) -> bytes:
    import gzip  # for the rare client that takes no gzip: not imported before

    return gzip.decompress(_asset(name))


def page() -> Response:
    body = PAGE.encode()
    return Response(
        200,
        [
            (b"cache-control", b"no-cache"),
            (b"content-length", b"%d" % len(body)),
            (b"content-type", b"text/html; charset=utf-8"),
        ],
        body,
    )


def asset(name: str, gzip_ok: bool) -> Response:
    """One of ASSETS (the route admits no other name); stored gzipped ones are sent as
    they are to a client that accepts gzip."""
    filename, content_type = ASSETS[name]
    headers = [(b"cache-control", b"public, max-age=3600")]
    if not filename.endswith(".gz"):
        body = _asset(filename)
    else:
        headers.append((b"vary", b"Accept-Encoding"))
        if gzip_ok:
            headers.append((b"content-encoding", b"gzip"))
            body = _asset(filename)
        else:
            body = _gunzipped(filename)
    headers += [(b"content-length", b"%d" % len(body)), (b"content-type", content_type.encode())]
    return Response(200, headers, body)
