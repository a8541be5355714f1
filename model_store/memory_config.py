"""How a variant trades device memory for speed: quantization, offload, where the text encoder
runs, VAE tiling, and the memory budget of the fit check. The ``memory:`` block of a variant YAML.

Only the config lives here (no torch), so the router and the CLI can read it cheaply;
``model_store/memory_modes.py`` applies it and ``model_store/fit_check.py`` estimates it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Weight formats of the transformer(s) and the text encoder.
#:
#: - none: the variant's ``torch_dtype`` (bf16 by default).
#: - fp8_storage: diffusers layerwise casting, weights stored as float8_e4m3fn and upcast to
#:   ``torch_dtype`` layer by layer for compute; runs on any GPU and on CPU.
#: - fp8: torchao float8 dynamic-activation quantization (float8 matmuls); CUDA compute
#:   capability 8.9 or newer (Ada, Hopper), the first with float8 tensor cores.
#: - int8: bitsandbytes LLM.int8 on CUDA; torchao int8 weight-only on CPU.
#: - nf4: bitsandbytes 4-bit NormalFloat (CUDA only).
Quantization = Literal["none", "fp8_storage", "fp8", "int8", "nf4"]

#: Where weights wait while they are not computing.
#:
#: - none: everything on the device.
#: - model: ``enable_model_cpu_offload``, one whole component (text encoder, expert, VAE) on the
#:   device at a time.
#: - group: ``apply_group_offloading`` of the transformer(s) and the text encoder, groups of
#:   blocks (``group_offload_type: block_level``) or single layers (``leaf_level``) moved in
#:   turn, overlapped with compute on a CUDA stream where available.
#: - sequential: ``enable_sequential_cpu_offload``, every layer moved when it runs (least
#:   memory, slowest).
Offload = Literal["none", "model", "group", "sequential"]


class MemoryConfig(BaseModel):
    """The ``memory:`` block of a variant config. Every choice is checked against the replica's
    device at start (model_store/memory_modes.py ``check_mode``) and refused with a message
    naming the mode, the reason and what would work."""

    model_config = ConfigDict(extra="forbid")

    quantization: Quantization = Field(
        default="none", description="Weight format of the transformer(s): none, fp8_storage, fp8, int8 or nf4."
    )
    text_encoder_quantization: Quantization | None = Field(
        default=None, description="Weight format of the UMT5 text encoder; None: the same as quantization."
    )
    offload: Offload = Field(default="none", description="none, model, group or sequential (see Offload).")
    group_offload_type: Literal["block_level", "leaf_level"] = Field(
        default="block_level",
        description="offload: group only. block_level moves groups of transformer "
        "blocks; leaf_level moves single layers (less memory, more transfers).",
    )
    group_offload_blocks: int = Field(
        default=1, ge=1, description="offload: group, block_level only: transformer blocks per group."
    )
    group_offload_stream: bool = Field(
        default=True,
        description="offload: group only: prefetch the next group on a CUDA stream while the "
        "current one computes (ignored without CUDA). Costs one extra group of device memory.",
    )
    text_encoder_device: Literal["auto", "cpu"] = Field(
        default="auto",
        description="cpu keeps the text encoder (UMT5-XXL, about 11 GB in bf16) in host memory "
        "and encodes prompts there, like the official --t5_cpu; auto: the pipeline's device.",
    )
    vae_tiling: bool = Field(
        default=False,
        description="Decode the video in spatial tiles (AutoencoderKLWan.enable_tiling): "
        "less memory for the decode at 720P, slightly slower, may show faint seams.",
    )
    budget_gib: float | None = Field(
        default=None,
        gt=0,
        description="Device memory this replica may use, GiB; None: the free memory of its "
        "device at start. Lower it on a GPU shared with other work.",
    )
    margin_gib: float = Field(
        default=2.0,
        ge=0,
        description="Kept free beyond the estimate, GiB: the caching allocator's "
        "fragmentation (a few percent of an 80 GB device), small buffers the estimate leaves out, and its error.",
    )
    fit_check: bool = Field(
        default=True,
        description="Check the estimate against the budget before loading, and every request "
        "before queueing it. Off: load and run whatever is asked, and meet out-of-memory errors instead.",
    )

    @property
    def text_encoder_format(self) -> Quantization:
        """The text encoder's weight format (``text_encoder_quantization``, else ``quantization``)."""
        return self.text_encoder_quantization or self.quantization

    @model_validator(mode="after")
    def _check(self) -> MemoryConfig:
        if self.text_encoder_device == "cpu" and self.offload in ("model", "sequential"):
            raise ValueError(
                f"text_encoder_device: cpu with offload: {self.offload} places the text encoder twice; "
                f"offload {self.offload} already keeps it in host memory between prompts: choose one"
            )
        return self
