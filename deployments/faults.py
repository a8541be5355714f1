"""Fault injection for tests and chaos drills: a switch the app config turns on, a file turns live.

With ``fault_file`` set in the app's args (serve_config.yaml), each generator replica reads
that JSON file at every denoising step of every job. A fault in it fires where a real failure
would happen, with the real exception type, so the service's handling is what a real failure
meets: nothing here mocks Ray or the pipeline. Without ``fault_file`` (the default) nothing is
read and nothing can fire.

The file holds a list of faults, e.g.::

    [{"variant": "ti2v-5b-tiny", "kind": "oom", "at_step": 1, "times": 2}]

Each firing decrements ``times``; a fault at 0 is spent. Writes are atomic (temp + rename).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, Field

FaultKind = Literal[
    "oom",
    "crash",
    "cuda_error",
    "error",
    "hang",
    "disk_full",
    "slow_write",
    "slow_result",
    "store_error",
    "store_crash",
]


#: Faults that fire when the result file is written, not at a denoising step.
WRITE_FAULTS = ("disk_full", "slow_write", "slow_result")

#: Faults of the router's job store (variant ``router``), around a write (jobs/store.py StoreHooks).
STORE_FAULTS = ("store_error", "store_crash")

#: The ``variant`` of the router's faults.
ROUTER = "router"


class Fault(BaseModel):
    """One injected failure."""

    variant: str = Field(description="Variant whose generator replicas fire it, or 'router' for the store faults.")
    kind: FaultKind = Field(
        description=(
            "oom: torch.OutOfMemoryError at the step; crash: the replica process exits (os._exit) at the step; "
            "cuda_error: torch.AcceleratorError as CUDA raises it, after which the pipeline counts as unusable; "
            "error: a RuntimeError; hang: the step sleeps hang_s seconds; disk_full: OSError(ENOSPC) when the "
            "result file is written; slow_write: writing the result file starts hang_s seconds late; slow_result: "
            "the result is reported hang_s seconds after its file is complete; store_error (router): the job "
            "store's next matching write raises sqlite3.OperationalError and does not happen; store_crash "
            "(router): the router process exits right after the matching write commits."
        )
    )
    at_step: int = Field(
        default=1,
        ge=0,
        description="Denoising step (1 = after the first) it fires at; ignored for disk_full and slow_write.",
    )
    times: int = Field(default=1, ge=0, description="Firings left.")
    hang_s: float = Field(default=3600.0, ge=0, description="Seconds a hang lasts.")
    op: str | None = Field(
        default=None,
        description="Store faults: the write they match (insert, update, delete, add_webhook_message, ...); None: any.",
    )
    status: str | None = Field(default=None, description="Store faults on an update: the job status it must set.")


class FaultSwitch:
    """Reads ``path`` and fires the faults meant for ``variant``. A None path disables it."""

    _lock = threading.Lock()  # threads of one replica; flock below serializes replicas

    def __init__(self, path: str | Path | None, variant: str) -> None:
        self.path = Path(path) if path else None
        self.variant = variant

    def _take(self, match) -> Fault | None:
        """The first live fault that ``match`` accepts, with one firing spent (written back)."""
        if self.path is None or not self.path.exists():
            return None
        with self._lock, open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            faults = [Fault.model_validate(f) for f in json.loads(self.path.read_text() or "[]")]
            for fault in faults:
                if fault.variant == self.variant and fault.times > 0 and match(fault):
                    fault.times -= 1
                    write_faults(self.path, faults)
                    return fault
        return None

    def at_step(self, step: int) -> None:
        """Fire a step fault for ``step``, if one is armed.

        Raises:
            torch.OutOfMemoryError, torch.AcceleratorError, RuntimeError: the injected failure.
        """
        fault = self._take(lambda f: f.kind not in WRITE_FAULTS + STORE_FAULTS and f.at_step == step)
        if fault is None:
            return
        if fault.kind == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected fault)")
        if fault.kind == "crash":
            os._exit(70)  # the process dies as a segfaulting kernel would take it: no cleanup, no reply
        if fault.kind == "cuda_error":
            raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered (injected fault)")
        if fault.kind == "error":
            raise RuntimeError("injected fault")
        if fault.kind == "hang":
            time.sleep(fault.hang_s)

    def on_write(self) -> None:
        """Fire a write fault, if one is armed: disk_full raises, slow_write sleeps ``hang_s``.

        Raises:
            OSError: errno ENOSPC.
        """
        fault = self._take(lambda f: f.kind in ("disk_full", "slow_write"))
        if fault is None:
            return
        if fault.kind == "disk_full":
            raise OSError(errno.ENOSPC, "No space left on device (injected fault)")
        time.sleep(fault.hang_s)


def after_write_delay(switch: FaultSwitch) -> None:
    """Fire a slow_result fault, if one is armed: sleep ``hang_s`` after the result file is complete."""
    fault = switch._take(lambda f: f.kind == "slow_result")
    if fault is not None:
        time.sleep(fault.hang_s)


class StoreFaults:
    """The router's fault switch as the job store's hooks (jobs/store.py StoreHooks)."""

    def __init__(self, switch: FaultSwitch) -> None:
        self.switch = switch

    def _take(self, kind: str, op: str, fields: dict) -> Fault | None:
        return self.switch._take(
            lambda f: (
                f.kind == kind
                and f.op in (None, op)
                and f.status in (None, getattr(fields.get("status"), "value", fields.get("status")))
            )
        )

    def before(self, op: str, fields: dict) -> None:
        """Raises sqlite3.OperationalError when a store_error matches (the write does not happen)."""
        if self._take("store_error", op, fields) is not None:
            raise sqlite3.OperationalError("disk I/O error (injected fault)")

    def after(self, op: str, fields: dict) -> None:
        """Exits the process when a store_crash matches (the write has committed)."""
        if self._take("store_crash", op, fields) is not None:
            os._exit(70)


def write_faults(path: Path, faults: Sequence[Fault | dict]) -> None:
    """Replace the fault file atomically with ``faults``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = [f.model_dump() if isinstance(f, Fault) else Fault.model_validate(f).model_dump() for f in faults]
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)
