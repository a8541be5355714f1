"""The job store's database: a SQLite file (the default, one machine) or a PostgreSQL server (a
cluster), through SQLAlchemy Core, with its schema kept by Alembic (jobs/migrations/).

``Database`` holds one connection per process, behind one re-entrant lock, in autocommit mode:
a statement outside ``transaction()`` commits by itself, and ``transaction()`` opens one
transaction (nested calls join it) for several writes of any store sharing the database (jobs,
webhooks, API keys). Writes through ``write()`` check the lease first (fencing).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import TextClause, create_engine, event, inspect, text
from sqlalchemy.engine import Connection, Engine, make_url

from jobs.config import PRIVATE_FILE_MODE, make_private_dir

logger = logging.getLogger(__name__)

#: Alembic's scripts: env.py and versions/.
MIGRATIONS = Path(__file__).parent / "migrations"


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


@functools.lru_cache(maxsize=1024)
def sql_text(statement: str) -> TextClause:
    """SQLAlchemy's ``text(statement)``, built once per statement string and then reused.

    Building one parses the string for its ``:name`` parameters (a regex), which cost more than
    SQLite's own work on the busiest reads and writes. The clause is immutable (``bindparams`` and
    ``columns`` return copies), so sharing it is safe; the cache holds the fixed strings of this
    package (a statement per set of columns an update writes), not values.
    """
    return text(statement)


def database_url(where: str | Path) -> str:
    """A SQLAlchemy URL for ``where``: a path is a SQLite file; ``postgresql://`` (libpq's form) uses
    the psycopg 3 driver; any other SQLAlchemy URL is kept.

    Raises:
        ValueError: a database other than SQLite or PostgreSQL.
    """
    if isinstance(where, Path) or "://" not in str(where):
        return f"sqlite:///{Path(where).resolve()}"
    url = str(where)
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    backend = make_url(url).get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ValueError(
            f"the job store runs on sqlite or postgresql, not {backend}: {make_url(url).render_as_string()}"
        )
    return url


def redacted(url: str) -> str:
    """``url`` with its password hidden, for logs and errors."""
    return make_url(url).render_as_string(hide_password=True)


def _engine(url: str) -> Engine:
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_settings(dbapi_connection, _record) -> None:
            # The driver's own transaction handling off: transactions are BEGIN IMMEDIATE, emitted here.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed job survives a power cut, not only a process crash.
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA busy_timeout=5000")
            cursor.close()

        return engine
    # pool_pre_ping: a connection the server dropped (a restart, a failover) is replaced, not used.
    return create_engine(url, pool_pre_ping=True)


def migrate(engine: Engine) -> str:
    """Bring the database's schema to the newest version (Alembic ``upgrade head``); returns it.

    A SQLite job store written before schema versions (no ``alembic_version`` table) is upgraded in
    place by the first version, which creates what it lacks and keeps every row.
    """
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            connection.exec_driver_sql("BEGIN IMMEDIATE")  # one migrator at a time, DDL included
        else:
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7414)")  # one migrator at a time
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
        version = MigrationContext.configure(connection).get_current_revision()
        connection.commit()
    return str(version)


class Database:
    """The job store's database (see the module docstring), migrated to the newest schema on open.

    Args:
        where: a SQLite file path, or a SQLAlchemy or libpq URL (``postgresql://user:pw@host/db``).
        hooks: called around every ``write`` (fault injection).

    Fencing: ``claim_lease()`` takes the lease for this process (a generation number); from then on
    every ``write`` first checks that no newer holder took it, and raises ``Fenced`` otherwise. On
    PostgreSQL the check holds the lease row (``FOR SHARE``) until the write commits, so a new
    holder's claim waits for it.

    Raises:
        sqlalchemy.exc.OperationalError: the server cannot be reached.
    """

    def __init__(self, where: str | Path, hooks: StoreHooks | None = None) -> None:
        self.url = database_url(where)
        if make_url(self.url).get_backend_name() == "sqlite":
            path = Path(make_url(self.url).database or "")
            make_private_dir(path.parent)
            # SQLite creates its -wal and -shm files with the database file's mode.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, PRIVATE_FILE_MODE))
        self.engine = _engine(self.url)
        self.schema_version = migrate(self.engine)
        self.dialect = self.engine.dialect.name
        self.hooks = hooks
        self.generation: int | None = None
        self._depth = 0
        self._lease_checked = False  # whether this transaction checked the lease (``write``)
        self._committed: list[tuple[str, dict[str, Any]]] = []  # writes whose ``after`` hook waits for the commit
        self._on_commit: list[Callable[[], object]] = []
        self.last_write_ok: float | None = None  # time.monotonic() of the last committed write
        self.lock = threading.RLock()
        self.connection: Connection = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")

    @property
    def tables(self) -> set[str]:
        """The tables of the database (for tests and the migration check)."""
        with self.lock:
            return set(inspect(self.connection).get_table_names())

    @contextmanager
    def cursor(self) -> Iterator[Connection]:
        """The connection, held under the lock, for reads (and writes outside ``write``'s checks)."""
        with self.lock:
            yield self.connection

    def execute(self, sql: str, params: dict[str, Any] | None = None):
        """Run one statement (``:name`` parameters) under the lock; returns SQLAlchemy's result."""
        with self.lock:
            return self.connection.execute(sql_text(sql), params or {})

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One commit for every write inside (nested: the outermost commits); rolled back on error."""
        with self.lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self.connection
                finally:
                    self._depth -= 1
                return
            self.connection.exec_driver_sql("BEGIN IMMEDIATE" if self.dialect == "sqlite" else "BEGIN")
            self._depth, self._lease_checked = 1, False
            try:
                yield self.connection
            except BaseException:
                self._depth, self._committed, self._on_commit = 0, [], []
                self.connection.exec_driver_sql("ROLLBACK")
                raise
            self._depth = 0
            self.connection.exec_driver_sql("COMMIT")
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
    def write(self, op: str, fields: dict[str, Any] | None = None) -> Iterator[Connection]:
        """A write: the hooks around it, the lease checked first, all in one transaction.

        Raises:
            Fenced: a newer holder took the lease.
        """
        fields = fields or {}
        if self.hooks is not None:
            self.hooks.before(op, fields)
        with self.transaction() as c:
            # Once per transaction: on PostgreSQL the first check holds the lease row until the commit.
            if self.generation is not None and not self._lease_checked:
                lock = " FOR SHARE" if self.dialect == "postgresql" else ""
                row = c.execute(sql_text(f"SELECT generation FROM lease WHERE id = 1{lock}")).fetchone()
                if row is None or row[0] != self.generation:
                    raise Fenced(
                        f"the job store's lease moved to generation {row[0] if row else None}; "
                        f"this router holds {self.generation}"
                    )
                self._lease_checked = True
            yield c
            self._committed.append((op, fields))  # ``after`` runs once the outermost transaction commits

    def claim_lease(self) -> int:
        """Take the lease: the next generation number, which fences every earlier holder."""
        with self.transaction() as c:
            row = c.execute(
                text(
                    "INSERT INTO lease (id, generation) VALUES (1, 1) "
                    "ON CONFLICT (id) DO UPDATE SET generation = lease.generation + 1 RETURNING generation"
                )
            ).fetchone()
        assert row is not None
        self.generation = int(row[0])
        return self.generation

    def holds_lease(self) -> bool:
        """Whether no newer holder took the lease (always true before ``claim_lease``)."""
        if self.generation is None:
            return True
        row = self.execute("SELECT generation FROM lease WHERE id = 1").fetchone()
        return row is not None and row[0] == self.generation

    def close(self) -> None:
        self.connection.close()
        self.engine.dispose()
