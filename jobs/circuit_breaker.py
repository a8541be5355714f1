"""A circuit breaker per variant: after ``failure_threshold`` consecutive failed jobs, stop sending
that variant work for ``cooldown_s``; then one probe job decides whether it closes.

The pattern is Nygard's (Release It!, 2007): closed -> open on repeated failure -> half-open
after a cooldown, where one trial call closes it again or reopens it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from enum import Enum

from pydantic import BaseModel, Field


class CircuitConfig(BaseModel):
    """Circuit breaker settings, the same for every variant (app args: ``circuit_breaker``)."""

    failure_threshold: int = Field(
        default=5,
        ge=1,
        description="Consecutive failed jobs of a variant (internal errors, replica failures, "
        "full disk; not a request's own timeout or out-of-memory) that open its circuit.",
    )
    cooldown_s: float = Field(
        default=60.0, gt=0, description="Seconds an open circuit refuses new jobs before a probe."
    )


class CircuitState(str, Enum):
    closed = "closed"
    open = "open"
    half_open = "half_open"


class CircuitBreaker:
    """One variant's breaker. Not thread-safe: the router's event loop is its only user."""

    def __init__(self, config: CircuitConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.state = CircuitState.closed
        self.failures = 0
        self.opened_at = 0.0
        self.probe_running = False
        self.last_error: str | None = None

    def refusing(self) -> bool:
        """True while open and cooling down: new jobs get 503 with ``retry_after_s``."""
        return self.state == CircuitState.open and self.clock() < self.opened_at + self.config.cooldown_s

    def retry_after_s(self) -> int:
        """Whole seconds until the cooldown ends (at least 1)."""
        return max(math.ceil(self.opened_at + self.config.cooldown_s - self.clock()), 1)

    def may_dispatch(self) -> bool:
        """Whether a queued job of this variant may start now; the first after a cooldown is the probe."""
        if self.state == CircuitState.closed:
            return True
        if self.state == CircuitState.open and not self.refusing():
            self.state = CircuitState.half_open
        return self.state == CircuitState.half_open and not self.probe_running

    def started(self) -> None:
        """A job was dispatched (after ``may_dispatch``)."""
        if self.state == CircuitState.half_open:
            self.probe_running = True

    def succeeded(self) -> None:
        self.state, self.failures, self.probe_running, self.last_error = CircuitState.closed, 0, False, None

    def failed(self, reason: str) -> None:
        """A job failed in a way that says the variant, not the request, is at fault."""
        self.failures += 1
        self.last_error = reason
        if self.state == CircuitState.half_open or self.failures >= self.config.failure_threshold:
            self.state, self.opened_at, self.probe_running = CircuitState.open, self.clock(), False

    def neutral(self) -> None:
        """A job ended in a way that says nothing about the variant (canceled, bad request): a probe
        that ends so leaves the breaker half-open for the next job."""
        if self.state == CircuitState.half_open:
            self.probe_running = False
