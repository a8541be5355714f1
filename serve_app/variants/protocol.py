"""Response models of GET /variants and GET /v1/models."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from jobs.model import OutputFormat
from model_store.variants import ApiSize, GenerationDefaults, OutputKind, Task


class UploadFields(BaseModel):
    """Multipart file fields of POST /generate that a variant takes."""

    required: list[str] = Field(description="Fields a request must send, e.g. ['video', 'mask'] for vace.")
    optional: list[str] = Field(description="Fields a request may send, e.g. ['last_image'] for i2v.")
    repeatable: list[str] = Field(
        default=[], description="Fields that may come more than once, e.g. ['image'] for image_edit."
    )


class AdapterSummary(BaseModel):
    """A LoRA adapter in the model store for this variant (usable in ``loras``)."""

    name: str
    experts: list[str] = Field(description="The A14B experts it applies to: high_noise, low_noise.")


class VariantReadiness(BaseModel):
    """Whether the variant's generator deployment runs, as Ray Serve reports it."""

    ready: bool = Field(description="At least one generator replica is running.")
    running_replicas: int = Field(description="Generator replicas running now.")
    reason: str | None = Field(default=None, description="Why it is not ready (e.g. the fit check's refusal).")


class ImageSizeRule(BaseModel):
    """The output sizes of an image variant."""

    multiple_of: int = Field(description="Each side must be a multiple of this, pixels.")
    min_side: int = Field(description="Shortest side a request may ask for, pixels.")
    max_side: int = Field(description="Longest side a request may ask for, pixels.")
    default_area: int = Field(
        description="Without size: the first image's aspect ratio at this many pixels (width x height)."
    )


class VariantInfo(BaseModel):
    """One deployed variant: what it does, what it takes, its limits and defaults."""

    name: str = Field(description="The variant's name, as requests send it in ``variant`` (or ``model``).")
    description: str = Field(description="One line for humans.")
    task: Task = Field(description="t2v, i2v, ti2v, vace or image_edit: decides the uploads it takes.")
    output: OutputKind = Field(description="What it makes: a video, or one image (image_edit).")
    pipeline_class: str = Field(description="The diffusers pipeline class it runs.")
    twin_of: str | None = Field(description="For a tiny random-weight twin, the real variant it mirrors.")
    experts: int = Field(description="Denoising experts: 2 on A14B (which then takes guidance_scale_2), else 1.")
    sizes: list[ApiSize] = Field(
        description="Video variants: output sizes it serves, WIDTHxHEIGHT; the first is its default. "
        "Empty for an image variant (see image_sizes)."
    )
    image_sizes: ImageSizeRule | None = Field(
        default=None, description="Image variants: the sizes a request may ask for; null for a video variant."
    )
    fps: int = Field(description="Frames per second of its videos (1 for an image variant).")
    frame_rule: str = Field(description="num_frames must have this form, e.g. 4k+1.")
    max_num_frames: int = Field(description="Largest num_frames a request may ask for.")
    max_seconds: float = Field(description="max_num_frames at fps: the longest video, seconds.")
    max_inference_steps: int = Field(description="Largest num_inference_steps a request may ask for.")
    min_inference_steps: int = Field(description="Smallest num_inference_steps a request may ask for.")
    max_upload_bytes: int = Field(description="Largest single uploaded file, bytes.")
    max_reference_images: int = Field(description="Reference images a vace request may send.")
    max_edit_images: int | None = Field(
        default=None, description="Images an image_edit request may send (repeated image fields); null otherwise."
    )
    defaults: GenerationDefaults = Field(description="What a request that leaves a field out gets.")
    uploads: UploadFields = Field(description="The files it takes.")
    output_formats: list[OutputFormat] = Field(description="Result formats it writes (output_format).")
    speed_profiles: dict[str, str] = Field(
        default={}, description="Speed profiles a request may name (``speed``), each with its description."
    )
    default_speed: str = Field(default="quality", description="The profile a request that names none runs.")
    loras: list[AdapterSummary] = Field(description="LoRA adapters in the model store for it.")
    readiness: VariantReadiness
    queued: int = Field(description="Jobs of this variant waiting in the queue now.")
    running: int = Field(description="Jobs of this variant on a generator replica now.")


class VariantList(BaseModel):
    """GET /variants."""

    default_variant: str = Field(description="The variant a request that names none gets.")
    variants: list[VariantInfo] = Field(description="Every deployed variant, in the app config's order.")


class ModelCard(BaseModel):
    """One entry of GET /v1/models, OpenAI's model object with what the variant takes."""

    id: str = Field(description="The variant name; pass it as ``model`` (or ``variant``).")
    object: Literal["model"] = "model"
    created: int = Field(description="Unix seconds when this service deployed it.")
    owned_by: str = Field(description="Who serves it: wan-serve.")
    task: Task = Field(description="t2v, i2v, ti2v, vace or image_edit.")
    description: str = Field(description="One line for humans.")
    inputs: UploadFields = Field(description="The files it takes beside the prompt.")
    ready: bool = Field(description="At least one generator replica is running.")


class ModelList(BaseModel):
    """GET /v1/models, OpenAI's list shape."""

    object: Literal["list"] = "list"
    data: list[ModelCard]
