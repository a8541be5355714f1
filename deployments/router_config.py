"""Settings of the router deployment, built by the app builder (serve_app/app.py) from its arguments."""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr

from auth.signed_urls import DEFAULT_FILE_URL_TTL_S
from jobs.config import DataLayout
from jobs.engine import EngineConfig
from webhooks.sender import WebhookConfig


class RouterConfig(BaseModel):
    """Settings of the router deployment, built by the app builder from its arguments."""

    layout: DataLayout = Field(description="Where inputs, results and fit plans are.")
    storage_url: str = Field(description="The object store of inputs and results (jobs/objects.py).")
    job_store_url: SecretStr = Field(
        description="The job store: a SQLite file path or a database URL (jobs/database.py database_url)."
    )
    engine: EngineConfig = Field(description="Queue, retention and circuit breaker settings, and slots per variant.")
    webhooks: WebhookConfig = Field(default_factory=WebhookConfig, description="Webhook delivery settings.")
    webhook_secret: SecretStr = Field(description="Standard Webhooks signing secret, 'whsec_' + base64.")
    file_url_ttl_s: float = Field(
        default=DEFAULT_FILE_URL_TTL_S, description="Validity of the signed file_url in webhook payloads, seconds."
    )
    min_replicas: dict[str, int] = Field(
        default={},
        description="Variant -> its autoscaling min_replicas, for the variants that autoscale (their "
        "max_replicas is the engine's slots); the replica gauge's target is their queue-driven target.",
    )
    fault_file: str | None = Field(
        default=None,
        description="The fault switch's file (deployments/faults.py), for the job store's faults; None: none can fire.",
    )
