"""Applying a variant's memory mode (model_store/memory_config.py) to its pipeline.

Three moments, in the order the loader uses them:

1. ``check_mode`` before anything loads: refuses a mode this replica's device cannot run.
2. ``quantization_config`` for ``from_pretrained``: torchao and bitsandbytes quantize while loading,
   through diffusers' ``PipelineQuantizationConfig`` (transformers' configs for the text encoder).
3. ``apply_after_load``: fp8 storage (diffusers layerwise casting), VAE tiling, and placement
   (on the device, or one of the offload modes).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch

from model_store.memory_config import MemoryConfig, Quantization

#: First CUDA compute capability with float8 tensor cores (Ada Lovelace, sm_89); torchao's float8
#: dynamic-activation kernels need it (torchao float8 README).
FP8_MIN_CAPABILITY = (8, 9)

#: Text-encoder (UMT5) modules left in the compute dtype under fp8_storage: the embedding and
#: norms (as diffusers' defaults skip for transformers), and ``wo``, the feed-forward output
#: projection, because UMT5's feed-forward casts its input to ``wo.weight.dtype`` before the
#: layer runs (transformers modeling_umt5.py), which would feed float8 activations to a matmul.
TEXT_ENCODER_FP8_SKIP = ("shared", "embed_tokens", "norm", "relative_attention_bias", "wo")


class ModeRefused(ValueError):
    """A memory mode this replica's device cannot run. The message names the mode, the reason and
    what would work; the generator raises it from its constructor, so /ready shows it."""


@dataclass(frozen=True)
class DeviceInfo:
    """The device a replica runs on. Memory in bytes; ``capability`` is CUDA's (major, minor)."""

    kind: str  # "cpu" or "cuda"
    name: str
    total_bytes: int
    free_bytes: int
    capability: tuple[int, int] | None = None

    def describe(self) -> str:
        cap = f", compute capability {self.capability[0]}.{self.capability[1]}" if self.capability else ""
        return f"{self.name}{cap}"


