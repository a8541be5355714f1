"""A real PostgreSQL server for the tests, on 127.0.0.1 and a free port, in a temporary folder:
Debian's postgresql binaries (the Makefile installs the package where they are missing), started
with initdb and pg_ctl. PostgreSQL refuses to run as root, so under root it runs as the
``postgres`` user the package creates."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psycopg


def binaries() -> Path:
    """The folder of initdb and pg_ctl.

    Raises:
        RuntimeError: no PostgreSQL server is installed (`make install-test-servers` installs it).
    """
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    folders = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if folders:
        return Path(folders[-1])
    raise RuntimeError("no PostgreSQL server binaries (initdb, pg_ctl): `make test` installs Debian's postgresql")


class PostgresServer:
    """One server; ``url(dbname)`` gives a libpq URL, ``new_database()`` a fresh empty database."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.bin = binaries()
        self.folder = Path(tempfile.mkdtemp(prefix="wan-serve-pg-"))
        self.data = self.folder / "data"
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            shutil.chown(self.folder, self.user)

    def _run(self, *args: str) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        subprocess.run(command, check=True, capture_output=True, cwd=self.folder)

    def start(self) -> PostgresServer:
        self._run("initdb", "-D", str(self.data), "-U", "wan", "--auth=trust", "-E", "UTF8")
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.folder / "log"), "-w", "start")
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.url("postgres"), connect_timeout=2):
                    return self
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def url(self, dbname: str) -> str:
        return f"postgresql://wan@127.0.0.1:{self.port}/{dbname}"

    def new_database(self) -> str:
        """A new empty database's URL."""
        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url("postgres"), autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
