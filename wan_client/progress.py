"""How a job's progress is shown: a live rich bar on a terminal, one line per change elsewhere
(a log, a pipe, a CI job), both on stderr so stdout stays for the result."""

from __future__ import annotations

from typing import Any, Protocol

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

#: Words for the job phases (serve_app's Phase values).
PHASES = {
    "loading": "loading the model",
    "encoding_prompt": "encoding the prompt",
    "denoising": "denoising",
    "decoding": "decoding frames",
    "encoding_video": "writing the video",
    "encoding_image": "writing the image",
}


def eta_text(seconds: float | None) -> str:
    """``ETA 12 s`` / ``ETA 3 min 4 s`` / ``ETA unknown``."""
    if seconds is None:
        return "ETA unknown"
    s = max(0, round(seconds))
    return f"ETA {s} s" if s < 60 else f"ETA {s // 60} min {s % 60} s"


def describe(data: dict[str, Any]) -> str:
    """One line for a status or event: where the job is, the step, the share done and the ETA."""
    status = data.get("status")
    if status == "queued":
        return f"queued · queue position {data.get('queue_position') or '?'} · {eta_text(data.get('eta_seconds'))}"
    if status == "running":
        phase = PHASES.get(data.get("phase") or "", data.get("phase") or "starting")
        step = f" · step {data['step']}/{data['total_steps']}" if data.get("phase") == "denoising" else ""
        done = round(100 * data.get("progress", 0))
        return f"running · {phase}{step} · {done}% · {eta_text(data.get('eta_seconds'))}"
    if status == "success":
        return "success · 100%"
    error = data.get("error") or {}
    return f"{status} · {error.get('message', '')}".rstrip(" ·")


class ProgressView(Protocol):
    def update(self, data: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class PlainLines:
    """Prints a line each time the description changes."""

    def __init__(self, console: Console, job_id: str) -> None:
        self.console, self.job_id, self.last = console, job_id, ""

    def update(self, data: dict[str, Any]) -> None:
        line = describe(data)
        if line != self.last:
            self.console.print(f"{self.job_id[:8]} {line}", markup=False, highlight=False, soft_wrap=True)
            self.last = line

    def close(self) -> None:
        pass


class LiveBar:
    """A rich progress bar that reads the job's progress (0..1) and its description."""

    def __init__(self, console: Console, job_id: str) -> None:
        self.progress = Progress(
            TextColumn(f"{job_id[:8]}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.description}"),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task("submitted", total=1.0)
        self.progress.start()

    def update(self, data: dict[str, Any]) -> None:
        self.progress.update(self.task, completed=float(data.get("progress", 0)), description=describe(data))

    def close(self) -> None:
        self.progress.stop()


def progress_view(console: Console, job_id: str) -> ProgressView:
    """A live bar when ``console`` is a terminal, else plain lines."""
    return LiveBar(console, job_id) if console.is_terminal else PlainLines(console, job_id)
