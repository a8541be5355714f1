"""What a failed generator call means for its job: hand it back, retry it, or end it with a code."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from jobs.errors import VARIANT_FAILURE_CODES, ReplicaFailed, ServiceError, unwrap


class FailureAction(str, Enum):
    hand_back = "hand_back"  #: a broken replica refused it before any work: requeue, no attempt spent
    retry = "retry"  #: the replica died or broke mid-job: requeue at the front, the attempt counts
    end = "end"  #: the job ends ``error`` with ``code``


@dataclass(frozen=True)
class Failure:
    """The decision about one failed run.

    Attributes:
        action: what happens to the job.
        code: the error code when it ends (jobs/errors.py), else None.
        message: for the caller (when it ends) and the log.
        variant_at_fault: True when it counts against the variant's circuit breaker, False when it
            says nothing about the variant, None for a hand-back (neither).
        reason: the short cause the circuit breaker keeps as its last error.
        replica_lost: the replica died or broke (worth a warning in the log).
        unexpected: not one of the service's own errors (worth the traceback in the log).
    """

    action: FailureAction
    code: str | None
    message: str
    variant_at_fault: bool | None
    reason: str = ""
    replica_lost: bool = False
    unexpected: bool = False

    def __post_init__(self) -> None:
        if not self.reason:
            object.__setattr__(self, "reason", self.message)


def classify_failure(
    exc: BaseException, *, replica_died: bool, attempts: int, max_attempts: int, variant: str
) -> Failure:
    """Decide what ``exc`` (what the generator call raised, possibly wrapped by Ray) means.

    Args:
        replica_died: the caller found the replica's process gone (Ray's actor-died error in the chain).
        attempts: dispatches of this job so far, this one included.
        max_attempts: the queue policy's limit.
        variant: the job's variant, named in messages.
    """
    inner = unwrap(exc)
    if isinstance(inner, ReplicaFailed) and inner.details.get("started") is False:
        return Failure(FailureAction.hand_back, None, inner.message, None)
    if isinstance(inner, ReplicaFailed) or replica_died:
        reason = inner.message if isinstance(inner, ReplicaFailed) else "the generator replica died"
        if attempts < max_attempts:
            return Failure(FailureAction.retry, None, reason, True, replica_lost=True)
        return Failure(
            FailureAction.end,
            ReplicaFailed.code,
            f"{reason}, on each of {attempts} attempts (max_attempts={max_attempts}); the operator "
            f"should check the {variant} replicas",
            True,
            reason,
            replica_lost=True,
        )
    if isinstance(inner, ServiceError):
        return Failure(FailureAction.end, inner.code, inner.message, inner.code in VARIANT_FAILURE_CODES)
    return Failure(
        FailureAction.end,
        ServiceError.code,
        f"generation failed ({type(inner).__name__}); the server log has details",
        True,
        unexpected=True,
    )
