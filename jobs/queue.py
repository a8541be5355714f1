"""The queue of jobs waiting to run: per variant, fair between API keys, first in, first out per key.

Each variant has one lane per owner (API key). Dispatch takes lanes in turn (round-robin): the
next job is the oldest of the first owner in the rotation, and that owner then goes to the back.
So one key with a hundred queued jobs delays another key's first job by at most one job per
free slot, while each key's own jobs keep their order. With a single owner (an open service,
or one key) this is plain FIFO per variant.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable

#: The lane of jobs without an owner (an open service's).
_NO_OWNER = ""


def _lane_key(owner: str | None) -> str:
    return owner if owner is not None else _NO_OWNER


class JobQueue:
    """Queued job ids per variant, in lanes per owner, with each job's variant and owner kept beside it.

    Not thread-safe: the router's event loop is its only user.
    """

    def __init__(self) -> None:
        # variant -> owner -> lane; a dict's order is the rotation (the next owner first).
        self._lanes: dict[str, dict[str, deque[str]]] = {}
        self._where: dict[str, tuple[str, str]] = {}  # job id -> (variant, lane key)
        self._owned: Counter[str] = Counter()  # lane key -> jobs queued, all variants
        self._order: dict[str, dict[str, int]] = {}  # variant -> job id -> index in dispatch order (a cache)

    def __len__(self) -> int:
        """Jobs waiting, all variants together."""
        return len(self._where)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._where

    def push(self, job_id: str, variant: str, owner: str | None = None, front: bool = False) -> None:
        """Add a job at the back of its owner's lane, or at the front of the lane with that owner
        first in the rotation (a job handed back: it was next, and is next again)."""
        if job_id in self._where:
            return
        key = _lane_key(owner)
        lanes = self._lanes.setdefault(variant, {})
        if front:
            lane = lanes.pop(key, deque())
            lane.appendleft(job_id)
            self._lanes[variant] = {key: lane, **lanes}
        else:
            lanes.setdefault(key, deque()).append(job_id)  # a new owner joins at the back of the rotation
        self._where[job_id] = (variant, key)
        self._owned[key] += 1
        self._order.pop(variant, None)

    def _take(self, job_id: str) -> None:
        variant, key = self._where.pop(job_id)
        lanes = self._lanes[variant]
        lanes[key].remove(job_id)
        if not lanes[key]:
            del lanes[key]
        self._owned[key] -= 1
        self._order.pop(variant, None)

    def remove(self, job_id: str) -> bool:
        """Take a job out wherever it is; False when it was not queued."""
        if job_id not in self._where:
            return False
        self._take(job_id)
        return True

    def head(self, variant: str, eligible: Callable[[str | None], bool] | None = None) -> str | None:
        """The job of ``variant`` that starts next: the oldest of the first owner in the rotation
        for whom ``eligible(owner)`` holds (all, without it); None when there is none."""
        for key, lane in self._lanes.get(variant, {}).items():
            if eligible is None or eligible(key or None):
                return lane[0]
        return None

    def pop(self, variant: str, job_id: str | None = None) -> str:
        """Remove and return ``job_id`` (default: ``head(variant)``), the first of its lane, and send
        its owner to the back of the rotation. Raises IndexError when it is not first of a lane."""
        job_id = job_id if job_id is not None else self.head(variant)
        where = self._where.get(job_id or "")
        if job_id is None or where is None or where[0] != variant or self._lanes[variant][where[1]][0] != job_id:
            raise IndexError(f"{job_id!r} is not next of its owner among the queued jobs of {variant}")
        key = where[1]
        self._take(job_id)
        lanes = self._lanes[variant]
        if key in lanes:
            lanes[key] = lanes.pop(key)  # to the back of the rotation
        return job_id

    def of(self, variant: str) -> list[str]:
        """Queued jobs of ``variant`` in dispatch order (round-robin over owners), next first."""
        return list(self._positions(variant))

    def _positions(self, variant: str) -> dict[str, int]:
        cached = self._order.get(variant)
        if cached is None:
            lanes = [list(lane) for lane in self._lanes.get(variant, {}).values()]
            order = [lane[i] for i in range(max(map(len, lanes), default=0)) for lane in lanes if i < len(lane)]
            cached = self._order[variant] = {job_id: n for n, job_id in enumerate(order)}
        return cached

    def rotation(self, variant: str) -> list[str]:
        """The owners of ``variant``'s lanes in the order they take turns, the next first ("" for
        jobs without an owner)."""
        return list(self._lanes.get(variant, {}))

    def depth(self, variant: str) -> int:
        """How many jobs of ``variant`` are queued."""
        return sum(len(lane) for lane in self._lanes.get(variant, {}).values())

    def owned(self, owner: str | None) -> int:
        """How many jobs of ``owner`` are queued, all variants together."""
        return self._owned[_lane_key(owner)]

    def variants(self) -> list[str]:
        """Variants with at least one queued job."""
        return [v for v, lanes in self._lanes.items() if lanes]

    def position(self, job_id: str) -> int | None:
        """1 for the next job of its variant, 2 for the one after, ... in dispatch order; None when
        not queued."""
        where = self._where.get(job_id)
        if where is None:
            return None
        lanes = self._lanes[where[0]]
        if len(lanes) == 1:  # one key's jobs: FIFO, no need to build the round-robin order
            return lanes[where[1]].index(job_id) + 1
        return self._positions(where[0])[job_id] + 1
