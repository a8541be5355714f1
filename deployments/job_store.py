"""The job store: every job, its status, progress and outcome, in SQLite (WAL mode).

Only the router writes to it. A job's row exists before the API answers 202, so a
restarted router can reload its queue from here.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterable

from pydantic import BaseModel, Field

from deployments.jobs import JobSpec, JobStatus

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,  -- FIFO order
    id             TEXT NOT NULL UNIQUE,
    variant        TEXT NOT NULL,
    prompt         TEXT NOT NULL,
    spec           TEXT NOT NULL,                       -- JobSpec as JSON
    status         TEXT NOT NULL,
    phase          TEXT,
    step           INTEGER NOT NULL DEFAULT 0,
    total_steps    INTEGER NOT NULL DEFAULT 0,
    step_seconds   REAL,
    gpu_id         TEXT,
    filename       TEXT,
    file_deleted   INTEGER NOT NULL DEFAULT 0,
    error_code     TEXT,
    error_message  TEXT,
    attempts       INTEGER NOT NULL DEFAULT 0,
    result         TEXT,                                -- JobResult as JSON
    created_at     REAL NOT NULL,
    started_at     REAL,
    finished_at    REAL,
    idempotency_key TEXT,                               -- the POST's Idempotency-Key header, if any
    request_hash    TEXT                                -- sha256 of the request it came with
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, seq);
CREATE INDEX IF NOT EXISTS jobs_prompt ON jobs(prompt, seq);
CREATE INDEX IF NOT EXISTS jobs_filename ON jobs(filename);
CREATE TABLE IF NOT EXISTS webhook_messages (
    id          TEXT PRIMARY KEY,                        -- webhook-id header, the same on every attempt
    job_id      TEXT NOT NULL,
    event_type  TEXT NOT NULL,
    payload     TEXT NOT NULL,                           -- the body, byte for byte as signed
    state       TEXT NOT NULL,                           -- pending | delivered | failed
    created_at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_messages_job ON webhook_messages(job_id, created_at);
CREATE INDEX IF NOT EXISTS webhook_messages_state ON webhook_messages(state);
CREATE TABLE IF NOT EXISTS webhook_attempts (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id       TEXT NOT NULL,
    job_id           TEXT NOT NULL,
    attempt          INTEGER NOT NULL,                   -- 1, 2, ...
    attempted_at     REAL NOT NULL,
    address          TEXT,                               -- the checked IP address it connected to
    status_code      INTEGER,                            -- the receiver's HTTP status, if it answered
    error            TEXT,                               -- why it was not delivered, if it was not
    duration_s       REAL,
    next_attempt_at  REAL                                -- when the retry is due; null when none follows
);
CREATE INDEX IF NOT EXISTS webhook_attempts_message ON webhook_attempts(message_id, attempt);
CREATE TABLE IF NOT EXISTS variant_stats (
    variant          TEXT PRIMARY KEY,
    avg_job_seconds  REAL NOT NULL,
    samples          INTEGER NOT NULL
);
"""

#: Weight of the newest job in the moving average of job durations (exponential moving average).
ETA_EMA_ALPHA = 0.3


class JobRecord(BaseModel):
    """One row of the jobs table. Times are Unix seconds."""

    seq: int
    id: str
    variant: str
    prompt: str
    spec: JobSpec
    status: JobStatus
    phase: str | None = None
    step: int = 0
    total_steps: int = 0
    step_seconds: float | None = Field(default=None, description="Mean denoising step time, seconds.")
    gpu_id: str | None = None
    filename: str | None = None
    file_deleted: bool = False
    error_code: str | None = None
    error_message: str | None = None
    attempts: int = 0
    result: dict | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None


#: Columns added after the first release, with their types: added to an older jobs.db on open.
_ADDED_COLUMNS = {"idempotency_key": "TEXT", "request_hash": "TEXT"}


class WebhookAttempt(BaseModel):
    """One try at delivering a webhook message. Times are Unix seconds."""

    attempt: int = Field(description="1 for the first try.")
    attempted_at: float
    address: str | None = Field(default=None, description="IP address connected to (after the SSRF check).")
    status_code: int | None = Field(default=None, description="The receiver's HTTP status, if it answered.")
    error: str | None = Field(default=None, description="Why this try did not deliver, if it did not.")
    duration_s: float | None = Field(default=None, description="Seconds from connect to the receiver's answer.")
    next_attempt_at: float | None = Field(default=None, description="When the retry is due; null when none follows.")


