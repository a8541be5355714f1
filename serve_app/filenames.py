"""Sanitizing user-chosen output filenames."""

from __future__ import annotations

import re

from deployments.errors import ValidationFailed

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_FILENAME_BYTES = 200


#: Extensions of the files this service writes (deployments/jobs.py OUTPUT_EXTENSIONS).
RESULT_EXTENSIONS = (".mp4", ".webm", ".zip")


def sanitize_filename(name: str, extension: str = ".mp4") -> str:
    """Turn a user's filename into a safe result file name in the output folder.

    Characters other than letters, digits, ``.``, ``_`` and ``-`` become ``_``. The name
    ends in ``extension`` (``.mp4``, ``.webm`` or ``.zip``, from the output format): another
    result extension is replaced, anything else gets ``extension`` appended.

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
    if not stem.lower().endswith(extension):
        other = next((ext for ext in RESULT_EXTENSIONS if stem.lower().endswith(ext)), None)
        stem = (stem[: -len(other)] if other and len(stem) > len(other) else stem) + extension
    if len(stem.encode()) > MAX_FILENAME_BYTES:
        raise ValidationFailed(f"filename is longer than {MAX_FILENAME_BYTES} bytes", field="filename")
    return stem
