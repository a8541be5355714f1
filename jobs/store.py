"""The job store: every job, its status, progress and outcome. ``JobStore`` is the interface the
job engine uses; ``SqliteJobStore`` implements it over SQLite (WAL mode).

Only the router writes to it. A job's row exists before the API answers 202, so a
restarted router can reload its queue from here.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

from jobs.config import PRIVATE_FILE_MODE, make_private_dir
from jobs.model import JobRecord, JobSpec, JobStatus

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
CREATE TABLE IF NOT EXISTS variant_stats (
    variant          TEXT PRIMARY KEY,
    avg_job_seconds  REAL NOT NULL,
    samples          INTEGER NOT NULL
);
"""

#: Weight of the newest job in the moving average of job durations (exponential moving average).
ETA_EMA_ALPHA = 0.3


#: Columns added after the first release, with their types: added to an older jobs.db on open.
_ADDED_COLUMNS = {"idempotency_key": "TEXT", "request_hash": "TEXT", "owner": "TEXT"}


class JobStore(Protocol):
    """What the job engine needs of a job store. Every write is durable when the call returns."""

    def insert(
        self,
        spec: JobSpec,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        created_at: float | None = None,
    ) -> JobRecord: ...
    def get(self, job_id: str) -> JobRecord | None: ...
    def update(self, job_id: str, **fields: Any) -> JobRecord | None: ...
    def by_status(self, statuses: Iterable[JobStatus]) -> list[JobRecord]: ...
    def by_ids(self, ids: Iterable[str]) -> list[JobRecord]: ...
    def by_idempotency_key(self, key: str) -> JobRecord | None: ...
    def all(self) -> list[JobRecord]: ...
    def page(
        self, after: str | None, limit: int, descending: bool, owner: str | None = None
    ) -> tuple[list[JobRecord], bool]: ...
    def newest_with_prompt(self, prompt: str, owner: str | None = None) -> JobRecord | None: ...
    def filename_owner(self, filename: str) -> JobRecord | None: ...
    def videos(self, owner: str | None = None) -> list[JobRecord]: ...
    def videos_page(self, after: str | None, limit: int, owner: str | None = None) -> tuple[list[JobRecord], bool]: ...
    def submitted_since(self, since: float) -> list[tuple[str | None, float]]: ...
    def ended_before(self, cutoff: float) -> list[JobRecord]: ...
    def delete(self, ids: Iterable[str]) -> None: ...
    def avg_job_seconds(self, variant: str) -> float | None: ...
    def record_job_seconds(self, variant: str, seconds: float) -> None: ...
    def transaction(self) -> AbstractContextManager[Any]: ...
    def claim_lease(self) -> int: ...
    def holds_lease(self) -> bool: ...


class Fenced(RuntimeError):
    """A newer router holds the job store's lease: this one may no longer dispatch or write job state."""


class StoreHooks(Protocol):
    """Called around every write of a store (fault injection in tests and chaos drills).

    ``op`` is the write's name (``insert``, ``update``, ``delete``, ``record_job_seconds``, ...);
    ``fields`` what an update sets. Whatever ``before`` raises, the write does not happen;
    ``after`` runs once the write has committed (after the outermost transaction around it).
    """

    def before(self, op: str, fields: dict[str, Any]) -> None: ...

    def after(self, op: str, fields: dict[str, Any]) -> None: ...


