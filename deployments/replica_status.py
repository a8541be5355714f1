"""Whether each variant's generator deployment has a running replica, and if not, why: what
/ready reports and what the router checks before queueing a job for a variant that cannot run."""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter
from collections.abc import Collection, Mapping
from typing import Literal

import ray.exceptions
from pydantic import BaseModel, Field
from ray.serve.context import _get_global_client

from jobs.errors import ModelUnavailable, exception_chain
from model_store.variants import VariantConfig

logger = logging.getLogger("ray.serve")

#: Absolute paths in an error message (a file the loader could not find, a traceback's frames);
#: replaced before the message reaches an HTTP answer.
_PATH = re.compile(r"(?<![\w.])/(?:[\w.@+-]+/)*[\w.@+-]+")

#: Seconds between two looks at the generators' deployment states.
GENERATOR_STATUS_POLL_S = 2.0

#: Deployment states in which Ray Serve has given up starting replicas or sees them failing.
FAILED_STATES = frozenset({"DEPLOY_FAILED", "UNHEALTHY"})


def replica_start_s(configs: Mapping[str, VariantConfig]) -> dict[str, float]:
    """Variant -> a new replica's expected start, seconds, for the variants that autoscale."""
    return {
        name: cfg.deployment.autoscaling.expected_start_s
        for name, cfg in configs.items()
        if cfg.deployment.autoscaling is not None
    }


def scales_to_zero(configs: Mapping[str, VariantConfig]) -> frozenset[str]:
    """The variants that may have no replica on purpose (autoscaling with min_replicas 0)."""
    return frozenset(name for name, cfg in configs.items() if cfg.deployment.scales_to_zero)


def generator_deployment_name(variant: str) -> str:
    """Ray Serve deployment name of ``variant``'s generator, e.g. ``generator-ti2v-5b``."""
    return f"generator-{variant}"


#: What a generator deployment is doing (GeneratorStatus.state).
GeneratorState = Literal["running", "scaled_to_zero", "starting", "failed"]

#: Replica states in which Ray Serve is bringing a replica up (scheduling it, or running its constructor).
STARTING_STATES = frozenset({"STARTING", "PENDING_MIGRATION", "RECOVERING"})


class GeneratorStatus(BaseModel):
    """One variant's generator deployment as Ray Serve reports it."""

    ready: bool = Field(
        description="At least one replica is running, or the variant autoscales from zero and is not failing."
    )
    state: GeneratorState = Field(
        description="running: a replica runs; scaled_to_zero: none, on purpose (autoscaling with min_replicas 0, "
        "idle); starting: a replica is being brought up; failed: Ray Serve gave up starting one or sees it failing."
    )
    running_replicas: int
    deployment_status: str = Field(description="Ray Serve's DeploymentStatus, e.g. HEALTHY, UPDATING, DEPLOY_FAILED.")
    reason: str | None = Field(
        default=None,
        description="Why it is not ready: the last line of Ray Serve's message "
        "(the constructor's error), with server paths removed.",
    )

    def refusal(self, variant: str, retry_after_s: float) -> ModelUnavailable:
        """The error a job for ``variant`` gets while this generator cannot start (``when_unavailable: refuse``)."""
        return ModelUnavailable(
            f"{variant} cannot run jobs: its generator does not start ({self.reason}); the operator "
            "must fix it (GET /ready shows the state)",
            retry_after_s=retry_after_s,
        )

    @property
    def failed(self) -> bool:
        """Ray Serve has given up starting a replica or sees them failing (not merely starting)."""
        return self.state == "failed"


def public_reason(message: str | None) -> str | None:
    """The useful line of a Ray Serve deployment message, without tracebacks or server paths.

    A failing constructor's message ends with the exception line, e.g.
    ``FileNotFoundError: weights folder for variant 'x' is missing: <path>``.
    """
    if not message:
        return None
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    line = lines[-1] if lines else message
    return _PATH.sub("<path>", line)[:500]


