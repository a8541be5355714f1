"""Names of result files: the default name a generator gives a job's file, and the sanitized
form of a name a caller chose."""

from __future__ import annotations

import re
from datetime import datetime

from jobs.errors import ValidationFailed
from jobs.model import RESULT_EXTENSIONS

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

#: Longest result file name, bytes: well under the 255-byte name limit of ext4, XFS and S3 keys' segments.
MAX_FILENAME_BYTES = 200


#: Default result names: ``result_{cpu|gpuN}_{YYYY-mm-dd_HH-MM-SS}_{job id}{extension}``. They
#: carry the whole job id (32 hex digits), so two jobs never share one; a caller's filename may
#: not take this form, so no caller can reserve another job's default name.
DEFAULT_NAME = re.compile(
    r"^result_(cpu|gpu\d+)_\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}_(?P<job>[0-9a-f]{32})("
    + "|".join(re.escape(e) for e in RESULT_EXTENSIONS)
    + ")$",
    re.IGNORECASE,
)


def default_name_job(filename: str) -> str | None:
    """The job id in a default result name, or None for any other name."""
    match = DEFAULT_NAME.match(filename)
    return match.group("job").lower() if match else None


def default_filename(gpu_id: str, job_id: str, now: datetime | None = None, extension: str = ".mp4") -> str:
    """``result_gpu{gpu}_{YYYY-mm-dd_HH-MM-SS}_{job id}.mp4``; on a CPU replica ``result_cpu_...``.

    ``extension`` follows the output format (``.webm``, ``.zip``). Unique per job (DEFAULT_NAME).
    """
    stamp = (now or datetime.now()).strftime("%Y-%m-%d_%H-%M-%S")
    device = "cpu" if gpu_id == "cpu" else f"gpu{gpu_id}"
    return f"result_{device}_{stamp}_{job_id}{extension}"


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


def caller_filename(name: str, extension: str = ".mp4") -> str:
    """``sanitize_filename`` for a name a caller asks a new job's file to take.

    Raises:
        ValidationFailed: as ``sanitize_filename``, or the name has the form of a default name
            (DEFAULT_NAME), which belongs to another job.
    """
    stem = sanitize_filename(name, extension)
    if DEFAULT_NAME.match(stem):
        raise ValidationFailed(
            f"filename {name!r} has the form of the service's default names (result_<device>_<time>_<job id>), "
            "which belong to other jobs; choose another name",
            field="filename",
        )
    return stem