def probe_device(device: torch.device) -> DeviceInfo:
    """Free and total memory of ``device`` now: ``torch.cuda.mem_get_info`` on CUDA, available host
    memory (psutil) on CPU."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        index = device.index if device.index is not None else torch.cuda.current_device()
        return DeviceInfo(
            "cuda", torch.cuda.get_device_name(index), total, free, torch.cuda.get_device_capability(index)
        )
    import psutil

    vm = psutil.virtual_memory()
    return DeviceInfo("cpu", "CPU (host memory)", vm.total, vm.available)


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _format_refusal(part: str, fmt: Quantization, device: DeviceInfo) -> str | None:
    """Why ``fmt`` cannot run on ``device`` (None when it can)."""
    if fmt == "nf4" and device.kind != "cuda":
        return (
            f"{part} nf4 needs bitsandbytes on a CUDA GPU and this replica runs on {device.describe()}; "
            "on CPU use int8 (torchao int8 weight-only) or fp8_storage"
        )
    if fmt == "fp8":
        if device.kind != "cuda":
            return (
                f"{part} fp8 (torchao float8 matmuls) needs a CUDA GPU of compute capability 8.9 or newer and "
                f"this replica runs on {device.describe()}; use fp8_storage (the same weight bytes, "
                "computed in bf16), which runs anywhere"
            )
        if device.capability is not None and device.capability < FP8_MIN_CAPABILITY:
            return (
                f"{part} fp8 needs float8 tensor cores (compute capability 8.9 or newer: Ada, Hopper) and "
                f"{device.describe()} has none; use fp8_storage (same weight bytes, computed in bf16) or int8"
            )
        if not _has("torchao"):
            return f"{part} fp8 needs torchao, which is not installed: pip install torchao"
    if fmt == "int8" and device.kind != "cuda" and not _has("torchao"):
        return f"{part} int8 on CPU needs torchao, which is not installed: pip install torchao"
    if fmt in ("int8", "nf4") and device.kind == "cuda" and not _has("bitsandbytes"):
        return (
            f"{part} {fmt} on CUDA needs bitsandbytes, which is not installed: pip install bitsandbytes "
            "(the project's [gpu] extra), or use fp8_storage"
        )
    return None


def check_mode(memory: MemoryConfig, device: DeviceInfo, variant_name: str) -> None:
    """Refuse a memory mode that cannot run on ``device``, before any weights load.

    Raises:
        ModeRefused: e.g. nf4 on CPU, fp8 below compute capability 8.9, offload on a CPU replica,
            or a quantization library that is not installed.
    """
    problems = [
        p
        for p in (
            _format_refusal("quantization", memory.quantization, device),
            _format_refusal("text_encoder_quantization", memory.text_encoder_format, device),
        )
        if p
    ]
    if memory.offload != "none" and device.kind != "cuda":
        problems.append(
            f"offload {memory.offload} moves weights between host and GPU memory, and this replica runs "
            "on CPU, where they already are in host memory; use offload: none"
        )
    if problems:
        raise ModeRefused(f"variant {variant_name}: memory mode refused: " + "; ".join(dict.fromkeys(problems)))


def component_quantization_config(fmt: Quantization, device: DeviceInfo, compute_dtype: torch.dtype, library: str):
    """The quantization config of one component in ``library`` ('diffusers' or 'transformers'), or None."""
    if fmt in ("none", "fp8_storage"):
        return None
    lib = importlib.import_module(library)
    if fmt == "nf4":
        return lib.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype
        )
    if fmt == "int8" and device.kind == "cuda":
        return lib.BitsAndBytesConfig(load_in_8bit=True)
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, Int8WeightOnlyConfig

    config = Int8WeightOnlyConfig() if fmt == "int8" else Float8DynamicActivationFloat8WeightConfig()
    return lib.TorchAoConfig(config)


def quantization_config(memory: MemoryConfig, device: DeviceInfo, compute_dtype: torch.dtype, has_second_expert: bool):
    """The ``quantization_config`` argument of ``from_pretrained`` for this mode, or None when no
    component is quantized while loading (none and fp8_storage are applied after loading)."""
    from diffusers.quantizers import PipelineQuantizationConfig

    mapping = {}
    transformer = component_quantization_config(memory.quantization, device, compute_dtype, "diffusers")
    if transformer is not None:
        mapping["transformer"] = transformer
        if has_second_expert:
            mapping["transformer_2"] = component_quantization_config(
                memory.quantization, device, compute_dtype, "diffusers"
            )
    text = component_quantization_config(memory.text_encoder_format, device, compute_dtype, "transformers")
    if text is not None:
        mapping["text_encoder"] = text
    return PipelineQuantizationConfig(quant_mapping=mapping) if mapping else None


def apply_fp8_storage(pipe, memory: MemoryConfig, compute_dtype: torch.dtype) -> None:
    """Store the weights of the components in fp8_storage as float8_e4m3fn, upcast to ``compute_dtype``
    layer by layer as they run (diffusers layerwise casting). Halves bf16 weight bytes of the
    Linear and Conv layers; norms and embeddings keep ``compute_dtype``."""
    from diffusers.hooks import apply_layerwise_casting

    if memory.quantization == "fp8_storage":
        for name in ("transformer", "transformer_2"):
            module = getattr(pipe, name, None)
            if module is not None:
                module.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=compute_dtype)
    if memory.text_encoder_format == "fp8_storage" and getattr(pipe, "text_encoder", None) is not None:
        apply_layerwise_casting(
            pipe.text_encoder,
            storage_dtype=torch.float8_e4m3fn,
            compute_dtype=compute_dtype,
            skip_modules_pattern=TEXT_ENCODER_FP8_SKIP,
        )


def place(pipe, memory: MemoryConfig, device: torch.device) -> None:
    """Put ``pipe`` on ``device`` per ``memory.offload`` and turn on VAE tiling when asked.

    ``pipe.text_encoder`` must already be detached (None) when the text encoder stays on the CPU.
    """
    if memory.vae_tiling:
        pipe.vae.enable_tiling()
    if memory.offload == "none":
        pipe.to(device)
    elif memory.offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif memory.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        kwargs = (
            {"num_blocks_per_group": memory.group_offload_blocks} if memory.group_offload_type == "block_level" else {}
        )
        # The VAE (about 0.5 GB for Wan2.1's, 1.4 GB for Wan2.2's in fp32) stays on the device: its decode
        # runs once per job over large activations, where moving its weights would buy little.
        pipe.enable_group_offload(
            onload_device=device,
            offload_device=torch.device("cpu"),
            offload_type=memory.group_offload_type,
            use_stream=memory.group_offload_stream and device.type == "cuda",
            exclude_modules=["vae"],
            **kwargs,
        )
        pipe.vae.to(device)


def tensor_bytes(module: torch.nn.Module) -> int:
    """Bytes held by ``module``'s parameters and buffers, counting the inner tensors of tensor
    subclasses (torchao's quantized weights keep int8 data plus scales inside one Parameter)."""

    def size(t: torch.Tensor) -> int:
        if hasattr(t, "__tensor_flatten__") and type(t) not in (torch.Tensor, torch.nn.Parameter):
            names, _ = t.__tensor_flatten__()
            return sum(size(getattr(t, n)) for n in names)
        return t.numel() * t.element_size()

    seen: set[int] = set()
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += size(t)
    return total