def serve_deployments(app_name: str) -> dict[str, dict]:
    """Deployment name -> its details in application ``app_name``, as Ray Serve's controller
    reports them: the ``deployments`` of the public ``ServeInstanceDetails`` schema (``status``,
    ``message``, ``replicas`` with each one's ``state``).

    Read as plain data, not through ``serve.status()``, which builds pydantic models of every
    application's whole config (about 50 ms of CPU on this machine, against 6 ms; the router and
    each ingress replica look every GENERATOR_STATUS_POLL_S). Blocking.

    Raises:
        KeyError: Serve is not running, or runs no application ``app_name``.
    """
    client = _get_global_client()
    details = client.get_serve_details() if client is not None else {}
    return dict(details.get("applications", {})[app_name]["deployments"])


def _value(state: object) -> str:
    """A Serve state's name (``RUNNING``, ``HEALTHY``): the details hold enums or their values."""
    return str(getattr(state, "value", state))


def generator_statuses(
    app_name: str, variants: list[str], scales_to_zero: Collection[str] = ()
) -> dict[str, GeneratorStatus]:
    """The status of each variant's generator in application ``app_name``; a variant in
    ``scales_to_zero`` (autoscaling with min_replicas 0) is ready without a replica unless it is
    failing. Blocking (asks the Serve controller); call it from a worker thread in async code."""
    deployments = serve_deployments(app_name)
    result = {}
    for name in variants:
        dep = deployments.get(generator_deployment_name(name))
        states = Counter(_value(r.get("state")) for r in dep.get("replicas") or ()) if dep else Counter()
        running = states.get("RUNNING", 0)
        status = _value(dep["status"]) if dep else "MISSING"
        starting = any(states.get(s, 0) for s in STARTING_STATES)
        state: GeneratorState
        if running:
            state = "running"
        elif status in FAILED_STATES:
            state = "failed"
        elif name in scales_to_zero and not starting and dep is not None:
            state = "scaled_to_zero"
        else:
            state = "starting"
        reason = None
        if state in ("failed", "starting"):
            reason = public_reason(dep.get("message") if dep else None) or "no generator replica is running yet"
        ready = state == "running" or (name in scales_to_zero and state != "failed")
        result[name] = GeneratorStatus(
            ready=ready, state=state, running_replicas=running, deployment_status=status, reason=reason
        )
    return result


class GeneratorWatch:
    """Keeps ``statuses`` fresh every ``poll_s`` seconds, so the router's dispatch skips (and, per
    ``when_unavailable``, its submit refuses) a variant whose generator cannot start.

    A failed look keeps the last answer (the Serve controller may be restarting); it is logged at
    warning with the reason and counted in ``errors``.
    """

    def __init__(
        self,
        app_name: str,
        variants: list[str],
        poll_s: float = GENERATOR_STATUS_POLL_S,
        scales_to_zero: Collection[str] = (),
    ) -> None:
        self.app_name, self.variants, self.poll_s = app_name, variants, poll_s
        self.scales_to_zero = frozenset(scales_to_zero)
        self.statuses: dict[str, GeneratorStatus] = {}
        self.errors = 0

    def replica_running(self, variant: str) -> bool:
        """Whether ``variant`` has a running replica, as last seen (True before the first look)."""
        status = self.statuses.get(variant)
        return status is None or status.running_replicas > 0

    def ready(self, variant: str) -> bool:
        """False while ``variant``'s generator is failing (its jobs wait until a replica runs)."""
        status = self.statuses.get(variant)
        return status is None or not status.failed

    async def run(self) -> None:
        while True:
            try:
                self.statuses = await asyncio.to_thread(
                    generator_statuses, self.app_name, self.variants, self.scales_to_zero
                )
            except Exception as exc:
                self.errors += 1
                logger.warning("generator states unreadable (%r, %d times); kept the last", exc, self.errors)
            await asyncio.sleep(self.poll_s)


def replica_died(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it wraps) says a replica's process went away (Ray's actor errors)."""
    return any(isinstance(e, ray.exceptions.RayActorError) for e in exception_chain(exc))