class SqliteDatabase:
    """One SQLite connection (WAL, ``synchronous=FULL``) shared by the stores of one process,
    behind one re-entrant lock. ``synchronous=FULL`` so a committed job survives a power cut, not
    only a process crash. ``transaction()`` makes several writes, of any of its stores, one commit.

    Fencing: ``claim_lease()`` takes the lease for this process (a generation number); from then on
    every write first checks that no newer holder took it, and raises ``Fenced`` otherwise.
    """

    def __init__(self, path: Path, hooks: StoreHooks | None = None) -> None:
        path = Path(path)
        make_private_dir(path.parent)
        # SQLite creates its -wal and -shm files with the database file's mode.
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, PRIVATE_FILE_MODE))
        self.hooks = hooks
        self.generation: int | None = None
        self._depth = 0
        self._committed: list[tuple[str, dict[str, Any]]] = []  # writes whose ``after`` hook waits for the commit
        self._on_commit: list[Callable[[], object]] = []
        self.last_write_ok: float | None = None  # time.monotonic() of the last committed write
        self.lock = threading.RLock()
        self.connection = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.connection.row_factory = sqlite3.Row
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute("PRAGMA synchronous=FULL")
        self.connection.execute("PRAGMA busy_timeout=5000")

        self.connection.execute(
            "CREATE TABLE IF NOT EXISTS lease (id INTEGER PRIMARY KEY CHECK (id = 1), generation INTEGER NOT NULL)"
        )

    @contextmanager
    def cursor(self) -> Iterator[sqlite3.Connection]:
        """The connection, held under the lock, for reads (and writes outside ``write``'s checks)."""
        with self.lock:
            yield self.connection

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One commit for every write inside (nested: the outermost commits); rolled back on error."""
        with self.lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self.connection
                finally:
                    self._depth -= 1
                return
            self.connection.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self.connection
            except BaseException:
                self._depth, self._committed, self._on_commit = 0, [], []
                self.connection.execute("ROLLBACK")
                raise
            self._depth = 0
            self.connection.execute("COMMIT")
            committed, self._committed = self._committed, []
            callbacks, self._on_commit = self._on_commit, []
            if committed:
                self.last_write_ok = time.monotonic()
            if self.hooks is not None:
                for op, fields in committed:
                    self.hooks.after(op, fields)
            for callback in callbacks:
                callback()

    def on_commit(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` once the current transaction commits (now, outside one); never on a rollback."""
        with self.lock:
            if self._depth:
                self._on_commit.append(callback)
                return
        callback()

    @contextmanager
    def write(self, op: str, fields: dict[str, Any] | None = None) -> Iterator[sqlite3.Connection]:
        """A write: the hooks around it, the lease checked first, all in one transaction.

        Raises:
            Fenced: a newer holder took the lease.
        """
        fields = fields or {}
        if self.hooks is not None:
            self.hooks.before(op, fields)
        with self.transaction() as c:
            if self.generation is not None:
                row = c.execute("SELECT generation FROM lease WHERE id = 1").fetchone()
                if row is None or row[0] != self.generation:
                    raise Fenced(
                        f"the job store's lease moved to generation {row[0] if row else None}; "
                        f"this router holds {self.generation}"
                    )
            yield c
            self._committed.append((op, fields))  # ``after`` runs once the outermost transaction commits

    def claim_lease(self) -> int:
        """Take the lease: the next generation number, which fences every earlier holder."""
        with self.transaction() as c:
            row = c.execute(
                "INSERT INTO lease (id, generation) VALUES (1, 1) "
                "ON CONFLICT(id) DO UPDATE SET generation = generation + 1 RETURNING generation"
            ).fetchone()
        self.generation = int(row[0])
        return self.generation

    def holds_lease(self) -> bool:
        """Whether no newer holder took the lease (always true before ``claim_lease``)."""
        if self.generation is None:
            return True
        with self.cursor() as c:
            row = c.execute("SELECT generation FROM lease WHERE id = 1").fetchone()
        return row is not None and row[0] == self.generation

    def close(self) -> None:
        self.connection.close()


