"""A bound on request bodies, enforced while they stream in, before anything is buffered.

Ray Serve's proxy reads a body from the client as fast as it comes and the ingress pulls it in
batches, so a bound applied after ``await request.body()`` would come after the whole body sat in
memory twice. This ASGI middleware refuses a body from its ``Content-Length`` when that is over
the bound (413 before a byte of it is read), and otherwise counts the chunks as the app reads
them and fails the read once the count passes the bound (chunked bodies, or a client that lies).

Bounds (bytes): JSON and urlencoded bodies ``MAX_JSON_BYTES``; multipart bodies the ingress's
``max_request_bytes`` (AppArgs), since they carry the uploads. Inside a multipart body each text
field is bounded by ``MAX_FIELD_BYTES`` and each file by its variant's ``max_upload_bytes``
(serve_app/request_body.py).
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobs.errors import UploadTooLarge
from serve_app.errors import error_response

#: Largest JSON (or urlencoded) body, bytes: a job's fields are two prompts of at most 10,000
#: characters, a URL and a few numbers, far below 1 MiB.
MAX_JSON_BYTES = 2**20

#: Default bound of a multipart body, bytes: one video at the default max_upload_bytes (256 MiB)
#: with a mask, images and the fields beside it.
DEFAULT_MAX_REQUEST_BYTES = 300 * 2**20


def _mib(n: int) -> str:
    return f"{n / 2**20:g} MiB"


class BodyLimit:
    """ASGI middleware: HTTP request bodies over their bound get 413 ``payload_too_large``.

    Args:
        app: the ASGI app it wraps.
        max_multipart: the bound of multipart bodies (bytes), read per request (the ingress
            replica's setting, which exists only once the replica runs).
    """

    def __init__(self, app: ASGIApp, max_multipart: Callable[[], int]) -> None:
        self.app = app
        self.max_multipart = max_multipart

    def _bound(self, scope: Scope) -> int:
        content_type = dict(scope.get("headers") or []).get(b"content-type", b"").split(b";")[0].strip().lower()
        return self.max_multipart() if content_type == b"multipart/form-data" else MAX_JSON_BYTES

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        bound = self._bound(scope)
        refusal = UploadTooLarge(
            f"the request body is over {_mib(bound)}, the most this service takes "
            f"({'multipart uploads' if bound != MAX_JSON_BYTES else 'JSON and form fields'}); send smaller files",
            field="body",
        )
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > bound:
            response = error_response(refusal)
            response.headers["Connection"] = "close"  # the rest of the body is not read
            await response(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > bound:
                    raise refusal
            return message

        await self.app(scope, counted, send)
