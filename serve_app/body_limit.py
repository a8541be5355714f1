"""A bound on request bodies, enforced while they stream in, before they are buffered.

Ray Serve's HTTP proxy reads a request body from the client as fast as it comes, into a queue
with no bound, and the ingress replica pulls it from there in batches; so a bound checked only in
the ingress comes after the proxy holds what the client managed to send (about 200 MB on
loopback, measured by tests/test_request_bodies.py). The same middleware therefore runs twice:

- in the proxy (``proxy_middlewares``, which Ray Serve loads from the environment variable
  ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=serve_app.body_limit:proxy_middlewares``, set by
  ``make serve`` and the tests): it sees the body as uvicorn reads it
  from the socket, whose flow control holds the client back while nobody reads;
- in the ingress app, so the bound holds even where the proxy was started without it.

A body whose ``Content-Length`` is over the bound gets 413 before any of it is read. Otherwise the
bytes are counted as they are read; past the bound, 413 (``payload_too_large``) and the rest is not
read. Bounds (bytes): JSON and urlencoded bodies ``MAX_JSON_BYTES``; multipart bodies, which carry
the uploads, ``WAN_SERVE_MAX_REQUEST_BYTES`` (serve_app/settings.py). Inside a multipart body each
text field is bounded by ``MAX_FIELD_BYTES`` (serve_app/request_body.py) and each file by its
variant's ``max_upload_bytes``.
"""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobs.errors import UploadTooLarge
from serve_app.errors import error_response
from serve_app.settings import ServiceSettings

#: Largest JSON (or urlencoded) body, bytes: a job's fields are two prompts of at most 10,000
#: characters, a URL and a few numbers, far below 1 MiB.
MAX_JSON_BYTES = 2**20

#: The value of RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH that puts the bound in Ray Serve's proxy.
PROXY_CALLBACK = "serve_app.body_limit:proxy_middlewares"


def _mib(n: int) -> str:
    return f"{n / 2**20:g} MiB"


class BodyLimit:
    """ASGI middleware: HTTP request bodies over their bound get 413 ``payload_too_large``.

    Args:
        app: the ASGI app it wraps.
        max_multipart: the bound of multipart bodies, bytes; default WAN_SERVE_MAX_REQUEST_BYTES.
        answer_overflow: past the bound, answer 413 itself and tell the app the client left (in
            the proxy, whose app forwards the body elsewhere); else raise ``UploadTooLarge`` from
            the read, which the app's error handlers answer (in the ingress).
    """

    def __init__(self, app: ASGIApp, max_multipart: int | None = None, answer_overflow: bool = False) -> None:
        self.app = app
        self.max_multipart = max_multipart or ServiceSettings().max_request_bytes
        self.answer_overflow = answer_overflow

    def _bound(self, headers: dict[bytes, bytes]) -> int:
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        return self.max_multipart if content_type == b"multipart/form-data" else MAX_JSON_BYTES

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        bound = self._bound(headers)
        refusal = UploadTooLarge(
            f"the request body is over {_mib(bound)}, the most this service takes for "
            f"{'multipart uploads' if bound != MAX_JSON_BYTES else 'JSON'}; send smaller files",
            field="body",
        )
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > bound:
            await self._refuse(refusal, scope, receive, send)
            return
        received, refused, started = 0, False, False

        async def counted() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > bound:
                    if not self.answer_overflow:
                        raise refusal
                    refused = True
                    if not started:
                        await self._refuse(refusal, scope, receive, send)
                    return {"type": "http.disconnect"}  # the app stops reading; nothing more is read
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 went out; whatever the app answers after the "disconnect" is dropped
            started = True
            await send(message)

        await self.app(scope, counted, guarded)

    @staticmethod
    async def _refuse(refusal: UploadTooLarge, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(refusal)
        response.headers["Connection"] = "close"  # the rest of the body is not read
        await response(scope, receive, send)


def proxy_middlewares() -> list[Middleware]:
    """Ray Serve's proxy callback (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH): the body bound."""
    return [Middleware(BodyLimit, answer_overflow=True)]
