"""Process settings of the model store, read from ``WAN_SERVE_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class StoreSettings(BaseSettings):
    """Where variant configs and model weights live on this host."""

    model_config = SettingsConfigDict(env_prefix="WAN_SERVE_")

    model_dir: Path = Field(
        default=PROJECT_ROOT / "models",
        description="Folder holding local weights; a variant's relative `local_path` resolves against it "
        "(env WAN_SERVE_MODEL_DIR).",
    )
    pull_attempts: int = Field(
        default=4,
        ge=1,
        description="Attempts of one `models pull` before it gives up, each resuming the last "
        "(env WAN_SERVE_PULL_ATTEMPTS).",
    )
    configs_dir: Path = Field(
        default=PROJECT_ROOT / "configs",
        description="Folder of variant YAML files, one per variant (env WAN_SERVE_CONFIGS_DIR).",
    )