class SqliteJobStore:
    """``JobStore`` over SQLite. Thread-safe through the database's lock; every write is committed
    before returning.

    Args:
        db: a database file path, or a ``SqliteDatabase`` shared with other stores (webhooks).
    """

    def __init__(self, db: Path | str | SqliteDatabase, hooks: StoreHooks | None = None) -> None:
        self.db = db if isinstance(db, SqliteDatabase) else SqliteDatabase(Path(db), hooks)
        self._lock = self.db.lock
        self._db = self.db.connection
        self._db.executescript(_SCHEMA)
        present = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        for column, kind in _ADDED_COLUMNS.items():
            if column not in present:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")
        self._db.execute(
            "CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs(idempotency_key) "
            "WHERE idempotency_key IS NOT NULL"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS jobs_owner ON jobs(owner, seq)")

    def close(self) -> None:
        self.db.close()

    def transaction(self) -> AbstractContextManager[Any]:
        """Several writes (of this and the stores sharing its database) as one commit."""
        return self.db.transaction()

    def claim_lease(self) -> int:
        """Fence every earlier router (SqliteDatabase.claim_lease); returns this one's generation."""
        return self.db.claim_lease()

    def holds_lease(self) -> bool:
        return self.db.holds_lease()

    def _rows(self, rows: Iterable[sqlite3.Row]) -> list[JobRecord]:
        return [self._record(r) for r in rows]

    def _record(self, row: sqlite3.Row) -> JobRecord:
        data = dict(row)
        data["spec"] = JobSpec.model_validate_json(data["spec"])
        data["result"] = json.loads(data["result"]) if data["result"] else None
        return JobRecord.model_validate(data)

    def _row(self, row: sqlite3.Row | None) -> JobRecord | None:
        return self._record(row) if row is not None else None

    def insert(
        self,
        spec: JobSpec,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        created_at: float | None = None,
    ) -> JobRecord:
        """Add a queued job, submitted at ``created_at`` (Unix seconds; default now). Returns its
        record (with its FIFO ``seq``).

        Raises:
            sqlite3.IntegrityError: ``idempotency_key`` is already taken.
            Fenced: a newer router holds the lease.
        """
        with self.db.write("insert", {"id": spec.id}):
            self._db.execute(
                "INSERT INTO jobs (id, variant, prompt, spec, status, filename, total_steps, created_at, "
                "idempotency_key, request_hash, owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    spec.id,
                    spec.variant,
                    spec.params.prompt,
                    spec.model_dump_json(),
                    JobStatus.queued.value,
                    spec.filename,
                    spec.params.num_inference_steps,
                    created_at if created_at is not None else time.time(),
                    idempotency_key,
                    request_hash,
                    spec.owner,
                ),
            )
        rec = self.get(spec.id)
        assert rec is not None
        return rec

    def by_idempotency_key(self, key: str) -> JobRecord | None:
        with self._lock:
            return self._row(self._db.execute("SELECT * FROM jobs WHERE idempotency_key = ?", (key,)).fetchone())

    def ended_before(self, cutoff: float) -> list[JobRecord]:
        """Terminal jobs that finished before ``cutoff`` (Unix seconds), oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE status IN (?, ?, ?) AND finished_at < ? ORDER BY seq",
                (JobStatus.success.value, JobStatus.error.value, JobStatus.canceled.value, cutoff),
            ).fetchall()
        return self._rows(rows)

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            return self._row(self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def update(self, job_id: str, **fields: Any) -> JobRecord | None:
        """Set columns of one job and return the updated record in the same statement (None when
        there is no such job). ``status`` and ``phase`` may be enums, ``result`` a dict.

        Raises:
            Fenced: a newer router holds the lease.
        """
        if not fields:
            return self.get(job_id)
        for key in ("status", "phase"):
            if hasattr(fields.get(key), "value"):
                fields[key] = fields[key].value
        if isinstance(fields.get("result"), dict):
            fields["result"] = json.dumps(fields["result"])
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self.db.write("update", {"id": job_id, **fields}):
            row = self._db.execute(
                f"UPDATE jobs SET {cols} WHERE id = ? RETURNING *", (*fields.values(), job_id)
            ).fetchone()
        return self._row(row)

    def by_status(self, statuses: Iterable[JobStatus]) -> list[JobRecord]:
        """Jobs in any of ``statuses``, oldest first (FIFO order)."""
        values = [s.value for s in statuses]
        marks = ",".join("?" * len(values))
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY seq", values).fetchall()
        return self._rows(rows)

    def by_ids(self, ids: Iterable[str]) -> list[JobRecord]:
        ids = list(ids)
        marks = ",".join("?" * len(ids))
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM jobs WHERE id IN ({marks}) ORDER BY seq", ids).fetchall()
        return self._rows(rows)

    def all(self) -> list[JobRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs ORDER BY seq").fetchall()
        return self._rows(rows)

    def _keyset_page(
        self, conditions: list[str], args: list[Any], after: str | None, limit: int, descending: bool
    ) -> tuple[list[JobRecord], bool]:
        """Up to ``limit`` jobs meeting every SQL condition, in ``seq`` order, after job ``after``
        (which must meet them too). Raises KeyError for an unknown ``after``."""
        order, cmp = ("DESC", "<") if descending else ("ASC", ">")
        where = " AND ".join(conditions) or "1"
        with self._lock:
            if after is not None:
                row = self._db.execute(f"SELECT seq FROM jobs WHERE id = ? AND {where}", (after, *args)).fetchone()
                if row is None:
                    raise KeyError(after)
                conditions, args = [*conditions, f"seq {cmp} ?"], [*args, row[0]]
                where = " AND ".join(conditions)
            rows = self._db.execute(
                f"SELECT * FROM jobs WHERE {where} ORDER BY seq {order} LIMIT ?", [*args, limit + 1]
            ).fetchall()
        return self._rows(rows[:limit]), len(rows) > limit

    def page(
        self, after: str | None, limit: int, descending: bool, owner: str | None = None
    ) -> tuple[list[JobRecord], bool]:
        """Up to ``limit`` jobs (of ``owner`` only, unless None) in submission order (newest first
        when ``descending``), starting after job ``after``. Returns the jobs and whether more
        follow. Raises KeyError for an unknown ``after`` (or one of another owner)."""
        conditions, args = (["owner = ?"], [owner]) if owner is not None else ([], [])
        return self._keyset_page(conditions, args, after, limit, descending)

    def newest_with_prompt(self, prompt: str, owner: str | None = None) -> JobRecord | None:
        """The newest job with exactly ``prompt`` (of ``owner`` only, unless None)."""
        mine, args = ("AND owner = ?", [owner]) if owner is not None else ("", [])
        with self._lock:
            row = self._db.execute(
                f"SELECT * FROM jobs WHERE prompt = ? {mine} ORDER BY seq DESC LIMIT 1", (prompt, *args)
            ).fetchone()
        return self._row(row)

    def submitted_since(self, since: float) -> list[tuple[str | None, float]]:
        """(owner, created_at) of every job submitted at or after ``since`` (Unix seconds), oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT owner, created_at FROM jobs WHERE created_at >= ? ORDER BY seq", (since,)
            ).fetchall()
        return [(r[0], r[1]) for r in rows]

    def filename_owner(self, filename: str) -> JobRecord | None:
        """The job that owns ``filename`` (its file may be written, pending or deleted)."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM jobs WHERE filename = ? AND file_deleted = 0 AND status NOT IN (?, ?) "
                "ORDER BY seq DESC LIMIT 1",
                (filename, JobStatus.error.value, JobStatus.canceled.value),
            ).fetchone()
        return self._row(row)

    def videos(self, owner: str | None = None) -> list[JobRecord]:
        """Successful jobs (of ``owner`` only, unless None) whose file has not been deleted, oldest first."""
        mine, args = ("AND owner = ?", [owner]) if owner is not None else ("", [])
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM jobs WHERE status = ? AND file_deleted = 0 AND filename IS NOT NULL {mine} "
                "ORDER BY seq",
                (JobStatus.success.value, *args),
            ).fetchall()
        return self._rows(rows)

    def videos_page(self, after: str | None, limit: int, owner: str | None = None) -> tuple[list[JobRecord], bool]:
        """A page of ``videos(owner)``, oldest first, after job ``after``. Raises KeyError for an
        ``after`` that is not one of them."""
        conditions = ["status = ?", "file_deleted = 0", "filename IS NOT NULL"]
        args: list[Any] = [JobStatus.success.value]
        if owner is not None:
            conditions, args = [*conditions, "owner = ?"], [*args, owner]
        return self._keyset_page(conditions, args, after, limit, descending=False)

    def delete(self, ids: Iterable[str]) -> None:
        """Remove jobs (what refers to them, like webhook records, is removed by its own store)."""
        ids = list(ids)
        if not ids:
            return
        marks = ",".join("?" * len(ids))
        with self.db.write("delete", {"ids": ids}):
            self._db.execute(f"DELETE FROM jobs WHERE id IN ({marks})", ids)

    def avg_job_seconds(self, variant: str) -> float | None:
        """Moving average of recent job durations (dispatch to file written) for ``variant``, seconds."""
        with self._lock:
            row = self._db.execute("SELECT avg_job_seconds FROM variant_stats WHERE variant = ?", (variant,)).fetchone()
        return row[0] if row else None

    def record_job_seconds(self, variant: str, seconds: float) -> None:
        """Fold one finished job's duration into the variant's exponential moving average."""
        with self.db.write("record_job_seconds", {"variant": variant}):
            self._db.execute(
                "INSERT INTO variant_stats (variant, avg_job_seconds, samples) VALUES (?, ?, 1) "
                "ON CONFLICT(variant) DO UPDATE SET "
                "avg_job_seconds = avg_job_seconds * (1 - ?) + ? * ?, samples = samples + 1",
                (variant, seconds, ETA_EMA_ALPHA, ETA_EMA_ALPHA, seconds),
            )
