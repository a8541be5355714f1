"""Which job a log line belongs to: every log record made while a job is being worked on (its
router task, its generator thread) carries ``wan_job_id`` and ``variant`` attributes. Ray Serve's
JSON logs (``logging_config: {encoding: JSON}``) write a record's extra attributes as fields, so
each of a job's lines can be found by its id; the text format leaves them out. Not ``job_id``:
Ray's logging context owns that name (the Ray job's id) and drops other values of it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

#: (job id, variant) of the job the current task or thread works on.
_JOB: ContextVar[tuple[str, str] | None] = ContextVar("wan_serve_job", default=None)


@contextmanager
def job_context(job_id: str, variant: str) -> Iterator[None]:
    """Log records made inside (in this task or thread, and tasks it starts) name the job."""
    token = _JOB.set((job_id, variant))
    try:
        yield
    finally:
        _JOB.reset(token)


def install_job_fields() -> None:
    """Wrap this process's log record factory (once) so records made in a ``job_context`` get
    ``wan_job_id`` and ``variant``."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "wan_serve_job_fields", False):
        return

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        job = _JOB.get()
        if job is not None:
            record.wan_job_id, record.variant = job
        return record

    factory.wan_serve_job_fields = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
