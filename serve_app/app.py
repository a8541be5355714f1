"""The app builder that serve_config.yaml names: ``serve_app.app:build_app``.

Graph: Ingress -> Router -> one Generator deployment per variant.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray.serve import Application

from deployments.generator import Generator
from deployments.router import Router, RouterConfig
from deployments.webhooks import WebhookConfig, check_secret, load_or_create_secret
from model_store.variants import load_variant
from serve_app.ingress import Ingress, generator_deployment_name
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
    configs = {name: load_variant(name) for name in args.variants}
    generators = {
        name: Generator.options(
            name=generator_deployment_name(name),
            num_replicas=cfg.deployment.num_replicas,
            ray_actor_options={"num_gpus": cfg.deployment.num_gpus, "num_cpus": cfg.deployment.num_cpus},
        ).bind(cfg, str(output_dir))
        for name, cfg in configs.items()
    }
    router = Router.bind(
        RouterConfig(
            db_path=str(data_dir / "jobs.db"),
            output_dir=str(output_dir),
            inputs_dir=str(inputs_dir),
            max_queued_jobs=args.max_queued_jobs,
            slots={name: cfg.deployment.num_replicas for name, cfg in configs.items()},
            webhooks=args.webhooks,
            webhook_secret=secret,
        ),
        generators,
    )
    return Ingress.bind(router, configs, args.default_variant or args.variants[0], str(inputs_dir),
                        args.webhooks.allow_networks)
