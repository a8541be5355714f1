"""Fit plans shared between a variant's replicas and the router, through ``<data_dir>/fit/``.

A generator replica writes its FitPlan (model_store/fit_check.py) once it has loaded; the router
reads it to refuse, before queueing, a request that would not fit, and the replica checks again
before it runs one. The newest plan of a variant wins: its replicas run on one kind of device.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from jobs.config import make_private_dir
from jobs.errors import RequestTooLarge
from jobs.model import OUTPUT_FORMATS, JobSpec
from model_store.fit_check import FitPlan, gib


def write_fit_plan(plan: FitPlan, fit_dir: Path) -> Path:
    """Write ``plan`` to ``fit_dir/<variant>.json`` atomically (a temporary file renamed over it)."""
    make_private_dir(fit_dir)
    path = fit_dir / f"{plan.variant}.json"
    fd, tmp = tempfile.mkstemp(dir=fit_dir, prefix=f".{plan.variant}.")
    with os.fdopen(fd, "w") as f:
        f.write(plan.model_dump_json(indent=2))
    os.replace(tmp, path)
    return path


class FitPlanCache:
    """Reads plans from their files, again only when a file changed (its mtime)."""

    def check(self, fit_dir: Path, spec: JobSpec) -> None:
        """Refuse ``spec`` when its variant's plan in ``fit_dir`` says it would not fit (no plan yet: no check).

        Raises:
            RequestTooLarge: see ``check_request_fits``.
        """
        plan = self.get(fit_dir / f"{spec.variant}.json")
        if plan is not None:
            check_request_fits(plan, spec)

    def __init__(self) -> None:
        self._cache: dict[Path, tuple[int, FitPlan]] = {}

    def get(self, path: Path) -> FitPlan | None:
        """The plan in ``path``, or None when there is none (no replica has loaded yet) or it is unreadable."""
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        cached = self._cache.get(path)
        if cached is None or cached[0] != mtime:
            try:
                cached = (mtime, FitPlan.model_validate_json(path.read_text()))
            except (OSError, ValueError):
                return None
            self._cache[path] = cached
        return cached[1]


def check_request_fits(plan: FitPlan, spec: JobSpec) -> None:
    """Raise when ``spec`` (at its pipeline size) would not fit ``plan``'s budget.

    Raises:
        RequestTooLarge: naming the estimate, the budget and the most frames that fit at that size.
    """
    p = spec.params
    if plan.fits(p.width, p.height, p.num_frames):
        return
    image = OUTPUT_FORMATS[spec.output_format].kind == "image"
    most = 0 if image else plan.max_frames(p.width, p.height, plan.vae_temporal)
    advice = (
        f"at this size at most {most} frames fit"
        if most
        else f"not even one {'image' if image else 'frame'} fits at this size; ask for a smaller size"
    )
    need = gib(plan.peak_bytes(p.width, p.height, p.num_frames))
    what = "an image" if image else f"{p.num_frames} frames"
    raise RequestTooLarge(
        f"{spec.variant}: {what} at {p.width}x{p.height} {'needs' if image else 'need'} {need} "
        f"of device memory and its replica ({plan.device}; {plan.mode}) has {gib(plan.budget_bytes)}: {advice}, "
        "or the operator can choose a lighter memory mode",
        field="size" if image else "num_frames",
        max_num_frames=most,
    )
