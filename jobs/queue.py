"""The queue of jobs waiting to run: first in, first out per variant."""

from __future__ import annotations

from collections import deque


class JobQueue:
    """Queued job ids, FIFO per variant, with each job's variant kept beside it.

    Not thread-safe: the router's event loop is its only user.
    """

    def __init__(self) -> None:
        self._by_variant: dict[str, deque[str]] = {}
        self._variant_of: dict[str, str] = {}

    def __len__(self) -> int:
        """Jobs waiting, all variants together."""
        return len(self._variant_of)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._variant_of

    def push(self, job_id: str, variant: str, front: bool = False) -> None:
        """Add a job at the back of its variant's queue, or at the front (a job handed back)."""
        if job_id in self._variant_of:
            return
        line = self._by_variant.setdefault(variant, deque())
        line.appendleft(job_id) if front else line.append(job_id)
        self._variant_of[job_id] = variant

    def remove(self, job_id: str) -> bool:
        """Take a job out wherever it is; False when it was not queued."""
        variant = self._variant_of.pop(job_id, None)
        if variant is None:
            return False
        self._by_variant[variant].remove(job_id)
        return True

    def head(self, variant: str) -> str | None:
        """The job of ``variant`` that starts next, or None."""
        line = self._by_variant.get(variant)
        return line[0] if line else None

    def pop(self, variant: str) -> str:
        """Remove and return the next job of ``variant``. Raises IndexError when none waits."""
        job_id = self._by_variant[variant].popleft() if variant in self._by_variant else None
        if job_id is None:
            raise IndexError(f"no job of {variant} is queued")
        del self._variant_of[job_id]
        return job_id

    def of(self, variant: str) -> list[str]:
        """Queued jobs of ``variant``, next first."""
        return list(self._by_variant.get(variant, ()))

    def depth(self, variant: str) -> int:
        """How many jobs of ``variant`` are queued."""
        return len(self._by_variant.get(variant, ()))

    def variants(self) -> list[str]:
        """Variants with at least one queued job."""
        return [v for v, line in self._by_variant.items() if line]

    def position(self, job_id: str) -> int | None:
        """1 for the next job of its variant, 2 for the one after, ...; None when not queued."""
        variant = self._variant_of.get(job_id)
        if variant is None:
            return None
        return self._by_variant[variant].index(job_id) + 1
