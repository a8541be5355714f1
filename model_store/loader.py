"""Loading a variant's diffusers pipeline, from a local folder or a Hugging Face repo at a revision.

Real weights and tiny twins take exactly this path.
"""

from __future__ import annotations

import diffusers
import torch

from model_store.settings import StoreSettings
from model_store.variants import VariantConfig

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_device(variant: VariantConfig) -> torch.device:
    """The device a variant runs on: ``cuda`` when configured or (for ``auto``) when a GPU is visible.

    Raises:
        RuntimeError: the config asks for cuda and none is visible to this process.
    """
    if variant.device == "cpu" or (variant.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"variant {variant.name!r} is configured with device: cuda, but this replica sees no GPU; "
            "give its deployment num_gpus: 1 or set device: auto"
        )
    return torch.device("cuda")


def load_pipeline(variant: VariantConfig, settings: StoreSettings | None = None):
    """Load ``variant``'s pipeline with ``from_pretrained`` and move it to its device.

    The transformer and text encoder load in ``variant.torch_dtype``, the VAE in
    ``variant.vae_dtype`` (float32 by default, as the Wan model cards recommend).
    Returns the ``diffusers`` pipeline object (``WanPipeline`` for ti2v-5b).

    Raises:
        FileNotFoundError: a local-only variant whose folder is missing.
        OSError: from_pretrained could not find or read the weights.
    """
    location = variant.weights_location(settings)
    pipeline_cls = getattr(diffusers, variant.pipeline_class)
    kwargs = {}
    if location == variant.weights.repo_id and variant.weights.revision:
        kwargs["revision"] = variant.weights.revision
    pipe = pipeline_cls.from_pretrained(
        location,
        dtype={"default": _DTYPES[variant.torch_dtype], "vae": _DTYPES[variant.vae_dtype]},
        **kwargs,
    )
    pipe.to(resolve_device(variant))
    pipe.set_progress_bar_config(disable=True)
    return pipe
