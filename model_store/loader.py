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
    Returns the ``diffusers`` pipeline object of ``variant.pipeline_class``.

    Raises:
        FileNotFoundError: a local-only variant whose folder is missing.
        OSError: from_pretrained could not find or read the weights.
        ValueError: the weights' boundary_ratio is not the one the variant config states
            (wrong weights for this variant).
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
    loaded_boundary = pipe.config.get("boundary_ratio")
    if loaded_boundary != variant.boundary_ratio:
        raise ValueError(
            f"weights for variant {variant.name!r} have boundary_ratio {loaded_boundary}, but its config says "
            f"{variant.boundary_ratio}: these are not the weights this variant describes"
        )
    pipe.to(resolve_device(variant))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def image_pipeline(pipe):
    """TI2V-5B's text+image pipeline: a ``WanImageToVideoPipeline`` sharing ``pipe``'s modules.

    The loaded modules are shared (no extra memory) and ``expand_timesteps`` is carried over
    (True for TI2V-5B: the first latent frame is the image's), which is how the diffusers docs
    run TI2V-5B on an image. Built directly rather than with ``from_pipe``, which casts every
    shared module to one dtype (float32 by default) and would undo the bf16/fp32 split.
    """
    c = pipe.components
    i2v = diffusers.WanImageToVideoPipeline(
        tokenizer=c["tokenizer"], text_encoder=c["text_encoder"], vae=c["vae"], scheduler=c["scheduler"],
        transformer=c["transformer"], transformer_2=c.get("transformer_2"),
        boundary_ratio=pipe.config.get("boundary_ratio"), expand_timesteps=pipe.config.get("expand_timesteps", False),
    )
    i2v.set_progress_bar_config(disable=True)
    return i2v
