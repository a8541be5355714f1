"""Process settings of the service, read from ``WAN_SERVE_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from model_store.settings import PROJECT_ROOT


class ServiceSettings(BaseSettings):
    """Where the service keeps its state on this host."""

    model_config = SettingsConfigDict(env_prefix="WAN_SERVE_")

    data_dir: Path = Field(
        default=PROJECT_ROOT / "var",
        description="Holds jobs.db (the SQLite job store, unless WAN_SERVE_DATABASE_URL is set) and the objects "
        "(inputs/, outputs/, fit/, unless WAN_SERVE_STORAGE_URL is set) (env WAN_SERVE_DATA_DIR).",
    )
    storage_url: str | None = Field(
        default=None,
        description="Object store of inputs and results (env WAN_SERVE_STORAGE_URL): a folder, or s3://bucket/prefix "
        "with the AWS_* environment variables. Unset: the data folder.",
    )
    database_url: SecretStr | None = Field(
        default=None,
        description="The job store (env WAN_SERVE_DATABASE_URL): postgresql://user:password@host:5432/db, or "
        "sqlite:////absolute/path.db. Unset: <data_dir>/jobs.db, a SQLite file.",
    )
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="Standard Webhooks signing secret, 'whsec_' + base64 of 24 to 64 bytes (env "
        "WAN_SERVE_WEBHOOK_SECRET). Unset: the service creates one in <data_dir>/webhook_secret (mode 0600) "
        "on first start and keeps using it.",
    )
    retention_days: float | None = Field(
        default=None,
        gt=0,
        validation_alias=AliasChoices("WAN_SERVE_RETENTION_DAYS", "RETENTION_DAYS"),
        description="Ended jobs are purged with their files this many days after they end (env "
        "WAN_SERVE_RETENTION_DAYS or RETENTION_DAYS). Unset: kept until deleted.",
    )
    max_output_gib: float | None = Field(
        default=None,
        gt=0,
        description="Result files beyond this many GiB in all are deleted, oldest first "
        "(env WAN_SERVE_MAX_OUTPUT_GIB). Unset: no cap.",
    )
    max_request_bytes: int = Field(
        default=300 * 2**20,
        ge=2**20,
        description="Largest multipart request body (uploads and fields together), bytes (env "
        "WAN_SERVE_MAX_REQUEST_BYTES); refused with 413 from Content-Length or as it streams in, in Ray "
        "Serve's proxy and in the ingress (serve_app/body_limit.py). Default 300 MiB: one video at the "
        "default max_upload_bytes (256 MiB) with a mask, images and fields. JSON bodies are bounded at 1 MiB.",
    )
