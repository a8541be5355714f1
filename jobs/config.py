"""Settings of the job domain, shared by the app's arguments (serve_app/app.py AppArgs) and the
router's config, so each is declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

#: Modes of what the service creates under its data folder: the jobs' prompts, uploads, results
#: and the webhook secret are the callers', so only the service's own user may read them.
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def make_private_dir(path: Path) -> Path:
    """Create folder ``path`` and each missing parent with mode 0700; folders that exist keep
    their mode (an operator's choice). Returns ``path``.

    Raises:
        OSError: a parent is not writable, or a file stands where a folder should.
    """
    target = Path(path)
    missing, folder = [], target
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for each in reversed(missing):
        each.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
    return target


class DataLayout(BaseModel):
    """Where the service keeps its state under one data folder (WAN_SERVE_DATA_DIR, default ./var)."""

    data_dir: Path = Field(description="The state folder, absolute.")

    @property
    def jobs_db(self) -> Path:
        """The SQLite job store (jobs and webhook records)."""
        return self.data_dir / "jobs.db"

    @property
    def outputs(self) -> Path:
        """Result files, written by the generators and served by the ingress."""
        return self.data_dir / "outputs"

    @property
    def inputs(self) -> Path:
        """Each job's decoded uploads, in a folder named by its id."""
        return self.data_dir / "inputs"

    @property
    def fit(self) -> Path:
        """Fit plans the generator replicas write for the router, ``<variant>.json``."""
        return self.data_dir / "fit"

    @property
    def webhook_secret(self) -> Path:
        """The webhook signing secret created at first start (when WAN_SERVE_WEBHOOK_SECRET is unset)."""
        return self.data_dir / "webhook_secret"


#: The most ``max_queued_jobs`` may be: a queue move's event id counts the places a job moved up
#: below the next stored event's (jobs/events.py EVENT_ID_SPAN).
MAX_QUEUED_JOBS = 999_999


class QueuePolicy(BaseModel):
    """How many jobs wait, how often one is tried, and what happens to jobs of a variant that cannot start."""

    max_queued_jobs: int = Field(
        default=64,
        ge=0,
        le=MAX_QUEUED_JOBS,
        description="Waiting jobs allowed before POST answers 429 (backpressure).",
    )
    max_attempts: int = Field(
        default=3,
        ge=1,
        description="Times a job may be dispatched: a job whose replica died, or that was running "
        "when the router restarted, goes back to the queue until it has run this many times, then ends with an error.",
    )
    when_unavailable: Literal["queue", "refuse"] = Field(
        default="queue",
        description="Jobs for a variant whose generator cannot start (e.g. missing or corrupt "
        "weights): queue (they are accepted and wait) or refuse (503 model_unavailable with the reason).",
    )


class RetentionPolicy(BaseModel):
    """How long ended jobs and their files are kept."""

    retention_days: float | None = Field(
        default=None,
        gt=0,
        description="Purge ended jobs (rows, files, inputs, webhook records) this many days after "
        "they end; default WAN_SERVE_RETENTION_DAYS / RETENTION_DAYS, else keep.",
    )
    max_output_gib: float | None = Field(
        default=None,
        gt=0,
        description="Cap on result files, GiB: the oldest are deleted beyond it (their jobs stay); "
        "default WAN_SERVE_MAX_OUTPUT_GIB, else none.",
    )
    purge_interval_s: float = Field(default=600.0, gt=0, description="Seconds between two retention purges.")

    @property
    def max_output_bytes(self) -> int | None:
        """``max_output_gib`` in bytes (GiB = 2**30 bytes), or None."""
        return int(self.max_output_gib * 2**30) if self.max_output_gib else None
