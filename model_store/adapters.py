"""LoRA adapters in the model store: ``<WAN_SERVE_MODEL_DIR>/loras/<name>/``.

An adapter folder holds ``adapter.yaml`` (``base``: the variant it was trained for), the
weights in diffusers' LoRA format (``pytorch_lora_weights.safetensors``, as
``save_lora_weights`` writes them), and a manifest (model_store/weights_manifest.py).

For the A14B variants (two experts) the weights may be split:
``high_noise/pytorch_lora_weights.safetensors`` goes into ``transformer`` (the high-noise
expert) and ``low_noise/pytorch_lora_weights.safetensors`` into ``transformer_2``; either may be
absent, so an adapter can target one expert. A top-level file goes into the high-noise expert,
and into the low-noise one too when ``adapter.yaml`` says ``experts: [high_noise, low_noise]``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from model_store.settings import StoreSettings

#: The diffusers LoRA file name (diffusers' LORA_WEIGHT_NAME_SAFE).
LORA_FILE = "pytorch_lora_weights.safetensors"
#: Adapter names: letters, digits, '-', '_' and '.', 1 to 64, not starting with '.'.
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
#: Expert -> the pipeline component it is (diffusers Wan A14B: transformer = high noise).
EXPERT_COMPONENTS = {"high_noise": "transformer", "low_noise": "transformer_2"}


class AdapterNotFound(LookupError):
    """No adapter of this name in the model store (or not one for this variant)."""


class AdapterMeta(BaseModel):
    """``adapter.yaml`` of an adapter folder."""

    model_config = ConfigDict(extra="forbid")

    base: str = Field(description="Variant the adapter was trained for, e.g. t2v-a14b.")
    description: str = Field(default="", description="One line for humans.")
    experts: list[str] = Field(
        default=["high_noise"],
        description="A14B, top-level weights only: experts that take them "
        "(high_noise, low_noise). Per-expert folders name themselves.",
    )


@dataclass(frozen=True)
class AdapterInfo:
    """An adapter on disk: its folder, its base variant, and the weights file per component."""

    name: str
    folder: Path
    base: str
    files: dict[str, Path]  # pipeline component ('transformer', 'transformer_2') -> weights file

    @property
    def experts(self) -> list[str]:
        named = {v: k for k, v in EXPERT_COMPONENTS.items()}
        return [named[c] for c in self.files]


def loras_dir(settings: StoreSettings | None = None) -> Path:
    """The adapters' folder of the model store."""
    return (settings or StoreSettings()).model_dir / "loras"


def adapter_folder(name: str, settings: StoreSettings | None = None) -> Path | None:
    """``loras/<name>``, or None when ``name`` is not a valid adapter name."""
    return loras_dir(settings) / name if NAME_RE.match(name) else None


def adapter_info(name: str, settings: StoreSettings | None = None) -> AdapterInfo:
    """Read an adapter folder.

    Raises:
        AdapterNotFound: no such folder, or it has no adapter.yaml or no weights.
        pydantic.ValidationError: a malformed adapter.yaml.
    """
    folder = adapter_folder(name, settings)
    if folder is None or not (folder / "adapter.yaml").is_file():
        raise AdapterNotFound(f"no LoRA adapter {name!r} in the model store")
    meta = AdapterMeta.model_validate(yaml.safe_load((folder / "adapter.yaml").read_text()) or {})
    files: dict[str, Path] = {}
    if (folder / LORA_FILE).is_file():
        for expert in meta.experts:
            files[EXPERT_COMPONENTS[expert]] = folder / LORA_FILE
    for expert, component in EXPERT_COMPONENTS.items():
        if (folder / expert / LORA_FILE).is_file():
            files[component] = folder / expert / LORA_FILE
    if not files:
        raise AdapterNotFound(f"LoRA adapter {name!r} has no {LORA_FILE}")
    return AdapterInfo(name=name, folder=folder, base=meta.base, files=files)


def list_adapters(settings: StoreSettings | None = None) -> list[AdapterInfo]:
    """Every readable adapter of the model store, by name."""
    root = loras_dir(settings)
    found = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        try:
            found.append(adapter_info(folder.name, settings))
        except (AdapterNotFound, ValueError):
            continue
    return found


def adapter_for(name: str, variant, settings: StoreSettings | None = None) -> AdapterInfo:
    """The adapter ``name`` if it is meant for ``variant`` (a VariantConfig) and fits its experts.

    Raises:
        AdapterNotFound: unknown, or trained for another variant (the message names which).
    """
    info = adapter_info(name, settings)
    if info.base != variant.name:
        raise AdapterNotFound(f"LoRA adapter {name!r} is for variant {info.base}, not {variant.name}")
    if "transformer_2" in info.files and variant.boundary_ratio is None:
        raise AdapterNotFound(f"LoRA adapter {name!r} has low-noise expert weights and {variant.name} has one expert")
    return info


def build_random_lora(
    pipe,
    folder: Path,
    base: str,
    *,
    seed: int = 0,
    rank: int = 4,
    experts: tuple[str, ...] = ("high_noise",),
    split: bool = False,
) -> Path:
    """Write a random-weight LoRA for ``pipe``'s transformer(s) in diffusers' format, with its
    adapter.yaml and manifest: for tests and for trying the adapter path without a trained one.

    ``init_lora_weights=False`` draws both LoRA matrices at random (peft's default zeroes B,
    which would change nothing). With ``split``, each expert gets its own file (different seeds).
    Removes any adapter it added to ``pipe`` before returning.
    """
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from model_store.weights_manifest import write_manifest

    folder.mkdir(parents=True, exist_ok=True)
    config = LoraConfig(
        r=rank,
        lora_alpha=rank,
        init_lora_weights=False,
        target_modules=["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"],
    )
    layers = {}
    for i, expert in enumerate(experts):
        module = getattr(pipe, EXPERT_COMPONENTS[expert])
        torch.manual_seed(seed + i)
        module.add_adapter(config, adapter_name="wan_serve_build")
        layers[expert] = get_peft_model_state_dict(module, adapter_name="wan_serve_build")
        module.delete_adapters("wan_serve_build")
    cls = type(pipe)
    if split:
        for expert, state in layers.items():
            cls.save_lora_weights(folder / expert, transformer_lora_layers=state, safe_serialization=True)
    else:
        cls.save_lora_weights(folder, transformer_lora_layers=layers[experts[0]], safe_serialization=True)
    meta: dict[str, object] = {"base": base, "description": f"random-weight LoRA, rank {rank}, seed {seed}"}
    if not split:
        meta["experts"] = list(experts)
    (folder / "adapter.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    write_manifest(folder, folder.name, "adapter")
    return folder
