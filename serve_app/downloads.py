"""Serving a result file from the object store (jobs/objects.py): a local folder's file directly
(starlette's FileResponse, which answers Range requests itself), a bucket's object streamed through
the ingress with single-range support, or, with ``downloads: presigned``, a redirect to a presigned
URL so the bytes go from the bucket to the client directly."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi import Request
from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse

from jobs.errors import FileNotFoundForJob
from jobs.files import ResultFiles

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The one byte range ``header`` asks for, as (start, end exclusive), clipped to ``size``; None
    for no header, several ranges or a malformed one (RFC 9110: the whole content is then sent).

    Raises:
        ValueError: a well-formed range that starts past the end (416).
    """
    match = _RANGE.match(header.strip()) if header else None
    if match is None or (not match[1] and not match[2]):
        return None
    if not match[1]:  # the last N bytes
        return max(size - int(match[2]), 0), size
    start = int(match[1])
    end = min(int(match[2]) + 1, size) if match[2] else size
    if start >= size or end <= start:
        raise ValueError(f"range starts at {start}, the file has {size} bytes")
    return start, end


def result_response(
    files: ResultFiles, filename: str, media_type: str, request: Request, downloads: str, ttl_s: float
) -> Response:
    """The response that downloads result ``filename``.

    Raises:
        FileNotFoundForJob: the object is gone (deleted, or removed by retention).
    """
    local = files.local_path(filename)
    if local is not None:
        if not local.is_file():
            raise FileNotFoundForJob(f"the file {filename!r} is gone (deleted or past retention)")
        return FileResponse(local, media_type=media_type, filename=filename)
    info = files.store.info(files.key(filename))
    if info is None:
        raise FileNotFoundForJob(f"the file {filename!r} is gone (deleted or past retention)")
    if downloads == "presigned":
        url = files.store.presigned_get(files.key(filename), ttl_s)
        if url is not None:
            return RedirectResponse(url, status_code=307)
    disposition = {"content-disposition": f'attachment; filename="{filename}"', "accept-ranges": "bytes"}
    try:
        wanted = byte_range(request.headers.get("range"), info.size)
    except ValueError:
        return Response(status_code=416, headers={"content-range": f"bytes */{info.size}"})
    start, end = wanted or (0, info.size)
    headers = {**disposition, "content-length": str(end - start)}
    if wanted is not None:
        headers["content-range"] = f"bytes {start}-{end - 1}/{info.size}"
    body = files.store.iter_range(files.key(filename), start, end) if end > start else iter(())
    return StreamingResponse(body, status_code=206 if wanted else 200, media_type=media_type, headers=headers)


@contextmanager
def local_copy(files: ResultFiles, filename: str) -> Iterator[Path]:
    """A local file with ``filename``'s content, for work that needs a path (previews): the file
    itself on a local store, a temporary copy of a bucket's object otherwise.

    Raises:
        FileNotFoundForJob: the object is gone.
    """
    local = files.local_path(filename)
    if local is not None:
        yield local
        return
    try:
        data = files.store.get_bytes(files.key(filename))
    except FileNotFoundError:
        raise FileNotFoundForJob(f"the file {filename!r} is gone (deleted or past retention)") from None
    with tempfile.TemporaryDirectory(prefix="wan-serve-preview-") as folder:
        path = Path(folder) / filename
        path.write_bytes(data)
        yield path


def preview(make, files: ResultFiles, filename: str) -> bytes:
    """``make(path)`` (a JPEG preview of a result, media/previews.py) of result ``filename``."""
    with local_copy(files, filename) as path:
        return make(path)
