"""The folder of result files: where a job's file lives, whether it is there, removing it."""

from __future__ import annotations

from pathlib import Path


class ResultFiles:
    """Result files directly under ``folder``; names are the jobs' sanitized file names."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

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

    def remove(self, filename: str | None) -> bool:
        """Delete the file; False when there was none."""
        if not filename:
            return False
        path = self.path(filename)
        if path.is_file():
            path.unlink()
            return True
        return False
