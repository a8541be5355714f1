"""The job store: every job, its status, progress and outcome. ``JobStore`` is the interface the
job engine uses; ``SqlJobStore`` implements it over the job store's database (jobs/database.py:
a SQLite file or PostgreSQL).

Only the router writes to it. A job's row exists before the API answers 202, so a
restarted router can reload its queue from here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import bindparam, column, text

from jobs.database import Database, Fenced, StoreHooks, sql_text
from jobs.events import EVENT_ID_SPAN, JobEvent
from jobs.model import JobRecord, JobSpec, JobStatus

__all__ = ["ETA_EMA_ALPHA", "Database", "Fenced", "JobForView", "JobStore", "SqlJobStore", "StoreHooks"]

#: Weight of the newest job in the moving average of job durations (exponential moving average).
ETA_EMA_ALPHA = 0.3

#: Terminal statuses, as stored.
_TERMINAL = (JobStatus.success.value, JobStatus.error.value, JobStatus.canceled.value)

#: The jobs table's columns: JobRecord's fields, one each.
_JOB_COLUMNS = tuple(JobRecord.model_fields)
#: What a view needs beyond the job's row: its rank in its own queue lane and its variant's
#: rotation size (queued jobs only), its variant's average job, and a running job of its variant
#: (one row per running job, for a queued job only).
_FOR_VIEW_COLUMNS = (
    "q_avg",
    "q_rank",
    "q_rotating",
    "r_id",
    "r_started_at",
    "r_step",
    "r_total_steps",
    "r_step_seconds",
)
#: The one query of ``SqlJobStore.get_for_view``. The rank's two forms keep the owner comparison
#: indexable (jobs_queue). Its result columns are declared, so SQLAlchemy caches their handling
#: instead of working it out from the cursor on every call (half the cost of a status read).
_GET_FOR_VIEW = text(
    "SELECT " + ", ".join(f"j.{name}" for name in _JOB_COLUMNS) + ", s.avg_job_seconds AS q_avg, "
    "CASE WHEN j.status = :queued THEN CASE WHEN j.owner IS NULL "
    "THEN (SELECT COUNT(*) FROM jobs q WHERE q.status = :queued AND q.variant = j.variant "
    "AND q.owner IS NULL AND q.seq <= j.seq) "
    "ELSE (SELECT COUNT(*) FROM jobs q WHERE q.status = :queued AND q.variant = j.variant "
    "AND q.owner = j.owner AND q.seq <= j.seq) END END AS q_rank, "
    "CASE WHEN j.status = :queued THEN (SELECT COUNT(*) FROM queue_rotation t WHERE t.variant = j.variant) "
    "END AS q_rotating, "
    "r.id AS r_id, r.started_at AS r_started_at, r.step AS r_step, r.total_steps AS r_total_steps, "
    "r.step_seconds AS r_step_seconds "
    "FROM jobs j LEFT JOIN variant_stats s ON s.variant = j.variant "
    "LEFT JOIN jobs r ON j.status = :queued AND r.status = :running AND r.variant = j.variant "
    "WHERE j.id = :id"
).columns(*(column(name) for name in _JOB_COLUMNS + _FOR_VIEW_COLUMNS))


@dataclass(frozen=True)
class JobForView:
    """A job and what its view needs beyond its record (SqlJobStore.get_for_view)."""

    record: JobRecord
    queue_position: int | None  #: 1 = next of its variant; None unless queued
    avg_job_s: float | None  #: its variant's average job duration, seconds (avg_job_seconds)
    running: list[tuple[float | None, int, int, float | None]]  #: running_progress of its variant, if queued


class JobStore(Protocol):
    """What the job engine needs from a job store."""

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
    def append_event(self, job_id: str, event: JobEvent) -> JobEvent: ...
    def last_event(self, job_id: str) -> JobEvent | None: ...
    def events_after(self, job_id: str, n: int) -> list[JobEvent]: ...
    def event_counts(self, job_ids: Iterable[str]) -> dict[str, int]: ...
    def set_rotation(self, variant: str, lanes: list[str]) -> None: ...
    def queue_position(self, rec: JobRecord) -> int | None: ...
    def running_of(self, variant: str) -> list[JobRecord]: ...
    def running_progress(self, variant: str) -> list[tuple[float | None, int, int, float | None]]: ...
    def get_for_view(self, job_id: str) -> JobForView | None: ...
    def counts(self) -> dict[str, dict[str, int]]: ...
    def transaction(self) -> AbstractContextManager[Any]: ...
    def claim_lease(self) -> int: ...
    def holds_lease(self) -> bool: ...


class SqlJobStore:
    """``JobStore`` over the job store's database. Thread-safe through the database's lock; every
    write is committed before returning.

    Args:
        db: a SQLite file path, a database URL (jobs/database.py ``database_url``), or a ``Database``
            shared with other stores (webhooks, API keys).
        hooks: called around every write (fault injection), when this store opens the database.
    """

    def __init__(self, db: Path | str | Database, hooks: StoreHooks | None = None) -> None:
        self.db = db if isinstance(db, Database) else Database(db, hooks)

    def close(self) -> None:
        self.db.close()

    def transaction(self) -> AbstractContextManager[Any]:
        """Several writes (of this and the stores sharing its database) as one commit."""
        return self.db.transaction()

    def claim_lease(self) -> int:
        """Fence every earlier router (Database.claim_lease); returns this one's generation."""
        return self.db.claim_lease()

    def holds_lease(self) -> bool:
        return self.db.holds_lease()

    def _record(self, row: Any) -> JobRecord:
        return self._record_of(dict(row._mapping))

    @staticmethod
    def _record_of(data: dict[str, Any]) -> JobRecord:
        data["spec"] = JobSpec.model_validate_json(data["spec"])
        data["result"] = json.loads(data["result"]) if data["result"] else None
        return JobRecord.model_validate(data)

    def _rows(self, sql: str, params: dict[str, Any] | None = None, *expanding: str) -> list[JobRecord]:
        statement = sql_text(sql).bindparams(*(bindparam(name, expanding=True) for name in expanding))
        with self.db.cursor() as c:
            rows = c.execute(statement, params or {}).fetchall()
        return [self._record(r) for r in rows]

    def _one(self, sql: str, params: dict[str, Any]) -> JobRecord | None:
        row = self.db.execute(sql, params).fetchone()
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
            sqlalchemy.exc.IntegrityError: ``idempotency_key`` is already taken.
            Fenced: a newer router holds the lease.
        """
        with self.db.write("insert", {"id": spec.id}) as c:
            row = c.execute(
                sql_text(
                    "INSERT INTO jobs (id, variant, prompt, spec, status, filename, total_steps, created_at, "
                    "idempotency_key, request_hash, owner) VALUES (:id, :variant, :prompt, :spec, :status, "
                    ":filename, :total_steps, :created_at, :idempotency_key, :request_hash, :owner) RETURNING *"
                ),
                {
                    "id": spec.id,
                    "variant": spec.variant,
                    "prompt": spec.params.prompt,
                    "spec": spec.model_dump_json(),
                    "status": JobStatus.queued.value,
                    "filename": spec.filename,
                    "total_steps": spec.params.num_inference_steps,
                    "created_at": created_at if created_at is not None else time.time(),
                    "idempotency_key": idempotency_key,
                    "request_hash": request_hash,
                    "owner": spec.owner,
                },
            ).fetchone()
        return self._record(row)

    def by_idempotency_key(self, key: str) -> JobRecord | None:
        return self._one("SELECT * FROM jobs WHERE idempotency_key = :key", {"key": key})

    def ended_before(self, cutoff: float) -> list[JobRecord]:
        """Terminal jobs that finished before ``cutoff`` (Unix seconds), oldest first."""
        return self._rows(
            "SELECT * FROM jobs WHERE status IN :terminal AND finished_at < :cutoff ORDER BY seq",
            {"terminal": list(_TERMINAL), "cutoff": cutoff},
            "terminal",
        )

    def get(self, job_id: str) -> JobRecord | None:
        return self._one("SELECT * FROM jobs WHERE id = :id", {"id": job_id})

    def update(self, job_id: str, **fields: Any) -> JobRecord | None:
        """Set columns of one job and return the updated record in the same statement (None when
        there is no such job). ``status`` and ``phase`` may be enums, ``result`` a dict.

        Raises:
            Fenced: a newer router holds the lease.
            ValueError: a field name that is not an identifier (names come from code, never requests).
        """
        if not fields:
            return self.get(job_id)
        if not all(k.isidentifier() for k in fields):
            raise ValueError(f"not column names: {sorted(k for k in fields if not k.isidentifier())}")
        for key in ("status", "phase"):
            if hasattr(fields.get(key), "value"):
                fields[key] = fields[key].value
        if isinstance(fields.get("result"), dict):
            fields["result"] = json.dumps(fields["result"])
        if isinstance(fields.get("file_deleted"), bool):
            fields["file_deleted"] = int(fields["file_deleted"])
        cols = ", ".join(f"{k} = :{k}" for k in fields)
        with self.db.write("update", {"id": job_id, **fields}) as c:
            row = c.execute(
                sql_text(f"UPDATE jobs SET {cols} WHERE id = :job_id RETURNING *"), {**fields, "job_id": job_id}
            ).fetchone()
        return self._record(row) if row is not None else None

    def by_status(self, statuses: Iterable[JobStatus]) -> list[JobRecord]:
        """Jobs in any of ``statuses``, oldest first (FIFO order)."""
        values = [s.value for s in statuses]
        if not values:
            return []
        return self._rows("SELECT * FROM jobs WHERE status IN :statuses ORDER BY seq", {"statuses": values}, "statuses")

    def by_ids(self, ids: Iterable[str]) -> list[JobRecord]:
        ids = list(ids)
        if not ids:
            return []
        return self._rows("SELECT * FROM jobs WHERE id IN :ids ORDER BY seq", {"ids": ids}, "ids")

    def all(self) -> list[JobRecord]:
        return self._rows("SELECT * FROM jobs ORDER BY seq")

    def _keyset_page(
        self, conditions: list[str], args: dict[str, Any], after: str | None, limit: int, descending: bool
    ) -> tuple[list[JobRecord], bool]:
        """Up to ``limit`` jobs meeting every SQL condition, in ``seq`` order, after job ``after``
        (which must meet them too). Raises KeyError for an unknown ``after``."""
        order, cmp = ("DESC", "<") if descending else ("ASC", ">")
        where = " AND ".join(conditions) or "1 = 1"
        with self.db.cursor() as c:
            if after is not None:
                row = c.execute(
                    sql_text(f"SELECT seq FROM jobs WHERE id = :after AND {where}"), {**args, "after": after}
                )
                found = row.fetchone()
                if found is None:
                    raise KeyError(after)
                where = f"{where} AND seq {cmp} :after_seq"
                args = {**args, "after_seq": found[0]}
            rows = c.execute(
                sql_text(f"SELECT * FROM jobs WHERE {where} ORDER BY seq {order} LIMIT :limit"),
                {**args, "limit": limit + 1},
            ).fetchall()
        return [self._record(r) for r in rows[:limit]], len(rows) > limit

    def page(
        self, after: str | None, limit: int, descending: bool, owner: str | None = None
    ) -> tuple[list[JobRecord], bool]:
        """Up to ``limit`` jobs (of ``owner`` only, unless None) in submission order (newest first
        when ``descending``), starting after job ``after``. Returns the jobs and whether more
        follow. Raises KeyError for an unknown ``after`` (or one of another owner)."""
        conditions, args = (["owner = :owner"], {"owner": owner}) if owner is not None else ([], {})
        return self._keyset_page(conditions, args, after, limit, descending)

    def newest_with_prompt(self, prompt: str, owner: str | None = None) -> JobRecord | None:
        """The newest job with exactly ``prompt`` (of ``owner`` only, unless None)."""
        mine = "AND owner = :owner" if owner is not None else ""
        return self._one(
            f"SELECT * FROM jobs WHERE prompt = :prompt {mine} ORDER BY seq DESC LIMIT 1",
            {"prompt": prompt, "owner": owner},
        )

    def submitted_since(self, since: float) -> list[tuple[str | None, float]]:
        """(owner, created_at) of every job submitted at or after ``since`` (Unix seconds), oldest first."""
        rows = self.db.execute(
            "SELECT owner, created_at FROM jobs WHERE created_at >= :since ORDER BY seq", {"since": since}
        ).fetchall()
        return [(r[0], r[1]) for r in rows]

    def filename_owner(self, filename: str) -> JobRecord | None:
        """The job that owns ``filename`` (its file may be written, pending or deleted)."""
        return self._one(
            "SELECT * FROM jobs WHERE filename = :filename AND file_deleted = 0 AND status NOT IN (:error, :canceled) "
            "ORDER BY seq DESC LIMIT 1",
            {"filename": filename, "error": JobStatus.error.value, "canceled": JobStatus.canceled.value},
        )

    def videos(self, owner: str | None = None) -> list[JobRecord]:
        """Successful jobs (of ``owner`` only, unless None) whose file has not been deleted, oldest first."""
        mine = "AND owner = :owner" if owner is not None else ""
        return self._rows(
            f"SELECT * FROM jobs WHERE status = :success AND file_deleted = 0 AND filename IS NOT NULL {mine} "
            "ORDER BY seq",
            {"success": JobStatus.success.value, "owner": owner},
        )

    def videos_page(self, after: str | None, limit: int, owner: str | None = None) -> tuple[list[JobRecord], bool]:
        """A page of ``videos(owner)``, oldest first, after job ``after``. Raises KeyError for an
        ``after`` that is not one of them."""
        conditions = ["status = :success", "file_deleted = 0", "filename IS NOT NULL"]
        args: dict[str, Any] = {"success": JobStatus.success.value}
        if owner is not None:
            conditions.append("owner = :owner")
            args["owner"] = owner
        return self._keyset_page(conditions, args, after, limit, descending=False)

    def delete(self, ids: Iterable[str]) -> None:
        """Remove jobs (what refers to them, like webhook records, is removed by its own store)."""
        ids = list(ids)
        if not ids:
            return
        with self.db.write("delete", {"ids": ids}) as c:
            for table, column in (("job_events", "job_id"), ("jobs", "id")):
                c.execute(
                    sql_text(f"DELETE FROM {table} WHERE {column} IN :ids").bindparams(
                        bindparam("ids", expanding=True)
                    ),
                    {"ids": ids},
                )

    def avg_job_seconds(self, variant: str) -> float | None:
        """Moving average of recent job durations (dispatch to file written) for ``variant``, seconds."""
        row = self.db.execute(
            "SELECT avg_job_seconds FROM variant_stats WHERE variant = :variant", {"variant": variant}
        ).fetchone()
        return row[0] if row else None

    def record_job_seconds(self, variant: str, seconds: float) -> None:
        """Fold one finished job's duration into the variant's exponential moving average."""
        with self.db.write("record_job_seconds", {"variant": variant}) as c:
            c.execute(
                sql_text(
                    "INSERT INTO variant_stats (variant, avg_job_seconds, samples) VALUES (:variant, :seconds, 1) "
                    "ON CONFLICT (variant) DO UPDATE SET avg_job_seconds = "
                    "variant_stats.avg_job_seconds * (1 - :alpha) + :alpha * :seconds, "
                    "samples = variant_stats.samples + 1"
                ),
                {"variant": variant, "seconds": seconds, "alpha": ETA_EMA_ALPHA},
            )

    # ---- progress events ------------------------------------------------------------------------

    @staticmethod
    def _event(n: int, data: str) -> JobEvent:
        return JobEvent.model_validate_json(data).model_copy(update={"id": n * EVENT_ID_SPAN})

    def append_event(self, job_id: str, event: JobEvent) -> JobEvent:
        """Store ``event`` as the job's next one (n = 1, 2, ...) and return it with its id
        (``n * EVENT_ID_SPAN``, jobs/events.py). Raises Fenced: a newer router holds the lease."""
        data = event.model_copy(update={"id": 0}).model_dump_json()
        with self.db.write("append_event", {"id": job_id}) as c:
            n = c.execute(
                sql_text(
                    "INSERT INTO job_events (job_id, n, data) SELECT :job_id, COALESCE(MAX(n), 0) + 1, :data "
                    "FROM job_events WHERE job_id = :job_id RETURNING n"
                ),
                {"job_id": job_id, "data": data},
            ).scalar_one()
        return event.model_copy(update={"id": n * EVENT_ID_SPAN})

    def last_event(self, job_id: str) -> JobEvent | None:
        """The job's newest stored event, or None when it has none (a job stored before events were)."""
        row = self.db.execute(
            "SELECT n, data FROM job_events WHERE job_id = :job_id ORDER BY n DESC LIMIT 1", {"job_id": job_id}
        ).fetchone()
        return self._event(row[0], row[1]) if row is not None else None

    def events_after(self, job_id: str, n: int) -> list[JobEvent]:
        """The job's stored events numbered above ``n``, oldest first."""
        rows = self.db.execute(
            "SELECT n, data FROM job_events WHERE job_id = :job_id AND n > :n ORDER BY n", {"job_id": job_id, "n": n}
        ).fetchall()
        return [self._event(r[0], r[1]) for r in rows]

    def event_counts(self, job_ids: Iterable[str]) -> dict[str, int]:
        """Job id -> its number of stored events (jobs without any are left out); one query."""
        ids = list(job_ids)
        if not ids:
            return {}
        statement = sql_text("SELECT job_id, MAX(n) FROM job_events WHERE job_id IN :ids GROUP BY job_id").bindparams(
            bindparam("ids", expanding=True)
        )
        with self.db.cursor() as c:
            return {row[0]: row[1] for row in c.execute(statement, {"ids": ids})}

    # ---- the queue, as readers see it -----------------------------------------------------------

    def set_rotation(self, variant: str, lanes: list[str]) -> None:
        """Store the order in which ``variant``'s lanes take turns (jobs/queue.py ``JobQueue.rotation``:
        owners, "" for jobs without one; the next first). Raises Fenced."""
        with self.db.write("set_rotation", {"variant": variant}) as c:
            c.execute(sql_text("DELETE FROM queue_rotation WHERE variant = :variant"), {"variant": variant})
            if lanes:
                c.execute(
                    sql_text("INSERT INTO queue_rotation (variant, turn, owner) VALUES (:variant, :turn, :owner)"),
                    [{"variant": variant, "turn": n, "owner": lane} for n, lane in enumerate(lanes)],
                )

    def queue_position(self, rec: JobRecord) -> int | None:
        """1 for the queued job of its variant that starts next, 2 for the one after, ...; None when
        ``rec`` is not queued. The same order as the router's queue (jobs/queue.py): each key's lane
        in FIFO order, the lanes taking turns in the stored rotation (lanes it does not list after
        those it does, oldest first). Reads indexed counts, not the queue itself."""
        if rec.status != JobStatus.queued:
            return None
        queued = {"status": JobStatus.queued.value, "variant": rec.variant}
        with self.db.cursor() as c:
            same_owner = "owner IS NULL" if rec.owner is None else "owner = :owner"
            rank, rotating = c.execute(  # one round trip for the usual case: one key's lane
                sql_text(
                    "SELECT (SELECT COUNT(*) FROM jobs WHERE status = :status AND variant = :variant "
                    f"AND {same_owner} AND seq <= :seq), "
                    "(SELECT COUNT(*) FROM queue_rotation WHERE variant = :variant)"
                ),
                {**queued, "owner": rec.owner, "seq": rec.seq},
            ).one()
        return self._position(rec, rank, rotating)

    def _position(self, rec: JobRecord, rank: int, rotating: int) -> int | None:
        """The queue position of queued ``rec``, ``rank`` in its own lane, with ``rotating`` lanes
        in its variant's stored rotation (queue_position)."""
        if rank == 0:  # dispatched or canceled since it was read
            return None
        if rotating < 2:  # the router stores a rotation whenever two lanes or more hold jobs
            return rank
        queued = {"status": JobStatus.queued.value, "variant": rec.variant}
        with self.db.cursor() as c:
            turns: dict[str, int] = dict(
                c.execute(
                    sql_text("SELECT owner, turn FROM queue_rotation WHERE variant = :variant"),
                    {"variant": rec.variant},
                ).fetchall()
            )
            lanes = c.execute(
                sql_text(
                    "SELECT COALESCE(owner, ''), COUNT(*), MIN(seq) FROM jobs WHERE status = :status "
                    "AND variant = :variant GROUP BY owner"
                ),
                queued,
            ).fetchall()
        mine = rec.owner or ""
        order = sorted(lanes, key=lambda lane: (turns.get(lane[0], len(turns)), lane[2]))
        before = True
        position = rank
        for lane, count, _ in order:
            if lane == mine:
                before = False
                continue
            position += min(count, rank if before else rank - 1)
        return position

    def get_for_view(self, job_id: str) -> JobForView | None:
        """The job and what its view needs beyond it (its queue position, its variant's average job
        and running jobs), in one query for the usual case; None when there is no such job.

        A status read is the busiest query of the service: one round trip instead of four is most
        of its cost on SQLite (SQLAlchemy's per-statement work) and on PostgreSQL (the network)."""
        with self.db.cursor() as c:
            rows = c.execute(
                _GET_FOR_VIEW, {"id": job_id, "queued": JobStatus.queued.value, "running": JobStatus.running.value}
            ).fetchall()
        if not rows:
            return None
        first = dict(rows[0]._mapping)
        extra = {name: first.pop(name) for name in _FOR_VIEW_COLUMNS}
        rec = self._record_of(first)
        running = [(r.r_started_at, r.r_step, r.r_total_steps, r.r_step_seconds) for r in rows if r.r_id is not None]
        position = self._position(rec, extra["q_rank"], extra["q_rotating"]) if extra["q_rank"] is not None else None
        return JobForView(rec, position, extra["q_avg"], running)

    def running_progress(self, variant: str) -> list[tuple[float | None, int, int, float | None]]:
        """(started_at, step, total_steps, step_seconds) of each running job of ``variant``: what a
        queued job's ETA needs, without reading whole records."""
        rows = self.db.execute(
            "SELECT started_at, step, total_steps, step_seconds FROM jobs WHERE status = :status "
            "AND variant = :variant",
            {"status": JobStatus.running.value, "variant": variant},
        ).fetchall()
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    def running_of(self, variant: str) -> list[JobRecord]:
        """Running jobs of ``variant``, oldest first."""
        return self._rows(
            "SELECT * FROM jobs WHERE status = :status AND variant = :variant ORDER BY seq",
            {"status": JobStatus.running.value, "variant": variant},
        )

    def counts(self) -> dict[str, dict[str, int]]:
        """Per variant with jobs queued or running: ``{"queued": n, "running": n}``."""
        rows = self.db.execute(
            "SELECT variant, status, COUNT(*) FROM jobs WHERE status IN (:queued, :running) GROUP BY variant, status",
            {"queued": JobStatus.queued.value, "running": JobStatus.running.value},
        ).fetchall()
        out: dict[str, dict[str, int]] = {}
        for variant, status, count in rows:
            out.setdefault(variant, {"queued": 0, "running": 0})[status] = count
        return out
