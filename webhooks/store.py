"""The webhook tables: every message (pending, delivered or failed) and every delivery attempt,
in the job store's database (jobs/database.py; tables created by its migrations), so a restarted
router resends what was left pending."""

from __future__ import annotations

import time
from collections.abc import Iterable

from sqlalchemy import bindparam

from jobs.database import Database, sql_text
from webhooks.model import DeliveryState, WebhookAttempt, WebhookMessage


class WebhookStore:
    """Webhook messages and attempts over the job store's database (``SqlJobStore.db``).

    Thread-safe through the database's lock; every write is committed before returning.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    def add_webhook_message(self, message_id: str, job_id: str, event_type: str, payload: str) -> None:
        """Record a webhook message as ``pending`` before its first attempt (inside the caller's
        transaction, if any: the job engine writes a terminal status and its message as one commit)."""
        with self.db.write("add_webhook_message", {"job_id": job_id}) as c:
            c.execute(
                sql_text(
                    "INSERT INTO webhook_messages (id, job_id, event_type, payload, state, created_at) "
                    "VALUES (:id, :job_id, :event_type, :payload, :state, :created_at)"
                ),
                {
                    "id": message_id,
                    "job_id": job_id,
                    "event_type": event_type,
                    "payload": payload,
                    "state": DeliveryState.pending.value,
                    "created_at": time.time(),
                },
            )

    def set_webhook_state(self, message_id: str, state: DeliveryState) -> None:
        """Mark a message ``delivered`` or ``failed``."""
        self.db.execute(
            "UPDATE webhook_messages SET state = :state WHERE id = :id",
            {"state": DeliveryState(state).value, "id": message_id},
        )

    def add_webhook_attempt(self, message_id: str, job_id: str, attempt: WebhookAttempt) -> int:
        """Record one delivery attempt; returns its row id (for ``set_next_attempt``)."""
        data = attempt.model_dump()
        cols = ", ".join(data)
        marks = ", ".join(f":{k}" for k in data)
        row = self.db.execute(
            f"INSERT INTO webhook_attempts (message_id, job_id, {cols}) VALUES (:message_id, :job_id, {marks}) "
            "RETURNING seq",
            {"message_id": message_id, "job_id": job_id, **data},
        ).fetchone()
        assert row is not None
        return int(row[0])

    def set_next_attempt(self, row_id: int, at: float) -> None:
        """Record when the retry after attempt row ``row_id`` is due (Unix seconds)."""
        self.db.execute("UPDATE webhook_attempts SET next_attempt_at = :at WHERE seq = :seq", {"at": at, "seq": row_id})

    def webhook_messages(self, job_id: str | None = None, state: DeliveryState | None = None) -> list[WebhookMessage]:
        """Messages of one job (or of every job), oldest first, each with its attempts in order."""
        where: list[str] = []
        args: dict[str, str] = {}
        if job_id is not None:
            where.append("job_id = :job_id")
            args["job_id"] = job_id
        if state is not None:
            where.append("state = :state")
            args["state"] = DeliveryState(state).value
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self.db.cursor() as c:
            # By creation time (microseconds); the id only breaks exact ties, stably.
            statement = sql_text(f"SELECT * FROM webhook_messages {clause} ORDER BY created_at, id")
            rows = c.execute(statement, args).fetchall()
            messages = [WebhookMessage(**dict(r._mapping)) for r in rows]
            for m in messages:
                attempts = c.execute(
                    sql_text(
                        "SELECT attempt, attempted_at, address, status_code, error, duration_s, next_attempt_at "
                        "FROM webhook_attempts WHERE message_id = :id ORDER BY attempt"
                    ),
                    {"id": m.id},
                ).fetchall()
                m.attempts = [WebhookAttempt(**dict(a._mapping)) for a in attempts]
        return messages

    def delete_for_jobs(self, job_ids: Iterable[str]) -> None:
        """Remove the messages and attempts of deleted jobs."""
        ids = list(job_ids)
        if not ids:
            return
        with self.db.cursor() as c:
            for table in ("webhook_messages", "webhook_attempts"):
                statement = sql_text(f"DELETE FROM {table} WHERE job_id IN :ids").bindparams(
                    bindparam("ids", expanding=True)
                )
                c.execute(statement, {"ids": ids})
