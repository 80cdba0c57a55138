"""The web dashboard (SPEC §16): `GET /ui/` and its two assets, from the package.

The page holds no data: it is served without a token (its routes are public in
`lobby.api.routes`), and every data call it makes carries the token itself. The files
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

from lobby.api.http import Response

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


def answer(asset: Asset, fresh: bool, if_none_match: bytes | None) -> Response:
    """`fresh`: asked by its versioned name (cached for a year), else revalidated."""
    headers = [
        (b"etag", asset.etag.encode()),
        (b"cache-control", (_IMMUTABLE if fresh else _REVALIDATE).encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
    ]
    if asset.content_type.startswith("text/html"):
        headers += [(b"content-security-policy", CSP.encode()), (b"x-frame-options", b"DENY")]
    if if_none_match == asset.etag.encode():
        return Response(304, headers)
    headers += [
        (b"content-length", b"%d" % len(asset.body)),
        (b"content-type", asset.content_type.encode()),
    ]
    return Response(200, headers, asset.body)
