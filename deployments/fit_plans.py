"""Fit plans shared between a variant's replicas and the router, through ``fit/<variant>.json`` of
the object store (jobs/objects.py), so they meet whichever node each runs on.

A generator replica writes its FitPlan (model_store/fit_check.py) once it has loaded; the router
reads it to refuse, before queueing, a request that would not fit, and the replica checks again
before it runs one. The newest plan of a variant wins: its replicas run on one kind of device.
"""

from __future__ import annotations

import time

from jobs.errors import RequestTooLarge
from jobs.model import OUTPUT_FORMATS, JobSpec
from jobs.objects import ObjectStore
from model_store.fit_check import FitPlan, gib

#: Key prefix of fit plans in the object store.
FIT = "fit/"
#: Seconds the router reuses a plan it read before looking at the store again (a plan changes only
#: when a replica of another kind of device starts).
PLAN_TTL_S = 10.0


def write_fit_plan(plan: FitPlan, store: ObjectStore) -> str:
    """Write ``plan`` as ``fit/<variant>.json`` (whole or not at all); returns its key."""
    key = f"{FIT}{plan.variant}.json"
    store.put_bytes(key, plan.model_dump_json(indent=2).encode())
    return key


class FitPlanCache:
    """Reads plans from the object store, again at most every PLAN_TTL_S seconds per variant."""

    def __init__(self, store: ObjectStore, ttl_s: float = PLAN_TTL_S) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, FitPlan | None]] = {}

    def check(self, spec: JobSpec) -> None:
        """Refuse ``spec`` when its variant's plan says it would not fit (no plan yet: no check).

        Raises:
            RequestTooLarge: see ``check_request_fits``.
        """
        plan = self.get(spec.variant)
        if plan is not None:
            check_request_fits(plan, spec)

    def get(self, variant: str) -> FitPlan | None:
        """The variant's plan, or None when there is none (no replica has loaded yet) or it is unreadable."""
        cached = self._cache.get(variant)
        if cached is not None and time.monotonic() - cached[0] < self.ttl_s:
            return cached[1]
        try:
            plan: FitPlan | None = FitPlan.model_validate_json(self.store.get_bytes(f"{FIT}{variant}.json"))
        except (OSError, ValueError):
            plan = None
        self._cache[variant] = (time.monotonic(), plan)
        return plan


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
