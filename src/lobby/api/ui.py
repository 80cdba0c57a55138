"""The web dashboard (SPEC §16): `GET /ui/` and its two assets, from the package.

The page holds no data: it is served without a token (the Guard lets `/ui` through
for GET and HEAD), and every data call it makes carries the token itself. The files
are read once, at start. `index.html` names its assets with a content hash
(`app.js?v=1a2b3c4d`), so the assets are cached for a year and the page is
revalidated on every load (ETag, 304), and a new lobbyd never serves a stale script.
The Content-Security-Policy allows only this origin: no inline script, no CDN.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Final

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response

from lobby.api.auth import UI_PREFIX

PREFIX: Final = UI_PREFIX
ASSETS: Final = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_IMMUTABLE: Final = "public, max-age=31536000, immutable"
_REVALIDATE: Final = "no-cache"


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str
    version: str


def _asset(body: bytes, content_type: str) -> Asset:
    digest = hashlib.sha256(body).hexdigest()
    return Asset(body, content_type, f'"{digest[:20]}"', digest[:10])


def load() -> dict[str, Asset]:
    """index.html (with versioned asset names) and the assets, from the package."""
    files = resources.files("lobby") / "ui"
    assets = {
        name: _asset(files.joinpath(name).read_bytes(), kind) for name, kind in ASSETS.items()
    }
    page = files.joinpath("index.html").read_text("utf-8")
    for name, asset in assets.items():
        page = page.replace(f'"{name}"', f'"{name}?v={asset.version}"')
    assets["index.html"] = _asset(page.encode(), "text/html; charset=utf-8")
    return assets


def _answer(request: Request, asset: Asset, cache: str) -> Response:
    headers = {
        "ETag": asset.etag,
        "Cache-Control": cache,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    if asset.content_type.startswith("text/html"):
        headers["Content-Security-Policy"] = CSP
        headers["X-Frame-Options"] = "DENY"
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.content_type, headers=headers)


def add_routes(app: FastAPI) -> None:
    """GET /ui (redirect), /ui/ (the page), /ui/app.js and /ui/app.css; nothing else."""
    assets = load()

    @app.get(PREFIX, include_in_schema=False)
    async def ui_redirect() -> Response:
        return RedirectResponse(PREFIX + "/", status_code=308)

    @app.get(PREFIX + "/", include_in_schema=False)
    async def ui_page(request: Request) -> Response:
        return _answer(request, assets["index.html"], _REVALIDATE)

    async def ui_asset(request: Request) -> Response:
        name = request.url.path.removeprefix(PREFIX + "/")
        asset = assets[name]
        fresh = request.query_params.get("v") == asset.version
        return _answer(request, asset, _IMMUTABLE if fresh else _REVALIDATE)

    for name in ASSETS:
        app.add_api_route(f"{PREFIX}/{name}", ui_asset, methods=["GET"], include_in_schema=False)
