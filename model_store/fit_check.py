"""The fit check: peak device memory of a variant in its memory mode, estimated before loading.

Weights come from the safetensors headers (names, shapes, dtypes: no tensor is read), priced in
the mode's format. Activations come from the request's size: the transformer sees
``tokens = latent frames x latent height x latent width / patch area`` tokens; the VAE decode
works at full resolution, a chunk of frames at a time. The result is a ``FitPlan``: a few
numbers that price any request, written by the generator to ``<data_dir>/fit/<variant>.json`` so
the router can refuse a request that would not fit before queueing it.

Every figure is bytes unless its name says GiB.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, Field

from model_store.memory_config import MemoryConfig, Quantization

GIB = 2**30

_DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "BF16": 2,
    "F16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "float32": 4,
    "bfloat16": 2,
    "float16": 2,
}

#: Tensors no quantizer touches: embeddings, norms, the patch embedding and the time/text
#: condition embedders (diffusers WanTransformer3DModel._skip_layerwise_casting_patterns, plus
#: UMT5's ``shared`` embedding and relative attention bias).
_KEPT = (
    "patch_embedding",
    "condition_embedder",
    "norm",
    "shared",
    "embed_tokens",
    "relative_attention_bias",
    "scale_shift_table",
)

#: Hidden-width (d) tensors per token alive at a transformer block's peak, in compute-dtype
#: elements: the residual stream, its fp32 norm (two elements' worth: diffusers keeps Wan's
#: norm1-3 in fp32), q, k, v, the attention output and the gated residual (8), plus the fp32
#: temporaries of the rotary embedding applied to q and k (4; diffusers' apply_rotary_emb
#: multiplies bf16 halves by fp32 cos/sin). Counted from diffusers' WanTransformerBlock.forward;
#: bench/memory.py measures the per-token slope on CPU within a few percent of it (docs/performance.md).
HIDDEN_TENSORS = 12
#: Feed-forward-width (ffn) tensors per token at the peak: the up projection and its GELU.
FFN_TENSORS = 2

#: VAE decode: feature maps alive at once at the decoder's widest resolution, in units of
#: (chunk frames x height x width x channels), counted from diffusers' AutoencoderKLWan decoder
#: (a residual block holds its input, two conv outputs and the causal cache of the previous chunk).
VAE_LIVE_MAPS = 5
#: Output frames a latent frame decodes to (the VAE's 4x temporal compression; Wan2.1/2.2 VAE).
VAE_CHUNK_FRAMES = 4


class TensorInfo(BaseModel):
    """One tensor of a safetensors header."""

    name: str
    shape: list[int]
    dtype: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def read_tensors(folder: Path) -> list[TensorInfo]:
    """Names, shapes and dtypes of every tensor in ``folder``'s ``*.safetensors`` files, read from
    their headers (the 8-byte length and the JSON that start a safetensors file): no weights are read.

    Raises:
        OSError: a file cannot be read.
        ValueError: a file is not safetensors.
    """
    tensors = []
    for path in sorted(folder.glob("*.safetensors")):
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ValueError(f"{path.name} is not a safetensors file (shorter than its header length)")
            header = json.loads(f.read(int.from_bytes(head, "little")))
        for name, info in header.items():
            if name != "__metadata__":
                tensors.append(TensorInfo(name=name, shape=info["shape"], dtype=info["dtype"]))
    return tensors


def format_bytes(t: TensorInfo, fmt: Quantization, compute_bytes: int) -> float:
    """Bytes ``t`` takes once loaded in format ``fmt`` (compute dtype ``compute_bytes`` wide).

    fp8_storage, fp8 and int8 store one byte per weight of a Linear (fp8 and int8 plus one
    float32 scale per output row, torchao's per-channel scales; LLM.int8 likewise); nf4 half a
    byte plus one float32 absmax per 64 weights (bitsandbytes' default blocksize). fp8_storage
    also stores Conv weights and biases as float8 (diffusers layerwise casting casts every
    Linear and Conv parameter).
    """
    kept = any(k in t.name for k in _KEPT)
    if fmt == "none" or kept:
        return t.numel * compute_bytes
    if fmt == "fp8_storage":
        return t.numel if len(t.shape) in (1, 2, 5) else t.numel * compute_bytes
    if len(t.shape) != 2:  # biases and convs stay in the compute dtype under the weight quantizers
        return t.numel * compute_bytes
    if fmt in ("fp8", "int8"):
        return t.numel + t.shape[0] * 4
    return t.numel * 0.5 + t.numel / 64 * 4  # nf4


class ComponentWeights(BaseModel):
    """One component's weight bytes in its loaded format."""

    total: int = Field(description="All its tensors, bytes.")
    per_block: int = Field(description="Its largest repeated block (a transformer block), bytes; 0 if none.")
    largest_tensor: int = Field(description="Its largest single tensor, bytes.")
    blocks: int = Field(description="Number of repeated blocks.")


#: Names of the module lists that hold a component's repeated blocks: ``blocks`` (Wan transformer,
#: Qwen2.5-VL vision tower), ``block`` (UMT5), ``vace_blocks``, ``transformer_blocks`` (Qwen-Image
#: MMDiT) and ``layers`` (Qwen2.5-VL language model).
_BLOCK_LISTS = ("blocks", "block", "vace_blocks", "transformer_blocks", "layers")


def price(tensors: Iterable[TensorInfo], fmt: Quantization, compute_bytes: int) -> ComponentWeights:
    """Weight bytes of a component's tensors loaded in ``fmt``; blocks are ``<list>.N.`` for the
    lists in _BLOCK_LISTS."""
    total = 0.0
    by_block: dict[str, float] = {}
    largest = 0.0
    for t in tensors:
        size = format_bytes(t, fmt, compute_bytes)
        total += size
        largest = max(largest, size)
        parts = t.name.split(".")
        for i in range(len(parts) - 1):
            if parts[i] in _BLOCK_LISTS and parts[i + 1].isdigit():
                key = ".".join(parts[: i + 2])
                by_block[key] = by_block.get(key, 0.0) + size
                break
    return ComponentWeights(
        total=int(total),
        per_block=int(max(by_block.values(), default=0)),
        largest_tensor=int(largest),
        blocks=len(by_block),
    )


class FitPlan(BaseModel):
    """What a variant needs on its device in its memory mode, and what its device has.

    Prices any request with ``peak_bytes(width, height, num_frames)``. Made by ``plan_fit`` in a
    replica before it loads; the router reads the same object from JSON.
    """

    variant: str
    mode: str = Field(description="The memory mode, in words.")
    device: str = Field(description="The replica's device, in words.")
    budget_bytes: int = Field(
        description="Device memory this replica may use: memory.budget_gib, else its free memory at start."
    )
    margin_bytes: int = Field(description="Kept free beyond the estimate (memory.margin_gib).")
    weights_bytes: dict[str, int] = Field(
        description="Per component, weight bytes in the loaded format (wherever they live)."
    )
    resident_bytes: int = Field(description="Weight bytes on the device at the busiest moment, given the offload mode.")
    hidden: int = Field(description="Transformer width: heads x head dim.")
    ffn: int = Field(description="Transformer feed-forward width.")
    act_bytes: int = Field(description="Bytes per activation element of the transformer (its compute dtype).")
    patch: list[int] = Field(description="Transformer patch (t, h, w).")
    vae_spatial: int = Field(description="VAE spatial compression (8 for Wan2.1's, 16 for Wan2.2's).")
    vae_temporal: int = Field(description="VAE temporal compression (4).")
    vae_channels: int = Field(description="Channels of the VAE decoder's widest-resolution feature maps.")
    vae_pixel_stride: int = Field(
        description="Pixels per side of the decoder's widest feature map (2 with Wan2.2's patchify, else 1)."
    )
    vae_bytes: int = Field(description="Bytes per VAE activation element (its dtype).")
    condition_tokens: int = Field(
        default=0,
        description="Transformer tokens beside the output's: Qwen-Image-Edit appends each input image's latents "
        "at about 1024x1024 pixels (4096 tokens each), priced for the most images a request may send.",
    )
    vae_min_pixels: int = Field(
        default=0,
        description="Pixels the VAE works at whatever the output size: Qwen-Image-Edit encodes each input "
        "at about 1024x1024.",
    )

    def tokens(self, width: int, height: int, num_frames: int) -> int:
        """Transformer sequence length: latent frames x latent height x latent width / patch area,
        plus ``condition_tokens``."""
        latent_frames = (num_frames - 1) // self.vae_temporal + 1
        pt, ph, pw = self.patch
        output = math.ceil(latent_frames / pt) * (height // self.vae_spatial // ph) * (width // self.vae_spatial // pw)
        return output + self.condition_tokens

    def activation_bytes(self, width: int, height: int, num_frames: int) -> int:
        """Peak activation bytes of one job: the larger of a transformer forward and the VAE decode
        (they never overlap), plus the decoded video in float32 (and its uint8 copy)."""
        transformer = (
            self.tokens(width, height, num_frames)
            * (HIDDEN_TENSORS * self.hidden + FFN_TENSORS * self.ffn)
            * self.act_bytes
        )
        pixels = max(height * width, self.vae_min_pixels) // self.vae_pixel_stride**2
        vae = VAE_LIVE_MAPS * VAE_CHUNK_FRAMES * pixels * self.vae_channels * self.vae_bytes
        video = num_frames * height * width * 3 * (4 + 1)
        return max(transformer, vae) + video

    def peak_bytes(self, width: int, height: int, num_frames: int) -> int:
        """Estimated peak device memory of a job of this size: resident weights + activations + margin."""
        return self.resident_bytes + self.activation_bytes(width, height, num_frames) + self.margin_bytes

    def fits(self, width: int, height: int, num_frames: int) -> bool:
        """True when ``peak_bytes`` is within the budget."""
        return self.peak_bytes(width, height, num_frames) <= self.budget_bytes

    def max_frames(self, width: int, height: int, rule: int) -> int:
        """The most frames (of the form k*rule+1) that fit at this size; 0 when not even one does."""
        best, k = 0, 0
        while self.fits(width, height, k * rule + 1) and k < 10_000:
            best, k = k * rule + 1, k + 1
        return best


def _resident(memory: MemoryConfig, weights: dict[str, ComponentWeights], compute_bytes: int) -> int:
    """Weight bytes on the device at the busiest moment under ``memory.offload``, plus, under
    fp8_storage, the upcast copy of the block that is computing (layerwise casting casts each
    layer's float8 weights to the compute dtype while it runs)."""
    upcast = 0
    if memory.quantization == "fp8_storage":
        upcast = (
            max((w.per_block for k, w in weights.items() if k.startswith("transformer")), default=0) * compute_bytes
        )
    return upcast + _placed(memory, weights)


def _placed(memory: MemoryConfig, weights: dict[str, ComponentWeights]) -> int:
    on_device = {k: w for k, w in weights.items() if not (k == "text_encoder" and memory.text_encoder_device == "cpu")}
    if memory.offload == "none":
        return sum(w.total for w in on_device.values())
    if memory.offload == "model":  # one whole component at a time
        return max(w.total for w in on_device.values())
    if memory.offload == "sequential":  # one layer at a time
        return max(w.largest_tensor for w in on_device.values()) * 2
    # group: the VAE stays; each offloaded component holds its non-block weights plus one group
    # (two with the prefetch stream) while it runs.
    groups = 2 if memory.group_offload_stream else 1
    busiest = 0
    for name, w in on_device.items():
        if name == "vae":
            continue
        if memory.group_offload_type == "leaf_level" or w.blocks == 0:
            held = w.largest_tensor * groups
        else:
            held = w.total - w.per_block * w.blocks + w.per_block * memory.group_offload_blocks * groups
        busiest = max(busiest, held)
    return busiest + (on_device["vae"].total if "vae" in on_device else 0)


def describe_mode(memory: MemoryConfig) -> str:
    """The memory mode in words, e.g. ``quantization fp8_storage, offload group``."""
    words = [f"quantization {memory.quantization}"]
    if memory.text_encoder_quantization is not None:
        words.append(f"text_encoder_quantization {memory.text_encoder_quantization}")
    words.append(f"offload {memory.offload}")
    if memory.text_encoder_device == "cpu":
        words.append("text_encoder_device cpu")
    return ", ".join(words)


_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


class WeightsLayout(BaseModel):
    """What the fit check needs of a variant's weights: each component's tensors, and the
    transformer's and VAE's configs (their config.json)."""

    tensors: dict[str, list[TensorInfo]] = Field(description="Component -> its tensors.")
    transformer_config: dict
    vae_config: dict


def read_layout(folder: Path) -> WeightsLayout:
    """The WeightsLayout of a diffusers folder, from model_index.json, the configs and the
    safetensors headers.

    Raises:
        OSError, ValueError: a config or a header cannot be read.
    """
    index = json.loads((folder / "model_index.json").read_text())
    tensors = {
        name: read_tensors(folder / name)
        for name in ("transformer", "transformer_2", "text_encoder", "vae")
        if isinstance(index.get(name), list) and index[name][0] is not None
    }
    return WeightsLayout(
        tensors=tensors,
        transformer_config=json.loads((folder / "transformer" / "config.json").read_text()),
        vae_config=json.loads((folder / "vae" / "config.json").read_text()),
    )


def plan_fit(
    variant, weights: Path | WeightsLayout, budget_bytes: int, device: str, memory: MemoryConfig | None = None
) -> FitPlan:
    """The FitPlan of ``variant`` (a VariantConfig) with its weights (a diffusers folder, or their
    layout), in ``memory`` (default: the variant's own mode), for a device with ``budget_bytes``.

    Raises:
        OSError, ValueError: a component's config or safetensors header cannot be read.
    """
    layout = weights if isinstance(weights, WeightsLayout) else read_layout(weights)
    memory = memory or variant.memory
    compute, vae_b = _BYTES[variant.torch_dtype], _BYTES[variant.vae_dtype]
    priced: dict[str, ComponentWeights] = {}
    for name, tensors in layout.tensors.items():
        fmt = {"vae": "none", "text_encoder": memory.text_encoder_format}.get(name, memory.quantization)
        priced[name] = price(tensors, fmt, vae_b if name == "vae" else compute)
    t, v = layout.transformer_config, layout.vae_config
    mult = v.get("dim_mult") or [1]
    patchify = v.get("patch_size") or 1
    hidden = t["num_attention_heads"] * t["attention_head_dim"]
    # Wan's patch is (t, h, w); Qwen-Image's one int for (h, w) on single frames. Qwen-Image's
    # feed-forward is 4x its width (diffusers FeedForward's default mult), Wan states ffn_dim.
    patch = (
        list(t["patch_size"]) if isinstance(t["patch_size"], list | tuple) else [1, t["patch_size"], t["patch_size"]]
    )
    spatial = v.get("scale_factor_spatial", 8)
    condition_tokens = vae_min_pixels = 0
    if variant.task == "image_edit":
        # diffusers QwenImageEditPlusPipeline: VAE_IMAGE_SIZE = 1024 * 1024 per input image.
        vae_min_pixels = 1024 * 1024
        condition_tokens = variant.limits.max_edit_images * vae_min_pixels // (spatial * patch[1] * spatial * patch[2])
    return FitPlan(
        variant=variant.name,
        mode=describe_mode(memory),
        device=device,
        budget_bytes=budget_bytes,
        margin_bytes=int(memory.margin_gib * GIB),
        weights_bytes={k: w.total for k, w in priced.items()},
        resident_bytes=_resident(memory, priced, compute),
        hidden=hidden,
        ffn=t.get("ffn_dim") or 4 * hidden,
        act_bytes=compute,
        patch=patch,
        vae_spatial=spatial,
        vae_temporal=v.get("scale_factor_temporal", 4),
        vae_channels=(v.get("decoder_base_dim") or v["base_dim"]) * mult[0],
        vae_pixel_stride=patchify,
        vae_bytes=vae_b,
        condition_tokens=condition_tokens,
        vae_min_pixels=vae_min_pixels,
    )


#: Modes suggested when a variant does not fit, fastest first.
_ALTERNATIVES: tuple[tuple[str, dict], ...] = (
    ("quantization fp8_storage", {"quantization": "fp8_storage"}),
    ("text_encoder_device cpu", {"text_encoder_device": "cpu"}),
    (
        "quantization fp8_storage with text_encoder_device cpu",
        {"quantization": "fp8_storage", "text_encoder_device": "cpu"},
    ),
    ("quantization int8", {"quantization": "int8"}),
    ("offload model", {"offload": "model"}),
    ("offload group", {"offload": "group"}),
    ("quantization nf4", {"quantization": "nf4"}),
    ("offload sequential", {"offload": "sequential"}),
)


def suggestions(
    variant, weights: Path | WeightsLayout, budget_bytes: int, device_info, width: int, height: int, num_frames: int
) -> list[str]:
    """Up to three alternative modes that would fit a job of this size and that ``device_info``
    (a DeviceInfo) can run, fastest first."""
    from model_store.memory_modes import ModeRefused, check_mode

    layout = weights if isinstance(weights, WeightsLayout) else read_layout(weights)
    found = []
    for words, change in _ALTERNATIVES:
        try:
            memory = MemoryConfig.model_validate({**variant.memory.model_dump(), **change})
            # The variant's own rules too (an image_edit variant keeps its text encoder on the device).
            type(variant).model_validate({**variant.model_dump(), "memory": memory.model_dump()})
            check_mode(memory, device_info, variant.name)
        except (ValueError, ModeRefused):
            continue
        if plan_fit(variant, layout, budget_bytes, device_info.name, memory).fits(width, height, num_frames):
            found.append(words)
        if len(found) == 3:
            break
    return found


def gib(n: float) -> str:
    """Bytes for humans: ``~62 GiB``, ``~6.2 GiB``, below 1 GiB ``~310 MiB``."""
    value = n / GIB
    if value >= 10:
        return f"~{value:.0f} GiB"
    return f"~{value:.1f} GiB" if value >= 1 else f"~{n / 2**20:.0f} MiB"
