"""The webhook tables: every message (pending, delivered or failed) and every delivery attempt,
in the job store's SQLite database, so a restarted router resends what was left pending."""

from __future__ import annotations

import time
from collections.abc import Iterable

from jobs.store import SqliteDatabase
from webhooks.model import DeliveryState, WebhookAttempt, WebhookMessage

_SCHEMA = """
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
"""


class WebhookStore:
    """Webhook messages and attempts over the job store's database (``SqliteJobStore.db``).

    Thread-safe through the database's lock; every write is committed before returning.
    """

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db
        with db.cursor() as c:
            c.executescript(_SCHEMA)

    def add_webhook_message(self, message_id: str, job_id: str, event_type: str, payload: str) -> None:
        """Record a webhook message as ``pending`` before its first attempt (inside the caller's
        transaction, if any: the job engine writes a terminal status and its message as one commit)."""
        with self.db.write("add_webhook_message", {"job_id": job_id}) as c:
            c.execute(
                "INSERT INTO webhook_messages (id, job_id, event_type, payload, state, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (message_id, job_id, event_type, payload, DeliveryState.pending.value, time.time()),
            )

    def set_webhook_state(self, message_id: str, state: DeliveryState) -> None:
        """Mark a message ``delivered`` or ``failed``."""
        with self.db.cursor() as c:
            c.execute("UPDATE webhook_messages SET state = ? WHERE id = ?", (DeliveryState(state).value, message_id))

    def add_webhook_attempt(self, message_id: str, job_id: str, attempt: WebhookAttempt) -> int:
        """Record one delivery attempt; returns its row id (for ``set_next_attempt``)."""
        data = attempt.model_dump()
        cols = ", ".join(data)
        with self.db.cursor() as c:
            cur = c.execute(
                f"INSERT INTO webhook_attempts (message_id, job_id, {cols}) VALUES (?, ?, {','.join('?' * len(data))})",
                (message_id, job_id, *data.values()),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

    def set_next_attempt(self, row_id: int, at: float) -> None:
        """Record when the retry after attempt row ``row_id`` is due (Unix seconds)."""
        with self.db.cursor() as c:
            c.execute("UPDATE webhook_attempts SET next_attempt_at = ? WHERE seq = ?", (at, row_id))

    def webhook_messages(self, job_id: str | None = None, state: DeliveryState | None = None) -> list[WebhookMessage]:
        """Messages of one job (or of every job), oldest first, each with its attempts in order."""
        where: list[str] = []
        args: list[str] = []
        if job_id is not None:
            where.append("job_id = ?")
            args.append(job_id)
        if state is not None:
            where.append("state = ?")
            args.append(DeliveryState(state).value)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self.db.cursor() as c:
            rows = c.execute(f"SELECT * FROM webhook_messages {clause} ORDER BY created_at, rowid", args).fetchall()
            messages = [WebhookMessage(**dict(r)) for r in rows]
            for m in messages:
                attempts = c.execute(
                    "SELECT attempt, attempted_at, address, status_code, error, duration_s, next_attempt_at "
                    "FROM webhook_attempts WHERE message_id = ? ORDER BY attempt",
                    (m.id,),
                ).fetchall()
                m.attempts = [WebhookAttempt(**dict(a)) for a in attempts]
        return messages

    def delete_for_jobs(self, job_ids: Iterable[str]) -> None:
        """Remove the messages and attempts of deleted jobs."""
        ids = list(job_ids)
        if not ids:
            return
        marks = ",".join("?" * len(ids))
        with self.db.cursor() as c:
            for table in ("webhook_messages", "webhook_attempts"):
                c.execute(f"DELETE FROM {table} WHERE job_id IN ({marks})", ids)
