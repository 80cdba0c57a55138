"""The few response shapes the HTTP layer builds by hand, written once.

Plain ASGI messages are used where a middleware answers before the framework runs
(token check, body limit, blocking-query errors) and by the fast path; routes use
`json_response`. Nothing here imports the framework until a route needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from starlette.responses import Response
    from starlette.types import Message, Send
else:
    Message = Send = Any

JSON_TYPE: Final = "application/json; charset=UTF-8"
TEXT_TYPE: Final = "text/plain; charset=utf-8"
# Go's echo answers a failed token check with JSONPretty(" "): one-space indent.
DENIED: Final = b'{\n "message": "access denied"\n}\n'


def json_response(body: bytes, status: int = 200) -> Response:
    from starlette.responses import Response

    return Response(body, status_code=status, media_type=JSON_TYPE)


def messages(status: int, body: bytes, content_type: str = TEXT_TYPE) -> tuple[Message, Message]:
    """The two ASGI messages of a complete answer."""
    return (
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        },
        {"type": "http.response.body", "body": body},
    )


async def send_plain(send: Send, status: int, text: str) -> None:
    """A plain-text answer (one line, newline added)."""
    for message in messages(status, (text + "\n").encode()):
        await send(message)


async def send_denied(send: Send) -> None:
    for message in messages(403, DENIED, JSON_TYPE):
        await send(message)
