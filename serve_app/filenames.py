"""Sanitizing user-chosen output filenames."""

from __future__ import annotations

import re

from deployments.errors import ValidationFailed

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_FILENAME_BYTES = 200


def sanitize_filename(name: str) -> str:
    """Turn a user's filename into a safe MP4 name in the output folder.

    Characters other than letters, digits, ``.``, ``_`` and ``-`` become ``_``, and
    ``.mp4`` is appended unless the name already ends in it.

    Raises:
        ValidationFailed: the name holds a path separator or ``..``, starts with a dot,
            is empty, or is longer than 200 bytes.
    """
    if "/" in name or "\\" in name or ".." in name:
        raise ValidationFailed(
            f"filename {name!r} must be a plain file name: no path separators and no '..'", field="filename"
        )
    stem = _UNSAFE.sub("_", name.strip())
    if not stem or stem.startswith("."):
        raise ValidationFailed(f"filename {name!r} must start with a letter, digit, '_' or '-'", field="filename")
    if not stem.lower().endswith(".mp4"):
        stem += ".mp4"
    if len(stem.encode()) > MAX_FILENAME_BYTES:
        raise ValidationFailed(f"filename is longer than {MAX_FILENAME_BYTES} bytes", field="filename")
    return stem
