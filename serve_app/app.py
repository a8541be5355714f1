"""The app builder that serve_config.yaml names: ``serve_app.app:build_app``.

Graph: Ingress -> Router -> one Generator deployment per variant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray.serve import Application

from deployments.circuit_breaker import CircuitConfig
from deployments.generator import Generator
from deployments.router import Router, RouterConfig
from deployments.webhooks import WebhookConfig, check_secret, load_or_create_secret
from model_store.settings import StoreSettings
from model_store.variants import load_variant
from deployments.replica_status import generator_deployment_name
from serve_app.ingress import Ingress
from serve_app.settings import ServiceSettings


class AppArgs(BaseModel):
    """Arguments of ``build_app`` (the ``args:`` block of serve_config.yaml)."""

    model_config = ConfigDict(extra="forbid")

    variants: list[str] = Field(
        default=["ti2v-5b-tiny", "t2v-a14b-tiny", "i2v-a14b-tiny", "vace-14b-tiny"], min_length=1,
        description="Variants to deploy, by configs/<name>.yaml; each gets its own generator deployment.",
    )
    default_variant: str | None = Field(default=None, description="Variant used when a request names none; default: the first.")
    max_queued_jobs: int = Field(default=64, ge=0, description="Waiting jobs allowed before POST answers 429 (backpressure).")
    data_dir: Path | None = Field(default=None, description="State folder (jobs.db, outputs/, inputs/); default WAN_SERVE_DATA_DIR or ./var.")
    webhooks: WebhookConfig = Field(default_factory=WebhookConfig, description="Webhook delivery: allowlist, timeouts, retries.")
    max_attempts: int = Field(default=3, ge=1, description="Times a job may be dispatched before a replica failure "
                              "or a router restart ends it with an error.")
    circuit_breaker: CircuitConfig = Field(default_factory=CircuitConfig, description="Per-variant circuit breaker.")
    retention_days: float | None = Field(default=None, gt=0, description="Purge ended jobs and their files after this "
                                         "many days; default WAN_SERVE_RETENTION_DAYS / RETENTION_DAYS, else keep.")
    max_output_gib: float | None = Field(default=None, gt=0, description="Cap on result files, GiB, oldest deleted "
                                         "first; default WAN_SERVE_MAX_OUTPUT_GIB, else none.")
    purge_interval_s: float = Field(default=600.0, gt=0, description="Seconds between two retention purges.")
    when_unavailable: Literal["queue", "refuse"] = Field(
        default="queue", description="Jobs for a variant whose generator cannot start: queue (they wait) or "
        "refuse (503 model_unavailable with the reason).")
    overrides: dict[str, dict] = Field(
        default={}, description="Per variant, keys merged into configs/<variant>.yaml before validation, e.g. "
        "{ti2v-5b: {timeouts: {generate_s: 600}}}.")
    model_dir: Path | None = Field(
        default=None, description="Model store folder (variant weights and loras/); default WAN_SERVE_MODEL_DIR "
        "or ./models. Relative local_paths in variant configs resolve against it.")
    fault_file: Path | None = Field(
        default=None, description="Fault injection for tests and chaos drills (deployments/faults.py): the JSON "
        "file each generator reads at every step. Leave unset in production.")

    @model_validator(mode="after")
    def _default_in_variants(self) -> "AppArgs":
        if self.default_variant is not None and self.default_variant not in self.variants:
            raise ValueError(f"default_variant {self.default_variant!r} is not among variants {self.variants}")
        return self


def build_app(args: dict | AppArgs | None = None) -> Application:
    """Build the wan-serve application from ``args`` (a dict from serve_config.yaml, or AppArgs).

    Raises:
        pydantic.ValidationError: bad arguments.
        model_store.variants.VariantNotFound: a variant without a config file.
        ValueError: a webhook secret (WAN_SERVE_WEBHOOK_SECRET or <data_dir>/webhook_secret) that is not
            'whsec_' + base64 of at least 24 bytes.
    """
    args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args or {})
    settings = ServiceSettings()
    data_dir = (args.data_dir or settings.data_dir).resolve()
    if settings.webhook_secret is not None:
        secret = settings.webhook_secret.get_secret_value()
        check_secret(secret)
    else:
        secret = load_or_create_secret(data_dir / "webhook_secret")
    output_dir = data_dir / "outputs"
    inputs_dir = data_dir / "inputs"
    unknown = sorted(set(args.overrides) - set(args.variants))
    if unknown:
        raise ValueError(f"overrides name variants that are not deployed: {unknown}")
    store = StoreSettings(**({"model_dir": args.model_dir.resolve()} if args.model_dir else {}))
    configs = {name: load_variant(name, store, overrides=args.overrides.get(name)) for name in args.variants}
    fault_file = str(args.fault_file) if args.fault_file else None
    generators = {
        name: Generator.options(
            name=generator_deployment_name(name),
            num_replicas=cfg.deployment.num_replicas,
            ray_actor_options={"num_gpus": cfg.deployment.num_gpus, "num_cpus": cfg.deployment.num_cpus},
            # A replica being stopped (scale-down, redeploy) finishes its job first.
            graceful_shutdown_timeout_s=cfg.longest_job_s,
        ).bind(cfg, str(output_dir), fault_file, str(data_dir / "fit"), str(store.model_dir))
        for name, cfg in configs.items()
    }
    retention_days = args.retention_days or settings.retention_days
    max_gib = args.max_output_gib or settings.max_output_gib
    router = Router.bind(
        RouterConfig(
            db_path=str(data_dir / "jobs.db"),
            output_dir=str(output_dir),
            inputs_dir=str(inputs_dir),
            max_queued_jobs=args.max_queued_jobs,
            slots={name: cfg.deployment.num_replicas for name, cfg in configs.items()},
            webhooks=args.webhooks,
            webhook_secret=secret,
            max_attempts=args.max_attempts,
            circuit_breaker=args.circuit_breaker,
            retention_days=retention_days,
            max_output_bytes=int(max_gib * 2**30) if max_gib else None,
            purge_interval_s=args.purge_interval_s,
            when_unavailable=args.when_unavailable,
            fit_dir=str(data_dir / "fit"),
        ),
        generators,
    )
    return Ingress.bind(router, configs, args.default_variant or args.variants[0], str(inputs_dir),
                        args.webhooks.allow_networks, retention_days, str(store.model_dir))
