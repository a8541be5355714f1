"""Result files: where a job's file lives in the object store (``outputs/<filename>``), whether it
is there, its size and age, removing it."""

from __future__ import annotations

from pathlib import Path

from jobs.config import make_private_dir
from jobs.filenames import DEFAULT_NAME
from jobs.objects import ObjectStore

#: Key prefix of result files in the object store; on a local store, the folder ``<root>/outputs``.
OUTPUTS = "outputs/"


class ResultFiles:
    """Result files under ``outputs/`` of ``store``; names are the jobs' sanitized file names."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        if store.folder is not None:
            make_private_dir(store.folder / OUTPUTS)

    def key(self, filename: str) -> str:
        return OUTPUTS + filename

    def local_path(self, filename: str) -> Path | None:
        """Where ``filename`` is (or would be) written when the store is a local folder, else None."""
        return self.store.local_path(self.key(filename))

    def writable_path(self, filename: str) -> Path | None:
        """``local_path``, with its folder made again if it is gone: the local store removes a folder
        once its last object is deleted."""
        path = self.local_path(filename)
        if path is not None:
            make_private_dir(path.parent)
        return path

    def put(self, filename: str, path: Path) -> int:
        """Store the finished file at ``path`` as ``filename``; returns its size in bytes."""
        return self.store.put_file(self.key(filename), path)

    def exists(self, filename: str | None) -> bool:
        return bool(filename) and self.store.exists(self.key(filename))  # type: ignore[arg-type]

    def size(self, filename: str) -> int | None:
        """Bytes of the file, or None when it is not there."""
        info = self.store.info(self.key(filename))
        return info.size if info is not None else None

    def default_named(self) -> list[str]:
        """Names of the finished files here that have a default name (jobs/filenames.py)."""
        names = (o.key[len(OUTPUTS) :] for o in self.store.list(OUTPUTS))
        return [n for n in names if "/" not in n and DEFAULT_NAME.match(n)]

    def age_s(self, filename: str, now: float) -> float:
        """Seconds since the file was last written (0 when it is gone)."""
        info = self.store.info(self.key(filename))
        return now - info.modified if info is not None else 0.0

    def remove(self, filename: str | None) -> bool:
        """Delete the file; False when there was none."""
        return bool(filename) and self.store.delete(self.key(filename))  # type: ignore[arg-type]
