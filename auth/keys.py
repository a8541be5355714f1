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
import sqlite3
import time

from pydantic import BaseModel, Field

from jobs.ownership import Caller, Quotas
from jobs.store import SqliteDatabase

#: What every key starts with, so that secret scanners and people recognise one.
KEY_PREFIX = "wsk_"

#: Characters of the secret shown by ``keys list`` to tell keys apart (the prefix included).
SHOWN_CHARS = 10

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id            TEXT PRIMARY KEY,        -- public id, the owner of the key's jobs
    name          TEXT NOT NULL,
    shown         TEXT NOT NULL,           -- the first characters of the secret
    sha256        TEXT NOT NULL UNIQUE,    -- of the secret; the secret itself is never stored
    admin         INTEGER NOT NULL DEFAULT 0,
    max_running   INTEGER,
    max_queued    INTEGER,
    jobs_per_hour INTEGER,
    created_at    REAL NOT NULL,
    last_used_at  REAL,
    revoked_at    REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS api_keys_live_name ON api_keys(name) WHERE revoked_at IS NULL;
"""


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

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db
        with db.cursor() as c:
            c.executescript(_SCHEMA)

    def _key(self, row: sqlite3.Row) -> ApiKey:
        data = dict(row)
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
                    "INSERT INTO api_keys (id, name, shown, sha256, admin, max_running, max_queued, jobs_per_hour, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        key_id,
                        name,
                        secret[:SHOWN_CHARS],
                        key_digest(secret),
                        int(admin),
                        quotas.max_running,
                        quotas.max_queued,
                        quotas.jobs_per_hour,
                        time.time(),
                    ),
                )
        except sqlite3.IntegrityError:
            raise KeyNameTaken(f"a live key is already named {name!r}; revoke it first or pick another name") from None
        key = self.get(key_id)
        assert key is not None
        return key, secret

    def get(self, key_id: str) -> ApiKey | None:
        """The key with this id, live or revoked, or None."""
        with self.db.cursor() as c:
            row = c.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        return self._key(row) if row is not None else None

    def list(self, include_revoked: bool = False) -> list[ApiKey]:
        """Keys, oldest first."""
        live = "" if include_revoked else "WHERE revoked_at IS NULL"
        with self.db.cursor() as c:
            rows = c.execute(f"SELECT * FROM api_keys {live} ORDER BY created_at").fetchall()
        return [self._key(r) for r in rows]

    def count(self, include_revoked: bool = False) -> int:
        """How many keys are live (not revoked), or were ever made with ``include_revoked``."""
        live = "" if include_revoked else "WHERE revoked_at IS NULL"
        with self.db.cursor() as c:
            return int(c.execute(f"SELECT COUNT(*) FROM api_keys {live}").fetchone()[0])

    def revoke(self, name_or_id: str) -> ApiKey:
        """Revoke the live key with this name or id; requests with it fail from then on (an ingress
        may accept it for up to its cache time, serve_app/authentication.py).

        Raises:
            KeyNotFound: no live key has that name or id.
        """
        with self.db.transaction() as c:
            row = c.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE (name = ? OR id = ?) AND revoked_at IS NULL RETURNING *",
                (time.time(), name_or_id, name_or_id),
            ).fetchone()
        if row is None:
            raise KeyNotFound(f"no live key is named or has the id {name_or_id!r}; `wan-serve keys list` shows them")
        return self._key(row)

    def authenticate(self, digest: str) -> ApiKey | None:
        """The live key whose secret has SHA-256 ``digest`` (hex), or None."""
        with self.db.cursor() as c:
            row = c.execute("SELECT * FROM api_keys WHERE sha256 = ? AND revoked_at IS NULL", (digest,)).fetchone()
        return self._key(row) if row is not None else None

    def touch(self, key_id: str, when: float) -> None:
        """Record that the key was used at ``when`` (Unix seconds)."""
        with self.db.transaction() as c:
            c.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (when, key_id))

    def quotas(self, key_id: str) -> Quotas | None:
        """The quotas of key ``key_id`` (live or revoked), or None for an unknown id."""
        key = self.get(key_id)
        return key.quotas if key is not None else None
