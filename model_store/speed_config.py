"""How a variant trades output fidelity for speed: named speed profiles, each choosing a step cache
and an attention backend. The ``speed:`` block of a variant YAML.

Only the config lives here (no torch), so the ingress and the CLI read it cheaply;
``model_store/speed_modes.py`` checks it against the pipeline and the device and applies it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Step caches of diffusers' hooks that a profile may name.
#:
#: - first_block: ``FirstBlockCacheConfig``. Each step runs the first transformer block; when its
#:   output changed less than ``threshold`` (relative L1) since the last full step, the other
#:   blocks are skipped and their last residual reused.
#: - taylor_seer: ``TaylorSeerCacheConfig``. Every ``cache_interval``-th step runs in full after
#:   ``disable_cache_before_step``; the steps between predict each block's output from a Taylor
#:   expansion of its past outputs.
CacheKind = Literal["first_block", "taylor_seer"]


class StepCache(BaseModel):
    """One step cache and its settings. Applied to every transformer of the pipeline (both experts
    of A14B, each with its own state, so each counts its own share of the steps)."""

    model_config = ConfigDict(extra="forbid")

    kind: CacheKind = Field(description="Which diffusers cache hook (see CacheKind).")
    threshold: float = Field(
        default=0.05,
        gt=0,
        description="first_block: relative L1 change of the first block's output below which the other "
        "blocks are skipped. diffusers' default is 0.05; higher skips more and changes the output more.",
    )
    cache_interval: int = Field(
        default=5, ge=2, description="taylor_seer: every cache_interval-th step is computed in full."
    )
    disable_cache_before_step: int = Field(
        default=3, ge=1, description="taylor_seer: steps computed in full before predictions start."
    )


class SpeedProfile(BaseModel):
    """One named speed profile."""

    model_config = ConfigDict(extra="forbid")

    description: str = Field(default="", description="One line for humans: what it costs and what it gains.")
    cache: StepCache | None = Field(default=None, description="The step cache; None computes every step in full.")
    attention_backend: str | None = Field(
        default=None,
        description="diffusers attention backend (set_attention_backend): native, flash, _flash_3, sage, flex "
        "...; None keeps the default (native, torch's scaled_dot_product_attention). Refused at start when "
        "its package or GPU generation is missing.",
    )


class SpeedConfig(BaseModel):
    """The ``speed:`` block of a variant config: its profiles and the one requests get by default."""

    model_config = ConfigDict(extra="forbid")

    default: str = Field(default="quality", description="The profile a request that names none runs.")
    profiles: dict[str, SpeedProfile] = Field(
        default_factory=lambda: {"quality": SpeedProfile(description="every step in full (no cache)")},
        description="Profile name -> profile. Names are what requests send as ``speed``.",
    )

    @model_validator(mode="after")
    def _default_exists(self) -> SpeedConfig:
        if self.default not in self.profiles:
            raise ValueError(f"speed.default {self.default!r} is not among speed.profiles {sorted(self.profiles)}")
        return self
