"""How a variant trades output fidelity for speed: named speed profiles, each choosing a step cache,
an attention backend or a distilled LoRA, and regional compile for the whole replica. The
``speed:`` block of a variant YAML.

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
#: - mag: ``MagCacheConfig``. Skips the block stack while the accumulated drift predicted from the
#:   checkpoint's calibrated magnitude ratios stays under ``threshold`` (at most ``max_skip_steps``
#:   steps in a row, none in the first ``retention_ratio`` of the steps). Needs ``mag_ratios``,
#:   from ``wan-serve models calibrate-magcache``.
#: - sea: ``SeaCacheConfig``. Skips the block stack while a spectral indicator of the latents
#:   changed less than ``threshold``; needs a pipeline that passes each step's index and sigma to
#:   the transformer (model_store/speed_modes.py ``SEA_CACHE_PIPELINES``).
CacheKind = Literal["first_block", "taylor_seer", "mag", "sea"]

#: The pipeline components a MagCache calibration is kept for: A14B's high-noise expert
#: (``transformer``) and low-noise expert (``transformer_2``); one-expert variants use the first.
MAG_RATIO_COMPONENTS = ("transformer", "transformer_2")


class StepCache(BaseModel):
    """One step cache and its settings. Applied to every transformer of the pipeline (both experts
    of A14B, each with its own state, so each counts its own share of the steps)."""

    model_config = ConfigDict(extra="forbid")

    kind: CacheKind = Field(description="Which diffusers cache hook (see CacheKind).")
    threshold: float | None = Field(
        default=None,
        gt=0,
        description="first_block, mag, sea: the cache's skip threshold; None takes diffusers' default for "
        "the kind (first_block 0.05, the relative L1 change of the first block's output; mag 0.06, the "
        "accumulated magnitude error; sea 0.25, the accumulated spectral change). Higher skips more and "
        "changes the output more.",
    )
    cache_interval: int = Field(
        default=5, ge=2, description="taylor_seer: every cache_interval-th step is computed in full."
    )
    disable_cache_before_step: int = Field(
        default=3, ge=1, description="taylor_seer: steps computed in full before predictions start."
    )
    max_skip_steps: int = Field(
        default=3, ge=1, description="mag: most consecutive steps skipped (K in the MagCache paper; diffusers: 3)."
    )
    retention_ratio: float = Field(
        default=0.2,
        ge=0,
        lt=1,
        description="mag: fraction of each transformer's steps computed in full first (diffusers: 0.2; the "
        "MagCache authors use 0.2 for TI2V-5B, 0.4 for T2V-A14B and 0.1 for I2V-A14B).",
    )
    mag_ratios: dict[str, list[float]] | None = Field(
        default=None,
        description="mag: per pipeline component (transformer, and transformer_2 for A14B's low-noise expert) "
        "the mean ratio of each step's residual norm to the previous step's, calibrated on this checkpoint by "
        "`wan-serve models calibrate-magcache`; stretched to a job's step count by nearest neighbour.",
    )
    max_consecutive_cached: int = Field(
        default=2, ge=0, description="sea: most consecutive steps served from the cache (0: no limit; diffusers: 2)."
    )

    @model_validator(mode="after")
    def _mag_is_calibrated(self) -> StepCache:
        if self.kind == "mag":
            if not self.mag_ratios:
                raise ValueError(
                    "cache kind mag needs mag_ratios calibrated on this checkpoint: run `wan-serve models "
                    "calibrate-magcache <variant>` and paste the block it prints"
                )
            unknown = sorted(set(self.mag_ratios) - set(MAG_RATIO_COMPONENTS))
            if unknown:
                raise ValueError(f"mag_ratios keys must be among {list(MAG_RATIO_COMPONENTS)}; got {unknown}")
        elif self.mag_ratios is not None:
            raise ValueError(f"mag_ratios is for cache kind mag, not {self.kind}")
        return self


class HubLora(BaseModel):
    """Where the model store pulls a distilled LoRA from: per expert, one file of a Hugging Face repo
    at a pinned revision."""

    model_config = ConfigDict(extra="forbid")

    repo_id: str = Field(description="Hugging Face repo id, e.g. lightx2v/Wan2.2-Lightning.")
    revision: str = Field(description="The commit the files are pinned to (40 hex digits).", pattern=r"^[0-9a-f]{40}$")
    files: dict[Literal["high_noise", "low_noise"], str] = Field(
        description="Expert -> path of its LoRA file in the repo; one-expert variants name high_noise only.",
        min_length=1,
    )


class DistilledLora(BaseModel):
    """A step-distilled LoRA (Wan2.2-Lightning): the job runs ``num_inference_steps`` steps with CFG
    off, on a flow-matching Euler schedule shifted by ``flow_shift``, with the LoRA on each expert.

    Defaults are lightx2v's Wan2.2-Lightning settings (its wan/configs/wan_t2v_A14B.py: sample_steps 4,
    sample_shift 5.0, sample_guide_scale 1.0 on both experts; its Euler flow-matching solver)."""

    model_config = ConfigDict(extra="forbid")

    adapter: str = Field(description="Name of the LoRA adapter in the model store (loras/<adapter>).")
    source: HubLora | None = Field(
        default=None,
        description="Where `wan-serve models pull` and a replica missing the adapter fetch it from; None: the "
        "adapter must already be in the model store.",
    )
    num_inference_steps: int = Field(default=4, ge=1, description="The step count the LoRA was distilled for.")
    flow_shift: float = Field(
        default=5.0, gt=0, description="Shift of FlowMatchEulerDiscreteScheduler for these steps (Lightning: 5.0)."
    )
    scale: float = Field(default=1.0, gt=0, description="LoRA scale (1.0 as distilled).")


class SpeedProfile(BaseModel):
    """One named speed profile: a step cache, an attention backend, or a distilled LoRA (which
    changes the step count and turns CFG off, so it cannot be combined with a cache)."""

    model_config = ConfigDict(extra="forbid")

    description: str = Field(default="", description="One line for humans: what it costs and what it gains.")
    cache: StepCache | None = Field(default=None, description="The step cache; None computes every step in full.")
    attention_backend: str | None = Field(
        default=None,
        description="diffusers attention backend (set_attention_backend): native, flash, _flash_3, sage, flex "
        "...; None keeps the default (native, torch's scaled_dot_product_attention). Refused at start when "
        "its package or GPU generation is missing.",
    )
    distilled: DistilledLora | None = Field(
        default=None, description="A step-distilled LoRA; None runs the base model at the request's steps."
    )

    @model_validator(mode="after")
    def _distilled_alone(self) -> SpeedProfile:
        if self.distilled is not None and self.cache is not None:
            raise ValueError("a distilled profile runs few steps and caches nothing; drop its cache")
        return self


class RegionalCompile(BaseModel):
    """``torch.compile`` of each transformer's repeated blocks (diffusers ``compile_repeated_blocks``),
    done once per replica during its warm-up, so every job and profile runs compiled."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        default="default", description="torch.compile mode."
    )
    fullgraph: bool = Field(
        default=False,
        description="Refuse graph breaks inside a block: the fastest graphs (diffusers recommends it), but dynamo "
        "cannot trace the step caches' hooks, so it is refused beside a profile with a cache.",
    )
    dynamic: bool = Field(
        default=True,
        description="Compile for symbolic shapes, so a job at another size or frame count than the warm-up "
        "does not recompile; False specializes each shape (faster kernels, a recompile per new shape).",
    )


class SpeedConfig(BaseModel):
    """The ``speed:`` block of a variant config: its profiles and the one requests get by default."""

    model_config = ConfigDict(extra="forbid")

    default: str = Field(default="quality", description="The profile a request that names none runs.")
    profiles: dict[str, SpeedProfile] = Field(
        default_factory=lambda: {"quality": SpeedProfile(description="every step in full (no cache)")},
        description="Profile name -> profile. Names are what requests send as ``speed``.",
    )
    compile: RegionalCompile | None = Field(
        default=None, description="Regional compile for the whole replica; None runs eagerly."
    )

    @model_validator(mode="after")
    def _default_exists(self) -> SpeedConfig:
        if self.default not in self.profiles:
            raise ValueError(f"speed.default {self.default!r} is not among speed.profiles {sorted(self.profiles)}")
        cached = [name for name, p in self.profiles.items() if p.cache is not None]
        if self.compile is not None and self.compile.fullgraph and cached:
            raise ValueError(
                f"speed.compile.fullgraph cannot trace the step cache hooks of profile {', '.join(cached)}: "
                "set compile.fullgraph: false (graph breaks at the hooks), or drop those profiles"
            )
        return self
