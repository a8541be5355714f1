"""The app builder that serve_config.yaml names: ``serve_app.app:build_app``.

Graph: Ingress -> Router -> one Generator deployment per variant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from ray.serve import Application

from auth.signed_urls import DEFAULT_FILE_URL_TTL_S, derive_key
from deployments.generator import Generator
from deployments.replica_status import generator_deployment_name, replica_start_s
from deployments.router import Router
from deployments.router_config import RouterConfig
from jobs.circuit_breaker import CircuitConfig
from jobs.config import DataLayout, QueuePolicy, RetentionPolicy, make_private_dir
from jobs.engine import EngineConfig
from model_store.settings import StoreSettings
from model_store.variants import VariantConfig, load_variant
from serve_app.images.serving import DEFAULT_IMAGE_WAIT_S
from serve_app.ingress import INGRESS_MAX_ONGOING_REQUESTS, Ingress
from serve_app.settings import ServiceSettings
from webhooks.sender import WebhookConfig, check_secret, load_or_create_secret

PolicyT = TypeVar("PolicyT", bound=BaseModel)


class AppArgs(QueuePolicy, RetentionPolicy):
    """Arguments of ``build_app`` (the ``args:`` block of serve_config.yaml). The queue and retention
    fields come from ``QueuePolicy`` and ``RetentionPolicy`` (jobs/config.py)."""

    model_config = ConfigDict(extra="forbid")

    variants: list[str] = Field(
        default=["ti2v-5b-tiny", "t2v-a14b-tiny", "i2v-a14b-tiny", "vace-14b-tiny", "qwen-image-edit-tiny"],
        min_length=1,
        description="Variants to deploy, by configs/<name>.yaml; each gets its own generator deployment.",
    )
    default_variant: str | None = Field(
        default=None, description="Variant used when a request names none; default: the first."
    )
    data_dir: Path | None = Field(
        default=None,
        description="State folder (jobs.db, outputs/, inputs/, fit/); default WAN_SERVE_DATA_DIR or ./var.",
    )
    storage_url: str | None = Field(
        default=None,
        description="Object store of inputs and results: a local folder, or s3://bucket/prefix (AWS S3, GCS's S3 "
        "interface, MinIO, Ceph; credentials and endpoint from the AWS_* environment variables); default "
        "WAN_SERVE_STORAGE_URL, else the data folder.",
    )
    downloads: Literal["proxy", "presigned"] = Field(
        default="proxy",
        description="How a result is downloaded from a bucket: proxy (the ingress streams it, with Range) or "
        "presigned (a 307 redirect to a presigned URL valid for file_url_ttl_s). A local folder is always proxied.",
    )
    control_resources: dict[str, float] = Field(
        default={},
        description="Custom Ray resources the ingress and the router each take, e.g. {head_node: 0.01} to keep them "
        "on the nodes started with that resource (the CPU head group), away from the GPU nodes.",
    )
    job_store_url: SecretStr | None = Field(
        default=None,
        description="The job store: postgresql://user:password@host:5432/db (several nodes) or "
        "sqlite:////absolute/path.db; default WAN_SERVE_DATABASE_URL, else <data_dir>/jobs.db.",
    )
    webhooks: WebhookConfig = Field(
        default_factory=WebhookConfig, description="Webhook delivery: allowlist, timeouts, retries."
    )
    circuit_breaker: CircuitConfig = Field(default_factory=CircuitConfig, description="Per-variant circuit breaker.")
    overrides: dict[str, dict] = Field(
        default={},
        description="Per variant, keys merged into configs/<variant>.yaml before validation, e.g. "
        "{ti2v-5b: {timeouts: {generate_s: 600}}}.",
    )
    model_dir: Path | None = Field(
        default=None,
        description="Model store folder (variant weights and loras/); default WAN_SERVE_MODEL_DIR "
        "or ./models. Relative local_paths in variant configs resolve against it.",
    )
    max_event_streams: int = Field(
        default=100,
        ge=1,
        lt=INGRESS_MAX_ONGOING_REQUESTS,
        description="Live progress streams (SSE and WebSocket) one ingress replica keeps open at once; "
        "past it, 429 too_many_streams. Below the ingress's max_ongoing_requests (200), so status calls "
        "and /health always find room.",
    )
    max_event_streams_per_key: int = Field(
        default=20,
        ge=1,
        description="Live progress streams one API key keeps open at once on one ingress replica; past it, "
        "429 too_many_streams.",
    )
    file_url_ttl_s: float = Field(
        default=DEFAULT_FILE_URL_TTL_S,
        ge=60,
        description="How long a signed download URL (file_url) stays valid, seconds; rounded up to 300 s. "
        "Status calls hand out fresh ones.",
    )
    image_wait_s: float = Field(
        default=DEFAULT_IMAGE_WAIT_S,
        gt=0,
        description="How long a synchronous /v1/images request waits for its job, seconds; past it the answer "
        "is 202 with the job's id. Below the openai package's 600 s default client timeout.",
    )
    fault_file: Path | None = Field(
        default=None,
        description="Fault injection for tests and chaos drills (deployments/faults.py): the JSON "
        "file each generator reads at every step. Leave unset in production.",
    )

    @model_validator(mode="after")
    def _default_in_variants(self) -> AppArgs:
        if self.default_variant is not None and self.default_variant not in self.variants:
            raise ValueError(f"default_variant {self.default_variant!r} is not among variants {self.variants}")
        return self


def _policy(model: type[PolicyT], args: AppArgs, **changes: Any) -> PolicyT:
    """The ``model`` part of ``args`` (its fields, same names), with ``changes``."""
    return model(**{**args.model_dump(include=set(model.model_fields)), **changes})


def replica_bundles(cfg: VariantConfig) -> dict:
    """Ray Serve options that give a parallel variant's replica one placement group bundle per rank
    (``{"CPU": num_cpus, "GPU": num_gpus}`` each; the replica takes bundle 0, its other ranks the
    rest), packed on one node; none for a one-process replica."""
    world = cfg.parallel.world_size
    if world == 1:
        return {}
    bundle = {k: v for k, v in (("CPU", cfg.deployment.num_cpus), ("GPU", cfg.deployment.num_gpus)) if v}
    bundle.update(cfg.deployment.resources)
    if not bundle:
        raise ValueError(f"variant {cfg.name}: a parallel replica needs num_cpus or num_gpus for its bundles")
    return {"placement_group_bundles": [bundle] * world, "placement_group_strategy": "STRICT_PACK"}


def replica_count(cfg: VariantConfig) -> dict:
    """Ray Serve options for how many generator replicas ``cfg`` runs: a fixed ``num_replicas``, or
    an ``autoscaling_config`` (model_store/variants.py Autoscaling)."""
    scaling = cfg.deployment.autoscaling
    if scaling is None:
        return {"num_replicas": cfg.deployment.num_replicas}
    return {"autoscaling_config": scaling.serve_config()}


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
    layout = DataLayout(data_dir=make_private_dir((args.data_dir or settings.data_dir).resolve()))
    storage_url = args.storage_url or settings.storage_url or str(layout.data_dir)
    if settings.webhook_secret is not None:
        secret = settings.webhook_secret.get_secret_value()
        check_secret(secret)
    else:
        secret = load_or_create_secret(layout.webhook_secret)
    unknown = sorted(set(args.overrides) - set(args.variants))
    if unknown:
        raise ValueError(f"overrides name variants that are not deployed: {unknown}")
    store = StoreSettings(model_dir=args.model_dir.resolve()) if args.model_dir else StoreSettings()
    configs = {name: load_variant(name, store, overrides=args.overrides.get(name)) for name in args.variants}
    generators = {
        # serve.deployment adds .options and .bind, which mypy cannot see on a decorated class.
        name: Generator.options(  # type: ignore[attr-defined]
            name=generator_deployment_name(name),
            **replica_count(cfg),
            ray_actor_options={
                "num_gpus": cfg.deployment.num_gpus,
                "num_cpus": cfg.deployment.num_cpus,
                "resources": cfg.deployment.resources,
            },
            # A replica being stopped (scale-down, redeploy) finishes its job first.
            graceful_shutdown_timeout_s=cfg.longest_job_s,
            **replica_bundles(cfg),
        ).bind(
            variant=cfg,
            layout=layout,
            fault_file=str(args.fault_file) if args.fault_file else None,
            model_dir=str(store.model_dir),
            storage_url=storage_url,
        )
        for name, cfg in configs.items()
    }
    retention = _policy(
        RetentionPolicy,
        args,
        retention_days=args.retention_days or settings.retention_days,
        max_output_gib=args.max_output_gib or settings.max_output_gib,
    )
    engine = EngineConfig(
        queue=_policy(QueuePolicy, args),
        retention=retention,
        circuit_breaker=args.circuit_breaker,
        slots={name: cfg.deployment.max_jobs for name, cfg in configs.items()},
        replica_start_s=replica_start_s(configs),
    )
    control = (
        {"ray_actor_options": {"num_cpus": 0, "resources": args.control_resources}} if args.control_resources else {}
    )
    job_store_url = args.job_store_url or settings.database_url or SecretStr(str(layout.jobs_db))
    router = Router.options(**control).bind(  # type: ignore[attr-defined]
        config=RouterConfig(
            layout=layout,
            storage_url=storage_url,
            job_store_url=job_store_url,
            engine=engine,
            webhooks=args.webhooks,
            webhook_secret=secret,
            file_url_ttl_s=args.file_url_ttl_s,
            fault_file=str(args.fault_file) if args.fault_file else None,
            min_replicas={
                name: cfg.deployment.autoscaling.min_replicas
                for name, cfg in configs.items()
                if cfg.deployment.autoscaling is not None
            },
        ),
        generators=generators,
    )
    return Ingress.options(**control).bind(  # type: ignore[attr-defined]
        router=router,
        variants=configs,
        default_variant=args.default_variant or args.variants[0],
        layout=layout,
        webhook_allow_networks=args.webhooks.allow_networks,
        webhook_allow_ports=args.webhooks.allow_ports,
        retention_days=retention.retention_days,
        model_dir=str(store.model_dir),
        max_event_streams=args.max_event_streams,
        max_event_streams_per_key=args.max_event_streams_per_key,
        # One secret for the service: download URLs are signed with a key derived from it.
        url_signing_key=derive_key(secret, "file-urls"),
        file_url_ttl_s=args.file_url_ttl_s,
        image_wait_s=args.image_wait_s,
        storage_url=storage_url,
        downloads=args.downloads,
        job_store_url=job_store_url,
    )
