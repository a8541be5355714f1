"""Error types of the service. Each carries a stable ``code``; serve_app/errors.py maps them to HTTP.

Messages are written for the caller: they say what is wrong and what to do, and never
contain a traceback or a server path.
"""

from __future__ import annotations

from collections.abc import Iterator


class ServiceError(Exception):
    """Base of every error a caller may see. ``code`` is stable; ``message`` is for humans.

    A ServiceError of this base class is an internal error (code ``internal``, HTTP 500).
    """

    code = "internal"

    def __init__(self, message: str, **details):
        super().__init__(message)
        self.message = message
        self.details = details

    def __reduce__(self):  # keep message and details across Ray's pickling
        return (_rebuild, (type(self), self.message, self.details))


def _rebuild(cls, message, details):
    return cls(message, **details)


class ValidationFailed(ServiceError):
    """The request is malformed or asks for something the variant cannot do (HTTP 422)."""

    code = "validation_error"


class InvalidMedia(ValidationFailed):
    """An uploaded image, video or mask cannot be used: undecodable, truncated, too large in
    pixels or frames, or not matching the other inputs (HTTP 422). ``details['field']`` names the upload."""


class UnsupportedMediaType(ValidationFailed):
    """An upload is a format the service does not take, e.g. a GIF, TIFF or SVG image (HTTP 415)."""

    code = "unsupported_media_type"


class UploadTooLarge(ValidationFailed):
    """An uploaded file is larger than the variant's ``limits.max_upload_bytes`` (HTTP 413)."""

    code = "payload_too_large"


class RequestTooLarge(ValidationFailed):
    """The request's size and frames would not fit the memory of the variant's replicas, by the fit
    check's estimate (model_store/fit_check.py); the message says what would fit (HTTP 422)."""

    code = "request_too_large"


class QueueFull(ServiceError):
    """More than ``max_queued_jobs`` are waiting; ``details['retry_after_s']`` says when to retry (HTTP 429)."""

    code = "queue_full"


class QuotaExceeded(ServiceError):
    """An API key is over one of its quotas (HTTP 429 with Retry-After; ``limit`` names which)."""

    code = "quota_exceeded"


class Unauthenticated(ServiceError):
    """The request carries no valid API key while the service requires one (HTTP 401)."""

    code = "invalid_api_key"


class MissingApiKey(Unauthenticated):
    """No ``Authorization: Bearer`` key at all (HTTP 401)."""

    code = "missing_api_key"


class VariantNotDeployed(ServiceError):
    """The request names a variant that this application does not serve (HTTP 404)."""

    code = "variant_not_found"


class AdapterNotDeployed(ServiceError):
    """The request names a LoRA adapter the model store does not have for its variant (HTTP 404)."""

    code = "adapter_not_found"


class JobNotFound(ServiceError):
    """No job with this id, or no job matching a lookup (HTTP 404)."""

    code = "job_not_found"


class FileNotFoundForJob(ServiceError):
    """The file is not one this service wrote, or it was deleted (HTTP 404)."""

    code = "file_not_found"


class FilenameTaken(ServiceError):
    """Another job already owns this output filename (HTTP 409)."""

    code = "filename_conflict"


class ModelUnavailable(ServiceError):
    """The variant's generator cannot run jobs now (HTTP 503)."""

    code = "model_unavailable"


class OutOfMemory(ServiceError):
    """The device ran out of memory during the job (torch.OutOfMemoryError). The replica frees
    what the job held and keeps serving; the message lists what would fit."""

    code = "out_of_memory"


class JobTimeout(ServiceError):
    """A phase of the job (generate, encode) ran past its limit in the variant's ``timeouts``."""

    code = "timeout"


class DiskFull(ServiceError):
    """The result file could not be written: no space left on the device."""

    code = "disk_full"


class ReplicaFailed(ServiceError):
    """The generator replica running the job died or became unusable; the job is retried within
    ``max_attempts``, then ends with this error (code ``model_unavailable``)."""

    code = "model_unavailable"


class IdempotencyConflict(ServiceError):
    """An Idempotency-Key was reused with a different request (HTTP 409)."""

    code = "idempotency_conflict"


class JobFailed(ServiceError):
    """A job the caller waited for (the synchronous /v1/images routes) ended in error or was
    canceled (HTTP 422: the request was fine, the job gave no result, and a retry of the same
    request would make a new job). ``details`` carry ``job_id`` and the job's ``job_error_code``."""

    code = "job_failed"


class JobCanceled(ServiceError):
    """Raised inside a generation when its job was canceled; stops work before the next step."""

    code = "canceled"


#: Links followed through an exception's causes: Ray wraps a replica's exception once or twice
#: (RayTaskError, then the handle's own error); more than this is a loop or not ours.
MAX_CHAIN = 8


def exception_chain(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc``, then what it wraps: Ray's ``cause`` attribute, else ``__cause__``; at most MAX_CHAIN."""
    for _ in range(MAX_CHAIN):
        if exc is None:
            return
        yield exc
        exc = getattr(exc, "cause", None) or exc.__cause__


def unwrap(exc: BaseException) -> BaseException:
    """The ServiceError behind a wrapped exception (Ray wraps exceptions raised in replicas), else ``exc``."""
    return next((e for e in exception_chain(exc) if isinstance(e, ServiceError)), exc)


#: Error codes that say the variant, not the request, failed: they count toward its circuit breaker.
VARIANT_FAILURE_CODES = frozenset({ServiceError.code, ModelUnavailable.code, DiskFull.code})
