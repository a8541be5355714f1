"""Who is calling: the API key of each HTTP request and WebSocket, checked against the key store.

Auth is on once any key has been made (revoked ones count: revoking the last key must not reopen
the service), or whenever the service listens beyond loopback (then, with no live key, it refuses
to start: see ``check_listen``). Off, every request acts as the open service's caller
(jobs/ownership.py ``OPEN``), and ``/health`` says so.

Keys are looked up through the router (which holds the store) and remembered here for
``AUTH_CACHE_S``: a revoked key stops working within that time, and a flood of bad keys costs the
router one lookup per distinct key per period.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable
from typing import Any

from cachetools import TTLCache
from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from ray import serve
from starlette.requests import HTTPConnection

from auth.keys import key_digest
from jobs.errors import MissingApiKey, Unauthenticated
from jobs.ownership import OPEN, Caller

logger = logging.getLogger("ray.serve")

#: Seconds a key lookup (found or not) and the "do keys exist" answer are remembered per replica.
AUTH_CACHE_S = 5.0
#: Distinct keys remembered at once per replica (bad keys included).
AUTH_CACHE_SIZE = 10_000
#: Longest /health waits for the router's key count, seconds, before answering from what it knew.
HEALTH_WAIT_S = 0.5

#: The WebSocket subprotocol that carries a key from a browser, which cannot set headers on a
#: WebSocket: offer ``["wan-serve", "wan-serve.bearer.<key>"]``; the server answers "wan-serve".
WS_PROTOCOL = "wan-serve"
WS_BEARER_PREFIX = "wan-serve.bearer."

#: How to get a key, for the messages of 401 answers and of a refused start.
HOW_TO_GET_A_KEY = "an operator makes one with `wan-serve keys create --name NAME`"


class AuthRequired(RuntimeError):
    """The service would listen beyond loopback with no API key: it refuses to start."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or name Ray Serve's proxy listens on) is reachable only from
    this machine: a loopback address or ``localhost``. ``0.0.0.0`` and ``::`` are every address."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def check_listen(host: str, live_keys: int) -> None:
    """Refuse to serve beyond loopback without a live key.

    Raises:
        AuthRequired: ``host`` is not loopback and no API key is live.
    """
    if live_keys == 0 and not is_loopback(host):
        raise AuthRequired(
            f"wan-serve listens on {host}, beyond this machine, and has no API key, so anyone on the network "
            f"could use it. Make a key first (`wan-serve keys create --name admin --admin`, with the same "
            f"WAN_SERVE_DATA_DIR), or listen on 127.0.0.1."
        )


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    scheme, _, token = (header or "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class Authenticator:
    """Turns the key a request carries into its ``Caller``.

    Args:
        router: the router's handle (``authenticate`` and ``key_count``).
        listen_host: where Ray Serve's proxy listens; beyond loopback, keys are always required.
        keys_made: how many keys had been made (revoked included) at start.
        clock: monotonic seconds, for the cache.
    """

    def __init__(
        self, router: Any, listen_host: str, keys_made: int = 0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.router = router
        self.loopback = is_loopback(listen_host)
        self._callers: TTLCache[str, Caller | None] = TTLCache(AUTH_CACHE_SIZE, AUTH_CACHE_S, timer=clock)
        self._made: TTLCache[str, int] = TTLCache(1, AUTH_CACHE_S, timer=clock)
        self._last_made = keys_made
        self._refresh: asyncio.Future | None = None

    async def required(self) -> bool:
        """Whether requests need a key: a key was ever made, or the service listens beyond loopback."""
        if not self.loopback:
            return True
        made = self._made.get("n")
        if made is None:
            made = self._made["n"] = self._last_made = await self.router.key_count.remote(include_revoked=True)
        return made > 0

    async def required_soon(self, wait_s: float = HEALTH_WAIT_S) -> bool:
        """``required()``, waiting at most ``wait_s`` seconds on the router (for /health, which must
        answer while the router restarts): past that, what this replica last learned, while the
        lookup goes on in the background."""
        if not self.loopback:
            return True
        if "n" not in self._made:
            if self._refresh is None or self._refresh.done():
                self._refresh = asyncio.ensure_future(self.required())
                self._refresh.add_done_callback(lambda f: f.cancelled() or f.exception())  # failed: retried later
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._refresh), wait_s)
        return self._last_made > 0

    async def caller(self, token: str | None) -> Caller:
        """The caller of ``token`` (the bearer key), or ``OPEN`` while keys are not required.

        Raises:
            MissingApiKey: keys are required and none came.
            Unauthenticated: the key is unknown or revoked.
        """
        if not await self.required():
            return OPEN
        if token is None:
            raise MissingApiKey(
                f"this service needs an API key: send the header Authorization: Bearer <key> ({HOW_TO_GET_A_KEY})"
            )
        digest = key_digest(token)
        if digest in self._callers:
            found = self._callers[digest]
        else:
            found = self._callers[digest] = await self.router.authenticate.remote(digest)
        if found is None:
            raise Unauthenticated(
                f"the API key is not valid here: mistyped, revoked, or from another service ({HOW_TO_GET_A_KEY})"
            )
        return found


#: The OpenAPI security scheme of every route that needs a key (when auth is on).
bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="api_key",
    description=f"An API key (wsk_...): {HOW_TO_GET_A_KEY}. Not needed while the service runs open on loopback.",
)


def _authenticator() -> Authenticator:
    """The ingress replica's Authenticator (its ``auth``): Serve runs a copy of the FastAPI app,
    so the replica object, not ``app.state``, is where per-replica state lives."""
    return serve.get_replica_context().servable_object.auth


async def current_caller(credentials: HTTPAuthorizationCredentials | None = Security(bearer_scheme)) -> Caller:
    """FastAPI dependency: the request's caller (raises MissingApiKey or Unauthenticated, answered 401)."""
    return await _authenticator().caller(credentials.credentials if credentials else None)


async def optional_caller(request: Request) -> Caller | None:
    """The request's caller when it carries a valid key or none is needed; None otherwise (routes
    that answer less, not nothing, without one)."""
    try:
        return await _authenticator().caller(bearer_token(request.headers.get("authorization")))
    except Unauthenticated:
        return None


def websocket_token(conn: HTTPConnection) -> tuple[str | None, str | None]:
    """(the key a WebSocket handshake carries, the subprotocol to answer with): from the
    ``Authorization`` header, or from a ``wan-serve.bearer.<key>`` subprotocol (browsers)."""
    offered = conn.scope.get("subprotocols") or []
    answer = WS_PROTOCOL if WS_PROTOCOL in offered else None
    token = bearer_token(conn.headers.get("authorization"))
    for proto in offered:
        if token is None and proto.startswith(WS_BEARER_PREFIX):
            token = proto.removeprefix(WS_BEARER_PREFIX) or None
    return token, answer


async def websocket_caller(token: str | None) -> Caller:
    """The caller of a WebSocket's key. Raises as ``Authenticator.caller``."""
    return await _authenticator().caller(token)