class WebhookMessage(BaseModel):
    """One webhook event of a job, with every delivery attempt."""

    id: str = Field(description="The webhook-id header: the same on every attempt, so receivers can deduplicate.")
    job_id: str
    event_type: str
    payload: str = Field(description="The JSON body exactly as signed.")
    state: str = Field(description="pending (being delivered or retried), delivered, or failed (gave up).")
    created_at: float
    attempts: list[WebhookAttempt] = Field(default_factory=list)


class JobStore:
    """SQLite-backed job table. Thread-safe through one lock; every write is committed before returning.

    ``synchronous=FULL`` so a committed job survives a power cut, not only a process crash.
    """

    def __init__(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        present = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        for column, kind in _ADDED_COLUMNS.items():
            if column not in present:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")
        self._db.execute("CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs(idempotency_key) "
                         "WHERE idempotency_key IS NOT NULL")

    def close(self) -> None:
        self._db.close()

    def _row(self, row: sqlite3.Row | None) -> JobRecord | None:
        if row is None:
            return None
        data = dict(row)
        data["spec"] = JobSpec.model_validate_json(data["spec"])
        data["result"] = json.loads(data["result"]) if data["result"] else None
        return JobRecord.model_validate(data)

    def insert(self, spec: JobSpec, idempotency_key: str | None = None, request_hash: str | None = None) -> JobRecord:
        """Add a queued job. Returns its record (with its FIFO ``seq``).

        Raises:
            sqlite3.IntegrityError: ``idempotency_key`` is already taken.
        """
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, variant, prompt, spec, status, filename, total_steps, created_at, "
                "idempotency_key, request_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (spec.id, spec.variant, spec.params.prompt, spec.model_dump_json(), JobStatus.queued.value,
                 spec.filename, spec.params.num_inference_steps, time.time(), idempotency_key, request_hash),
            )
        return self.get(spec.id)

    def by_idempotency_key(self, key: str) -> JobRecord | None:
        with self._lock:
            return self._row(self._db.execute("SELECT * FROM jobs WHERE idempotency_key = ?", (key,)).fetchone())

    def ended_before(self, cutoff: float) -> list[JobRecord]:
        """Terminal jobs that finished before ``cutoff`` (Unix seconds), oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE status IN (?, ?, ?) AND finished_at < ? ORDER BY seq",
                (JobStatus.success.value, JobStatus.error.value, JobStatus.canceled.value, cutoff)).fetchall()
        return [self._row(r) for r in rows]

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            return self._row(self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def update(self, job_id: str, **fields) -> None:
        """Set columns of one job; ``status`` may be a JobStatus, ``result`` a dict."""
        if not fields:
            return
        if isinstance(fields.get("status"), JobStatus):
            fields["status"] = fields["status"].value
        if isinstance(fields.get("result"), dict):
            fields["result"] = json.dumps(fields["result"])
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {cols} WHERE id = ?", (*fields.values(), job_id))

    def by_status(self, statuses: Iterable[JobStatus]) -> list[JobRecord]:
        """Jobs in any of ``statuses``, oldest first (FIFO order)."""
        values = [s.value for s in statuses]
        marks = ",".join("?" * len(values))
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY seq", values).fetchall()
        return [self._row(r) for r in rows]

    def by_ids(self, ids: Iterable[str]) -> list[JobRecord]:
        ids = list(ids)
        marks = ",".join("?" * len(ids))
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM jobs WHERE id IN ({marks}) ORDER BY seq", ids).fetchall()
        return [self._row(r) for r in rows]

    def all(self) -> list[JobRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs ORDER BY seq").fetchall()
        return [self._row(r) for r in rows]

    def page(self, after: str | None, limit: int, descending: bool) -> tuple[list[JobRecord], bool]:
        """Up to ``limit`` jobs in submission order (newest first when ``descending``), starting
        after job ``after``. Returns the jobs and whether more follow. Raises KeyError for an
        unknown ``after``."""
        order, cmp = ("DESC", "<") if descending else ("ASC", ">")
        with self._lock:
            start = None
            if after is not None:
                row = self._db.execute("SELECT seq FROM jobs WHERE id = ?", (after,)).fetchone()
                if row is None:
                    raise KeyError(after)
                start = row[0]
            where, args = (f"WHERE seq {cmp} ?", [start]) if start is not None else ("", [])
            rows = self._db.execute(f"SELECT * FROM jobs {where} ORDER BY seq {order} LIMIT ?",
                                    [*args, limit + 1]).fetchall()
        return [self._row(r) for r in rows[:limit]], len(rows) > limit

    def newest_with_prompt(self, prompt: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM jobs WHERE prompt = ? ORDER BY seq DESC LIMIT 1", (prompt,)
            ).fetchone()
        return self._row(row)

    def filename_owner(self, filename: str) -> JobRecord | None:
        """The job that owns ``filename`` (its file may be written, pending or deleted)."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM jobs WHERE filename = ? AND file_deleted = 0 AND status NOT IN (?, ?) "
                "ORDER BY seq DESC LIMIT 1",
                (filename, JobStatus.error.value, JobStatus.canceled.value),
            ).fetchone()
        return self._row(row)

    def videos(self) -> list[JobRecord]:
        """Successful jobs whose file has not been deleted, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE status = ? AND file_deleted = 0 AND filename IS NOT NULL ORDER BY seq",
                (JobStatus.success.value,),
            ).fetchall()
        return [self._row(r) for r in rows]

    def delete(self, ids: Iterable[str]) -> None:
        """Remove jobs and their webhook records."""
        ids = list(ids)
        if not ids:
            return
        marks = ",".join("?" * len(ids))
        with self._lock:
            for table, column in (("jobs", "id"), ("webhook_messages", "job_id"), ("webhook_attempts", "job_id")):
                self._db.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})", ids)

    # ---- webhooks ---------------------------------------------------------------------------

    def add_webhook_message(self, message_id: str, job_id: str, event_type: str, payload: str) -> None:
        """Record a webhook message as ``pending`` before its first attempt."""
        with self._lock:
            self._db.execute(
                "INSERT INTO webhook_messages (id, job_id, event_type, payload, state, created_at) "
                "VALUES (?, ?, ?, ?, 'pending', ?)", (message_id, job_id, event_type, payload, time.time()))

    def set_webhook_state(self, message_id: str, state: str) -> None:
        """Mark a message ``delivered`` or ``failed``."""
        with self._lock:
            self._db.execute("UPDATE webhook_messages SET state = ? WHERE id = ?", (state, message_id))

    def add_webhook_attempt(self, message_id: str, job_id: str, attempt: WebhookAttempt) -> int:
        """Record one delivery attempt; returns its row id (for ``set_next_attempt``)."""
        data = attempt.model_dump()
        cols = ", ".join(data)
        with self._lock:
            cur = self._db.execute(
                f"INSERT INTO webhook_attempts (message_id, job_id, {cols}) VALUES (?, ?, {','.join('?' * len(data))})",
                (message_id, job_id, *data.values()))
            return cur.lastrowid

    def set_next_attempt(self, row_id: int, at: float) -> None:
        with self._lock:
            self._db.execute("UPDATE webhook_attempts SET next_attempt_at = ? WHERE seq = ?", (at, row_id))

    def webhook_messages(self, job_id: str | None = None, state: str | None = None) -> list[WebhookMessage]:
        """Messages of one job (or of every job), oldest first, each with its attempts in order."""
        where, args = [], []
        if job_id is not None:
            where.append("job_id = ?")
            args.append(job_id)
        if state is not None:
            where.append("state = ?")
            args.append(state)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM webhook_messages {clause} ORDER BY created_at, rowid", args).fetchall()
            messages = [WebhookMessage(**dict(r)) for r in rows]
            for m in messages:
                attempts = self._db.execute(
                    "SELECT attempt, attempted_at, address, status_code, error, duration_s, next_attempt_at "
                    "FROM webhook_attempts WHERE message_id = ? ORDER BY attempt", (m.id,)).fetchall()
                m.attempts = [WebhookAttempt(**dict(a)) for a in attempts]
        return messages

    def avg_job_seconds(self, variant: str) -> float | None:
        """Moving average of recent job durations (dispatch to file written) for ``variant``, seconds."""
        with self._lock:
            row = self._db.execute("SELECT avg_job_seconds FROM variant_stats WHERE variant = ?", (variant,)).fetchone()
        return row[0] if row else None

    def record_job_seconds(self, variant: str, seconds: float) -> None:
        """Fold one finished job's duration into the variant's exponential moving average."""
        with self._lock:
            self._db.execute(
                "INSERT INTO variant_stats (variant, avg_job_seconds, samples) VALUES (?, ?, 1) "
                "ON CONFLICT(variant) DO UPDATE SET "
                "avg_job_seconds = avg_job_seconds * (1 - ?) + ? * ?, samples = samples + 1",
                (variant, seconds, ETA_EMA_ALPHA, ETA_EMA_ALPHA, seconds),
            )
