"""Bounds on the live event streams (SSE and WebSocket) one ingress replica holds open: in all,
and per API key.

Each open stream holds one of the replica's ``max_ongoing_requests`` for as long as it lasts
(minutes, for a long job). Without a bound, a few hundred idle listeners would take every slot,
and status calls and ``/health`` would wait behind them. Past ``limit`` a new stream is refused
with 429 ``too_many_streams`` (WebSocket: closed with 1013, try again later). The bound per key
keeps one client's forgotten tabs from taking the others' share.
"""

from __future__ import annotations

from collections import Counter

from jobs.errors import ServiceError

#: Seconds a refused listener is told to wait (Retry-After): long enough for a few streams of
#: finishing jobs to close, short enough for a progress view to catch up.
STREAMS_RETRY_AFTER_S = 5.0


class TooManyStreams(ServiceError):
    """This ingress replica holds its limit of live event streams (HTTP 429 with Retry-After)."""

    code = "too_many_streams"


class StreamHold:
    """One open stream's slot; ``release()`` gives it back, once however often it is called."""

    def __init__(self, slots: StreamSlots, key: str | None) -> None:
        self._slots: StreamSlots | None = slots
        self._key = key

    def release(self) -> None:
        if self._slots is not None:
            self._slots.open -= 1
            self._slots.by_key[self._key] -= 1
            self._slots = None


class StreamSlots:
    """Counts the open streams of one replica (its event loop only: no lock needed).

    Args:
        limit: streams open at once.
        per_key: streams one API key (key id; None for the open service) holds open at once.
    """

    def __init__(self, limit: int, per_key: int | None = None) -> None:
        self.limit = limit
        self.per_key = per_key if per_key is not None else limit
        self.open = 0
        self.by_key: Counter[str | None] = Counter()

    def acquire(self, key: str | None = None) -> StreamHold:
        """A slot for a new stream of API key ``key``.

        Raises:
            TooManyStreams: ``limit`` streams are open, or ``per_key`` of this key's.
        """
        if self.open >= self.limit:
            raise TooManyStreams(
                f"this service holds its limit of {self.limit} live progress streams; retry in "
                f"{STREAMS_RETRY_AFTER_S:g} s, or poll GET /status/{{id}}",
                retry_after_s=STREAMS_RETRY_AFTER_S,
            )
        if key is not None and self.by_key[key] >= self.per_key:
            raise TooManyStreams(
                f"this API key holds its limit of {self.per_key} live progress streams; close one, retry in "
                f"{STREAMS_RETRY_AFTER_S:g} s, or poll GET /status/{{id}}",
                retry_after_s=STREAMS_RETRY_AFTER_S,
            )
        self.open += 1
        self.by_key[key] += 1
        return StreamHold(self, key)
