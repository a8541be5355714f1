"""The folder of result files: where a job's file lives, whether it is there, removing it."""

from __future__ import annotations

from pathlib import Path

from jobs.config import make_private_dir
from jobs.filenames import DEFAULT_NAME


class ResultFiles:
    """Result files directly under ``folder``; names are the jobs' sanitized file names."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        make_private_dir(self.folder)

    def path(self, filename: str) -> Path:
        """Where ``filename`` is (or would be) written."""
        return self.folder / filename

    def exists(self, filename: str | None) -> bool:
        return bool(filename) and self.path(filename).is_file()  # type: ignore[arg-type]

    def size(self, filename: str) -> int | None:
        """Bytes of the file, or None when it is not there."""
        try:
            return self.path(filename).stat().st_size
        except FileNotFoundError:
            return None

    def default_named(self) -> list[str]:
        """Names of the finished files here that have a default name (jobs/filenames.py)."""
        return [p.name for p in self.folder.iterdir() if DEFAULT_NAME.match(p.name)]

    def age_s(self, filename: str, now: float) -> float:
        """Seconds since the file was last written (0 when it is gone)."""
        try:
            return now - self.path(filename).stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def remove(self, filename: str | None) -> bool:
        """Delete the file; False when there was none."""
        if not filename:
            return False
        path = self.path(filename)
        if path.is_file():
            path.unlink()
            return True
        return False
