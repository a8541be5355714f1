"""API keys, kept in the job store's database so that every ingress replica sees the same set.

A key is shown once, when it is made: ``wsk_`` and 43 URL-safe characters (256 random bits,
``secrets.token_urlsafe(32)``). The store keeps only its SHA-256, its name, scope, quotas and
times. A fast hash is enough: the secret is random, not a password, so there is nothing to guess
from the hash that would be cheaper than guessing the key (GitHub's and Stripe's tokens are kept
the same way).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy.exc import IntegrityError

from jobs.database import Database, sql_text
from jobs.ownership import Caller, Quotas

#: What every key starts with, so that secret scanners and people recognise one.
KEY_PREFIX = "wsk_"

#: Characters of the secret shown by ``keys list`` to tell keys apart (the prefix included).
SHOWN_CHARS = 10


class KeyNameTaken(ValueError):
    """A live key already has this name."""


class KeyNotFound(LookupError):
    """No live key has this name or id."""


class ApiKey(BaseModel):
    """One API key as stored: never the secret. Times are Unix seconds."""

    id: str = Field(description="Public id (key_ + 12 hex digits); jobs record it as their owner.")
    name: str = Field(description="Who the key is for, e.g. a team; unique among live keys.")
    shown: str = Field(description="The first characters of the secret, to tell keys apart.")
    admin: bool = Field(description="Sees, cancels and deletes every key's jobs.")
    quotas: Quotas = Field(description="The key's limits.")
    created_at: float
    last_used_at: float | None = None
    revoked_at: float | None = None

    def caller(self) -> Caller:
        """The caller a request made with this key acts as."""
        return Caller(key_id=self.id, name=self.name, admin=self.admin, quotas=self.quotas)


def key_digest(secret: str) -> str:
    """SHA-256 of a key, hex: what the store keeps and looks keys up by."""
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore:
    """The ``api_keys`` table of a job store's database (shared lock, WAL, like the job store's).

    Writes here do not take the router's lease: the ``wan-serve keys`` command writes while the
    service runs, and a key is no job state.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    def _key(self, row: Any) -> ApiKey:
        data = dict(row._mapping)
        quotas = Quotas(**{k: data.pop(k) for k in ("max_running", "max_queued", "jobs_per_hour")})
        data.pop("sha256")
        return ApiKey(**data, quotas=quotas)

    def create(self, name: str, admin: bool = False, quotas: Quotas | None = None) -> tuple[ApiKey, str]:
        """A new key named ``name``. Returns it and its secret (shown once; only its hash is kept).

        Raises:
            KeyNameTaken: a live key has that name.
            ValueError: an empty name.
        """
        if not name.strip():
            raise ValueError("a key needs a name, e.g. the team that uses it")
        quotas = quotas or Quotas()
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key_id = "key_" + secrets.token_hex(6)
        try:
            with self.db.transaction() as c:
                c.execute(
                    sql_text(
                        "INSERT INTO api_keys (id, name, shown, sha256, admin, max_running, max_queued, jobs_per_hour, "
                        "created_at) VALUES (:id, :name, :shown, :sha256, :admin, :max_running, :max_queued, "
                        ":jobs_per_hour, :created_at)"
                    ),
                    {
                        "id": key_id,
                        "name": name,
                        "shown": secret[:SHOWN_CHARS],
                        "sha256": key_digest(secret),
                        "admin": int(admin),
                        "max_running": quotas.max_running,
                        "max_queued": quotas.max_queued,
                        "jobs_per_hour": quotas.jobs_per_hour,
                        "created_at": time.time(),
                    },
                )
        except IntegrityError:
            raise KeyNameTaken(f"a live key is already named {name!r}; revoke it first or pick another name") from None
        key = self.get(key_id)
        assert key is not None
        return key, secret

    def get(self, key_id: str) -> ApiKey | None:
        """The key with this id, live or revoked, or None."""
        row = self.db.execute("SELECT * FROM api_keys WHERE id = :id", {"id": key_id}).fetchone()
        return self._key(row) if row is not None else None

    def list(self, include_revoked: bool = False) -> list[ApiKey]:
        """Keys, oldest first."""
        live = "" if include_revoked else "WHERE revoked_at IS NULL"
        rows = self.db.execute(f"SELECT * FROM api_keys {live} ORDER BY created_at").fetchall()
        return [self._key(r) for r in rows]

    def count(self, include_revoked: bool = False) -> int:
        """How many keys are live (not revoked), or were ever made with ``include_revoked``."""
        live = "" if include_revoked else "WHERE revoked_at IS NULL"
        return int(self.db.execute(f"SELECT COUNT(*) FROM api_keys {live}").scalar_one())

    def revoke(self, name_or_id: str) -> ApiKey:
        """Revoke the live key with this name or id; requests with it fail from then on (an ingress
        may accept it for up to its cache time, serve_app/authentication.py).

        Raises:
            KeyNotFound: no live key has that name or id.
        """
        with self.db.transaction() as c:
            row = c.execute(
                sql_text(
                    "UPDATE api_keys SET revoked_at = :now WHERE (name = :key OR id = :key) AND revoked_at IS NULL "
                    "RETURNING *"
                ),
                {"now": time.time(), "key": name_or_id},
            ).fetchone()
        if row is None:
            raise KeyNotFound(f"no live key is named or has the id {name_or_id!r}; `wan-serve keys list` shows them")
        return self._key(row)

    def authenticate(self, digest: str) -> ApiKey | None:
        """The live key whose secret has SHA-256 ``digest`` (hex), or None."""
        row = self.db.execute(
            "SELECT * FROM api_keys WHERE sha256 = :digest AND revoked_at IS NULL", {"digest": digest}
        ).fetchone()
        return self._key(row) if row is not None else None

    def touch(self, key_id: str, when: float) -> None:
        """Record that the key was used at ``when`` (Unix seconds)."""
        with self.db.transaction() as c:
            c.execute(sql_text("UPDATE api_keys SET last_used_at = :when WHERE id = :id"), {"when": when, "id": key_id})

    def quotas(self, key_id: str) -> Quotas | None:
        """The quotas of key ``key_id`` (live or revoked), or None for an unknown id."""
        key = self.get(key_id)
        return key.quotas if key is not None else None
