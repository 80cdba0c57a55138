"""Broker URLs: checking NATS_URL at start, and showing URLs without their secrets.

Kept apart (and free of imports from lobby) so that the settings (lobby.config) can
refuse a malformed NATS_URL at start and the NATS driver can log the same URLs
without their passwords.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import urlsplit, urlunsplit

NATS_SCHEMES: Final = ("nats", "tls", "ws", "wss")


def redact(url: str) -> str:
    """The URL without its password or token, for logs."""
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    if parts.username is None and parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]  # as written: keeps an IPv6 address's brackets
    # nats://TOKEN@host: nats-py sends a user part without a password as the auth token
    userinfo = "***" if parts.password is None else f"{parts.username}:***"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}"))


def redact_all(urls: str) -> str:
    """A comma-separated list of URLs (NATS_URL), each without its password or token."""
    return ",".join(redact(url.strip()) if url.strip() else url for url in urls.split(","))


# scheme://userinfo@ anywhere in a text (a command line, a check): up to the last @
# before the authority ends (as urlsplit reads it: a password may hold a raw @)
_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)([^\s/?#\[\]'\"]*)@")


def redact_text(text: str) -> str:
    """`text` with the password of every scheme://user:password@ in it hidden (a user
    alone is shown, as an http check's is; NATS_URL's token is `redact`'s business)."""

    def hide(match: re.Match[str]) -> str:
        user, colon, _ = match[2].partition(":")
        return f"{match[1]}{user}:***@" if colon else match[0]

    return _USERINFO.sub(hide, text)


def nats_url_problem(url: str) -> str | None:
    """What is wrong with one NATS server URL, or None when nats-py can use it.

    `nats://`, `tls://`, `ws://` or `wss://` with a host and an optional port 1-65535.
    Like nats-py, `HOST:PORT` without a scheme means `nats://HOST:PORT`; a bare word
    (`garbage`) is refused rather than tried as a host name forever.
    """
    bare = "://" not in url
    try:
        parts = urlsplit(f"nats://{url}" if bare else url)
        port = parts.port
    except ValueError:
        return "a bad port (expected 1-65535)"
    if parts.scheme.lower() not in NATS_SCHEMES:
        return f"scheme {parts.scheme + '://'!r} (expected nats://, tls://, ws:// or wss://)"
    if not parts.hostname:
        return "no host"
    if port == 0:
        return "a bad port (expected 1-65535)"
    if bare and port is None:
        return "no scheme (expected nats://HOST[:PORT])"
    return None


def nats_urls_problem(text: str) -> str | None:
    """`nats_url_problem` of the first bad URL of a comma-separated list, naming it."""
    urls = [url.strip() for url in text.split(",") if url.strip()]
    for url in urls:
        problem = nats_url_problem(url)
        if problem is not None:
            return f"{redact(url)!r} has {problem}"
    return None
