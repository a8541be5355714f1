"""Where job inputs and results live: a local folder (the default, one machine) or an
S3-compatible bucket (``s3://bucket/prefix``: AWS S3, GCS through its S3 interface, MinIO, Ceph),
through obstore, so that every node reads what another wrote.

Objects appear complete or not at all: an S3 object exists once its upload (single or multipart)
completes; obstore's local store writes to a temporary file and renames it. So a reader never
sees half a file, and an interrupted upload leaves no object.

S3 settings come from the standard AWS environment variables (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``, ``AWS_ENDPOINT_URL`` for a
non-AWS server, ``AWS_ALLOW_HTTP=true`` for one without TLS), read by obstore.
"""

from __future__ import annotations

import datetime
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

import obstore
from obstore.store import LocalStore, from_url

from jobs.config import make_private_dir

#: Bytes per chunk when a download is streamed from the store.
STREAM_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class ObjectInfo:
    """One object: its key (relative to the store's root), size in bytes, and last write (Unix seconds)."""

    key: str
    size: int
    modified: float


def is_remote(url: str | Path) -> bool:
    """Whether ``url`` names a bucket (``s3://``, ``gs://``, ...) rather than a local folder."""
    return "://" in str(url) and not str(url).startswith("file://")


class ObjectStore:
    """Objects under one root: ``url`` is a local folder (path or ``file://``; created with mode
    0700) or ``s3://bucket/prefix``. Keys are ``/``-separated paths below the root.

    Thread-safe (obstore's stores are). Every method raises ``OSError`` subclasses for I/O failures
    (obstore's errors); a missing object is ``FileNotFoundError``.
    """

    def __init__(self, url: str | Path) -> None:
        self.url = str(url)
        self.folder: Path | None = None
        if is_remote(url):
            self._store = from_url(self.url)
        else:
            folder = Path(self.url.removeprefix("file://")).resolve()
            self.folder = make_private_dir(folder)
            # automatic_cleanup: deleting a job's last input object removes its emptied folder too.
            self._store = LocalStore(str(folder), automatic_cleanup=True)

    def local_path(self, key: str) -> Path | None:
        """The file of ``key`` when the store is a local folder (served directly), else None."""
        return self.folder / key if self.folder is not None else None

    def put_file(self, key: str, source: Path | BinaryIO) -> int:
        """Upload the file at ``source`` (a path, or a binary file object read to its end) as ``key``,
        multipart when large; returns its size in bytes. Should reading or uploading fail, no
        object appears (and an object already there stays as it was)."""
        if isinstance(source, Path):
            obstore.put(self._store, key, source)
        else:
            obstore.put(self._store, key, iter(lambda: source.read(STREAM_CHUNK_BYTES), b""))
        info = self.info(key)
        assert info is not None
        return info.size

    def put_bytes(self, key: str, data: bytes) -> None:
        obstore.put(self._store, key, data)

    def get_bytes(self, key: str) -> bytes:
        """The whole object. Raises FileNotFoundError when there is none."""
        return bytes(obstore.get(self._store, key).bytes())

    def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``start`` (inclusive) to ``end`` (exclusive) of the object."""
        return bytes(obstore.get_range(self._store, key, start=start, end=end))

    def iter_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``start`` to ``end`` (exclusive) in chunks of at most STREAM_CHUNK_BYTES."""
        for offset in range(start, end, STREAM_CHUNK_BYTES):
            yield self.get_range(key, offset, min(offset + STREAM_CHUNK_BYTES, end))

    def info(self, key: str) -> ObjectInfo | None:
        """Size and write time of ``key``, or None when there is no such object."""
        try:
            meta = obstore.head(self._store, key)
        except FileNotFoundError:
            return None
        return ObjectInfo(key=key, size=int(meta["size"]), modified=meta["last_modified"].timestamp())

    def exists(self, key: str) -> bool:
        return self.info(key) is not None

    def delete(self, key: str) -> bool:
        """Remove ``key``; False when there was none."""
        if not self.exists(key):
            return False
        obstore.delete(self._store, key)
        return True

    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (a folder: end it with ``/``)."""
        found = []
        for chunk in obstore.list(self._store, prefix.rstrip("/") or None):
            for meta in chunk:
                found.append(ObjectInfo(meta["path"], int(meta["size"]), meta["last_modified"].timestamp()))
        return [o for o in found if o.key.startswith(prefix)]

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under ``prefix``; returns how many."""
        keys = [o.key for o in self.list(prefix)]
        if keys:
            obstore.delete(self._store, keys)
        return len(keys)

    def copy_prefix(self, source: str, target: str) -> int:
        """Copy every object under ``source`` to the same name under ``target``; returns how many."""
        objects = self.list(source)
        for o in objects:
            obstore.copy(self._store, o.key, target + o.key[len(source) :])
        return len(objects)

    def presigned_get(self, key: str, ttl_s: float) -> str | None:
        """A URL that downloads ``key`` for ``ttl_s`` seconds without credentials; None for a local folder."""
        if self.folder is not None:
            return None
        return str(obstore.sign(cast(Any, self._store), "GET", key, datetime.timedelta(seconds=ttl_s)))


def npy_bytes(array) -> bytes:
    """``array`` as .npy bytes (numpy's format: exact, read back without decoding)."""
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()
