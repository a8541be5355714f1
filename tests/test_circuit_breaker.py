"""The circuit breaker's states, on a clock the test moves (no sleeping)."""

from jobs.circuit_breaker import CircuitBreaker, CircuitConfig, CircuitState


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_and_a_probe_closes_it():
    clock = Clock()
    b = CircuitBreaker(CircuitConfig(failure_threshold=3, cooldown_s=60), clock)
    b.failed("boom")
    b.succeeded()  # a success in between resets the count
    for _ in range(2):
        b.failed("boom")
    assert b.state == CircuitState.closed and not b.refusing() and b.may_dispatch()
    b.failed("boom 3")
    assert b.state == CircuitState.open and b.refusing() and not b.may_dispatch()
    assert b.retry_after_s() == 60 and b.last_error == "boom 3"
    clock.now += 59.5
    assert b.refusing() and b.retry_after_s() == 1
    clock.now += 1
    assert not b.refusing()
    assert b.may_dispatch() and b.state == CircuitState.half_open  # the probe may go
    b.started()
    assert not b.may_dispatch()  # only one probe at a time
    b.succeeded()
    assert b.state == CircuitState.closed and b.failures == 0 and b.may_dispatch()


def test_a_failed_probe_reopens_for_a_full_cooldown_and_a_neutral_one_frees_the_slot():
    clock = Clock()
    b = CircuitBreaker(CircuitConfig(failure_threshold=1, cooldown_s=10), clock)
    b.failed("x")
    clock.now += 10
    assert b.may_dispatch()
    b.started()
    b.neutral()  # the probe was canceled: it says nothing; the next job probes
    assert b.state == CircuitState.half_open and b.may_dispatch()
    b.started()
    b.failed("y")
    assert b.state == CircuitState.open and b.refusing() and b.retry_after_s() == 10
