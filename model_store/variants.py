"""The variant registry: one pydantic-validated YAML file per model variant in ``configs/``.

A *variant* is one servable model (``ti2v-5b``) or its tiny random-weight twin
(``ti2v-5b-tiny``). Both load through the same code; only the weight source and
the defaults differ.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from model_store.memory_config import MemoryConfig
from model_store.parallel_config import ParallelConfig
from model_store.settings import StoreSettings
from model_store.speed_config import SpeedConfig

#: The output sizes the HTTP API accepts, as "WIDTHxHEIGHT" (pixels): 720P and 480P in both
#: orientations, the sizes the Wan2.2 README lists for the A14B models (TI2V-5B serves 720P only).
ApiSize = Literal["1280x720", "720x1280", "832x480", "480x832"]
API_SIZES: tuple[str, ...] = get_args(ApiSize)

#: What a variant does with its inputs. t2v: text only; i2v: text + first frame (+ optional last
#: frame); ti2v: text with an optional first frame; vace: text + source video + mask (inpainting);
#: image_edit: text + one to three images, giving an image (Qwen-Image-Edit-2509).
Task = Literal["t2v", "i2v", "ti2v", "vace", "image_edit"]

#: What a task makes: a video (num_frames frames at the variant's fps) or one image.
OutputKind = Literal["video", "image"]

#: Tasks whose result is one image; every other task makes a video.
IMAGE_TASKS: tuple[str, ...] = ("image_edit",)
#: Pipelines a parallel replica can split (deployments/rank_group.py): the Wan ones, whose
#: unconditional pass is the conditional one with the negative prompt's embeddings.
PARALLEL_PIPELINES: tuple[str, ...] = ("WanPipeline", "WanImageToVideoPipeline", "WanVACEPipeline")


class TaskUploads(BaseModel):
    """The files a task takes (multipart fields of POST /generate)."""

    model_config = ConfigDict(frozen=True)

    required: tuple[str, ...] = Field(default=(), description="Fields a request must send.")
    optional: tuple[str, ...] = Field(default=(), description="Fields a request may send.")
    repeatable: tuple[str, ...] = Field(default=(), description="Fields a request may send more than once.")

    @property
    def accepted(self) -> tuple[str, ...]:
        return self.required + self.optional


#: The one table of which task takes which uploads.
TASK_UPLOADS: dict[str, TaskUploads] = {
    "t2v": TaskUploads(),
    "i2v": TaskUploads(required=("image",), optional=("last_image",)),
    "ti2v": TaskUploads(optional=("image",)),
    "vace": TaskUploads(required=("video", "mask"), optional=("reference_images",), repeatable=("reference_images",)),
    "image_edit": TaskUploads(required=("image",), repeatable=("image",)),
}
assert tuple(TASK_UPLOADS) == get_args(Task)


def upload_roles(field: str) -> str:
    """Which tasks need or take upload ``field``, e.g. ``required for i2v; optional for ti2v``."""
    required = [t for t, u in TASK_UPLOADS.items() if field in u.required]
    optional = [t for t, u in TASK_UPLOADS.items() if field in u.optional]
    parts = ([f"required for {', '.join(required)}"] if required else []) + (
        [f"optional for {', '.join(optional)}"] if optional else []
    )
    return "; ".join(parts)


class VariantNotFound(LookupError):
    """No YAML file in the configs folder names this variant."""


class Size(BaseModel):
    """A frame size in pixels."""

    model_config = ConfigDict(frozen=True)

    width: int = Field(gt=0, description="Frame width in pixels.")
    height: int = Field(gt=0, description="Frame height in pixels.")

    @classmethod
    def parse(cls, text: str) -> Size:
        """Parse ``"1280x720"`` into ``Size(width=1280, height=720)``; raises ValueError otherwise."""
        w, sep, h = text.partition("x")
        if not sep or not w.isdigit() or not h.isdigit():
            raise ValueError(f"size must look like WIDTHxHEIGHT, got {text!r}")
        return cls(width=int(w), height=int(h))

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


class WeightsSource(BaseModel):
    """Where the diffusers-layout weights come from: a local folder, or a Hugging Face repo at a revision."""

    model_config = ConfigDict(extra="forbid")

    repo_id: str | None = Field(default=None, description="Hugging Face repo id, e.g. Wan-AI/Wan2.2-TI2V-5B-Diffusers.")
    revision: str | None = Field(default=None, description="Git revision (commit SHA) of repo_id to load.")
    local_path: Path | None = Field(
        default=None,
        description="Local diffusers folder; relative paths resolve against WAN_SERVE_MODEL_DIR. "
        "Takes precedence over repo_id when the folder exists.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> WeightsSource:
        if self.repo_id is None and self.local_path is None:
            raise ValueError("weights need a repo_id or a local_path")
        return self


class Autoscaling(BaseModel):
    """Queue-driven replica autoscaling of one variant's generator deployment.

    The router keeps as many of the variant's jobs outstanding at the generator's handle as
    ``max_replicas`` allows (queued and running jobs together), and each replica runs one job; Ray
    Serve's autoscaler counts the calls waiting at a handle, so with one job per replica
    (``target_ongoing_requests: 1``) its target is the variant's queued plus running jobs, between
    ``min_replicas`` and ``max_replicas``. A call waiting at the handle of a variant at zero
    replicas brings one up. Delays are Ray Serve's ``AutoscalingConfig`` fields of the same names.
    """

    model_config = ConfigDict(extra="forbid")

    min_replicas: int = Field(
        default=0, ge=0, description="Fewest replicas; 0 lets an idle variant give its GPUs back."
    )
    max_replicas: int = Field(default=1, ge=1, description="Most replicas, i.e. jobs of this variant running at once.")
    upscale_delay_s: float = Field(
        default=0.0, ge=0, description="Seconds the queue must ask for more replicas before one is added."
    )
    downscale_delay_s: float = Field(
        default=300.0,
        ge=0,
        description="Seconds the queue must ask for fewer replicas before one is stopped (a stopped replica "
        "finishes its job first: graceful_shutdown_timeout_s is the variant's longest job).",
    )
    downscale_to_zero_delay_s: float | None = Field(
        default=None,
        ge=0,
        description="Seconds idle before the last replica is stopped (with min_replicas 0); None: downscale_delay_s.",
    )
    expected_start_s: float = Field(
        default=120.0,
        ge=0,
        description="Seconds a new replica takes to be scheduled, load its weights and warm up; added to the ETA "
        "of a job that waits for one. bench/cold_start.py measures it; 120 s is the order of a 14B "
        "variant loading from a local NVMe volume (tens of GB at a few GB/s, plus warm-up).",
    )

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} is above max_replicas {self.max_replicas}")
        return self

    def serve_config(self) -> dict:
        """Ray Serve's ``autoscaling_config`` for the generator deployment."""
        out = {
            "min_replicas": self.min_replicas,
            "initial_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            # One job per replica (max_ongoing_requests=1): the target is the number of jobs.
            "target_ongoing_requests": 1,
            "upscale_delay_s": self.upscale_delay_s,
            "downscale_delay_s": self.downscale_delay_s,
            # Short windows: a job is minutes long, so there is no burst to smooth, and a queued job
            # should bring a replica up at once.
            "metrics_interval_s": 1.0,
            "look_back_period_s": 2.0,
        }
        if self.downscale_to_zero_delay_s is not None:
            out["downscale_to_zero_delay_s"] = self.downscale_to_zero_delay_s
        return out


class DeploymentOptions(BaseModel):
    """Ray Serve options for this variant's generator deployment."""

    model_config = ConfigDict(extra="forbid")

    num_replicas: int = Field(
        default=1, ge=1, description="Generator replicas (one per GPU on GPU configs); ignored with autoscaling."
    )
    autoscaling: Autoscaling | None = Field(
        default=None,
        description="Queue-driven autoscaling between min_replicas and max_replicas; None: num_replicas, fixed.",
    )
    num_gpus: float = Field(default=0, ge=0, description="ray_actor_options.num_gpus per replica: 1 on GPU, 0 on CPU.")
    num_cpus: float = Field(default=1, ge=0, description="ray_actor_options.num_cpus per replica.")
    resources: dict[str, float] = Field(
        default={},
        description="Custom Ray resources per replica (ray_actor_options.resources), e.g. {gpu_node: 1} to pin "
        "the generators to nodes started with `ray start --resources '{\"gpu_node\": 4}'`.",
    )
    torch_threads: int | None = Field(
        default=None, ge=1, description="torch.set_num_threads in the replica; None keeps torch's default."
    )
    max_loaded_adapters: int = Field(
        default=4,
        ge=1,
        description="LoRA adapter sets a replica keeps loaded (Ray Serve multiplexing LRU); "
        "jobs go to a replica that has their set. A rank-64 LoRA of a 14B expert is a few hundred MB.",
    )

    @property
    def max_jobs(self) -> int:
        """Jobs of this variant that run at once at most: the router's dispatch slots."""
        return self.autoscaling.max_replicas if self.autoscaling is not None else self.num_replicas

    @property
    def scales_to_zero(self) -> bool:
        """Whether the variant may have no replica on purpose (autoscaling with min_replicas 0)."""
        return self.autoscaling is not None and self.autoscaling.min_replicas == 0


class Timeouts(BaseModel):
    """Limits per phase of a generator's work, seconds. Choices sized for A14B at 720P on one
    80 GB GPU (tens of minutes per job; Wan2.2 README), with room; lower them for smaller GPUs
    or shorter jobs. A job over ``generate_s`` or ``encode_s`` ends ``error`` with code ``timeout``."""

    model_config = ConfigDict(extra="forbid")

    load_s: float = Field(
        default=3600.0, gt=0, description="Loading the pipeline (and warm-up) in a replica's constructor."
    )
    generate_s: float = Field(default=7200.0, gt=0, description="Prompt encoding, denoising and VAE decode of one job.")
    encode_s: float = Field(default=600.0, gt=0, description="Writing one result file (MP4, WebM or zip).")


class GenerationDefaults(BaseModel):
    """Per-request defaults, used where the request leaves a field out."""

    model_config = ConfigDict(extra="forbid")

    num_frames: int = Field(ge=1, description="Frames in the output video; must satisfy the variant's 4k+1 rule.")
    num_inference_steps: int = Field(ge=1, description="Denoising steps.")
    guidance_scale: float = Field(
        ge=0, description="Classifier-free guidance scale (of the high-noise expert on A14B); <= 1 disables CFG."
    )
    guidance_scale_2: float | None = Field(
        default=None,
        ge=0,
        description="Guidance scale of the low-noise expert (A14B only); None: same as guidance_scale.",
    )
    negative_prompt: str = Field(default="", description="Negative prompt used when the request sends none.")


class Limits(BaseModel):
    """Upper bounds a request may ask for; checked before a job is queued."""

    model_config = ConfigDict(extra="forbid")

    max_num_frames: int = Field(ge=1, description="Largest num_frames a request may ask for.")
    max_inference_steps: int = Field(ge=1, description="Largest num_inference_steps a request may ask for.")
    min_inference_steps: int = Field(
        default=1,
        ge=1,
        description="Smallest num_inference_steps a request may ask for. 2 for Qwen-Image-Edit: its scheduler's "
        "shift_terminal stretch divides by zero at 1 step (diffusers FlowMatchEulerDiscreteScheduler), "
        "giving a NaN image.",
    )
    max_input_side: int = Field(
        default=4096,
        ge=16,
        description="Longest side, in pixels, of an uploaded image or video frame. "
        "4096 is 4K DCI width: any real camera frame fits, and a decoded 4096x4096 RGB image is 48 MiB.",
    )
    max_input_pixels: int = Field(
        default=4096 * 2160,
        ge=256,
        description="Largest uploaded image or video frame in pixels (width x height): 4K DCI, 4096x2160 "
        "(8.8 MP; a decoded RGB frame of it is 25 MiB). Checked from the header before decoding.",
    )
    max_source_frames: int = Field(
        default=10_000,
        ge=1,
        description="Frames an uploaded video may hold (its header's count, or duration x frame rate, and "
        "then the frames decoded): 10,000 is 2.8 minutes at 60 fps, far more than a job uses.",
    )
    decode_budget_s: float = Field(
        default=30.0,
        gt=0,
        description="Seconds decoding one uploaded video may take before it is refused (422).",
    )
    max_upload_bytes: int = Field(default=256 * 2**20, ge=1, description="Largest single uploaded file, bytes.")
    max_reference_images: int = Field(default=3, ge=0, description="Reference images a VACE request may send.")
    max_edit_images: int = Field(
        default=3,
        ge=1,
        description="Images an image_edit request may send: Qwen-Image-Edit-2509 is trained on one to three "
        "(its model card).",
    )
    min_image_side: int = Field(
        default=256, ge=16, description="image_edit: shortest side, in pixels, of an output size a request may ask for."
    )
    max_image_side: int = Field(
        default=2048,
        ge=16,
        description="image_edit: longest side, in pixels, of an output size a request may ask for. 2048 is twice "
        "the model's 1024x1024 training area per side; beyond it the model repeats content.",
    )


class ImageSizing(BaseModel):
    """How an image variant chooses its output size when a request names none, and the grid sizes
    snap to. Qwen-Image-Edit-2509's pipeline (diffusers QwenImageEditPlusPipeline,
    ``calculate_dimensions``): the input image's aspect ratio at an area of 1024x1024 pixels,
    rounded to multiples of 32; any requested size is floored to a multiple of 16 (the VAE's 8x
    times the transformer's 2x2 patch)."""

    model_config = ConfigDict(extra="forbid")

    default_area: int = Field(
        default=1024 * 1024, ge=256, description="Pixels of the default output size (width x height)."
    )
    default_multiple: int = Field(default=32, ge=1, description="The default size's sides are rounded to this.")
    multiple_of: int = Field(default=16, ge=1, description="A requested size's sides must be multiples of this.")


class VariantConfig(BaseModel):
    """One model variant, as written in ``configs/<name>.yaml``.

    Sizes are ``WIDTHxHEIGHT`` in pixels; ``fps`` is frames per second of the written video.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Variant name used in requests and deployment names, e.g. ti2v-5b.")
    description: str = Field(default="", description="One line for humans.")
    pipeline_class: Literal[
        "WanPipeline", "WanImageToVideoPipeline", "WanVACEPipeline", "QwenImageEditPlusPipeline"
    ] = Field(description="diffusers pipeline class the weights load into (model_index.json's _class_name).")
    task: Task = Field(description="Which inputs the variant takes: t2v, i2v, ti2v, vace or image_edit (see Task).")
    boundary_ratio: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="A14B only: fraction of the 1000 training timesteps above which the "
        "high-noise expert runs. Checked against the loaded pipeline's config.",
    )
    weights: WeightsSource = Field(description="Where the weights come from.")
    tiny_twin: str | None = Field(default=None, description="Name of this variant's tiny random-weight twin, if any.")
    twin_of: str | None = Field(default=None, description="For a tiny twin: the real variant it mirrors.")
    native_sizes: dict[str, Size] = Field(
        default={},
        description="Video variants: API size (one of API_SIZES) -> size the pipeline generates at natively. "
        "The first entry is the default size of requests without inputs. Image variants leave it empty.",
    )
    image_sizing: ImageSizing | None = Field(
        default=None, description="Image variants: how the output size is chosen and checked; None for video."
    )
    resize_mode: Literal["pad", "scale"] = Field(
        default="pad",
        description="How native frames reach the API size: pad with black bands (no distortion) or scale.",
    )
    fps: int = Field(
        default=1,
        gt=0,
        description="Frames per second of the output video; video variants must state it (image variants: 1).",
    )
    temporal_compression: int = Field(
        default=4, ge=1, description="VAE temporal compression; num_frames must be k*temporal_compression+1."
    )
    defaults: GenerationDefaults
    limits: Limits
    torch_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        default="bfloat16", description="dtype of the transformer and text encoder."
    )
    vae_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        default="float32", description="dtype of the VAE; the Wan model cards recommend float32."
    )
    device: Literal["auto", "cuda", "cpu"] = Field(
        default="auto", description="Device the pipeline runs on; auto picks cuda when the replica has a GPU."
    )
    max_sequence_length: int = Field(
        default=512, ge=1, description="Text tokens per prompt (Wan uses 512; Qwen-Image-Edit at most 1024)."
    )
    warmup: bool = Field(
        default=True, description="Run one short generation at replica start so the first job is not slow."
    )
    deployment: DeploymentOptions = Field(default_factory=DeploymentOptions)
    timeouts: Timeouts = Field(default_factory=Timeouts, description="Per-phase time limits of a job, seconds.")
    speed: SpeedConfig = Field(
        default_factory=SpeedConfig,
        description="Named speed profiles (step cache, attention backend) and the default one "
        "(model_store/speed_config.py).",
    )
    parallel: ParallelConfig = Field(
        default_factory=ParallelConfig,
        description="GPUs one replica spans: CFG-parallel and Ulysses ranks (model_store/parallel_config.py).",
    )
    memory: MemoryConfig = Field(
        default_factory=MemoryConfig,
        description="Quantization, offload, text encoder "
        "placement, VAE tiling and the fit check's budget (model_store/memory_config.py).",
    )

    @property
    def longest_job_s(self) -> float:
        """The longest a job may run in a replica (generate + encode limits), seconds: what a
        replica being stopped waits for (graceful_shutdown_timeout_s)."""
        return self.timeouts.generate_s + self.timeouts.encode_s

    @model_validator(mode="after")
    def _check(self) -> VariantConfig:
        if (self.boundary_ratio is None) != (self.defaults.guidance_scale_2 is None):
            raise ValueError(
                "boundary_ratio and defaults.guidance_scale_2 go together: both for A14B, neither otherwise"
            )
        if self.parallel.world_size > 1 and self.pipeline_class not in PARALLEL_PIPELINES:
            raise ValueError(
                f"parallel replicas run the Wan pipelines ({', '.join(PARALLEL_PIPELINES)}), whose two CFG passes "
                f"differ only in the text embeddings; {self.pipeline_class} is not one: drop parallel"
            )
        if self.output_kind == "image":
            if self.memory.text_encoder_device == "cpu":
                raise ValueError(
                    f"memory.text_encoder_device cpu is for the Wan pipelines, which encode the prompt alone; "
                    f"{self.pipeline_class} encodes the prompt with the input images inside its call: "
                    "use offload model or group to keep the text encoder off the GPU between jobs"
                )
            if self.native_sizes or self.image_sizing is None:
                raise ValueError(f"task {self.task} makes images: give image_sizing, not native_sizes")
            if self.defaults.num_frames != 1 or self.limits.max_num_frames != 1:
                raise ValueError(
                    f"task {self.task} makes one image: defaults.num_frames and limits.max_num_frames are 1"
                )
            return self
        if "fps" not in self.model_fields_set:
            raise ValueError("a video variant states its fps")
        unknown = set(self.native_sizes) - set(API_SIZES)
        if unknown:
            raise ValueError(f"native_sizes keys must be among {API_SIZES}, got {sorted(unknown)}")
        if not self.native_sizes:
            raise ValueError("native_sizes must map at least one API size")
        if not self.frames_ok(self.defaults.num_frames):
            raise ValueError(f"defaults.num_frames={self.defaults.num_frames} breaks the {self.frame_rule} rule")
        return self

    def image_size_for(self, width: int, height: int) -> Size:
        """Image variants: the default output size for an input of ``width`` x ``height`` pixels: its
        aspect ratio at ``image_sizing.default_area`` pixels, each side rounded to
        ``default_multiple`` (diffusers' ``calculate_dimensions`` for Qwen-Image-Edit).

        Raises:
            ValueError: not an image variant.
        """
        if self.image_sizing is None:
            raise ValueError(f"variant {self.name} makes videos; its sizes are native_sizes")
        sizing, ratio = self.image_sizing, width / height
        w = math.sqrt(sizing.default_area * ratio)
        step = sizing.default_multiple
        return Size(width=max(round(w / step), 1) * step, height=max(round(w / ratio / step), 1) * step)

    @property
    def default_size(self) -> Size:
        """The size of a request that names none and sends no media: the first native size, or for
        an image variant a square of ``image_sizing.default_area`` pixels."""
        return next(iter(self.native_sizes.values())) if self.native_sizes else self.image_size_for(1, 1)

    @property
    def output_kind(self) -> OutputKind:
        """``image`` for the IMAGE_TASKS, else ``video``."""
        return "image" if self.task in IMAGE_TASKS else "video"

    @property
    def uploads(self) -> TaskUploads:
        """The files this variant's task takes (TASK_UPLOADS)."""
        return TASK_UPLOADS[self.task]

    @property
    def takes_image(self) -> bool:
        """True when a first-frame ``image`` is accepted (TASK_UPLOADS)."""
        return "image" in self.uploads.accepted

    @property
    def frame_rule(self) -> str:
        """Human-readable frame-count rule, e.g. ``4k+1``."""
        return f"{self.temporal_compression}k+1"

    def frames_ok(self, num_frames: int) -> bool:
        """True when ``num_frames`` is ``k * temporal_compression + 1`` for some k >= 0."""
        return num_frames >= 1 and (num_frames - 1) % self.temporal_compression == 0

    def round_frames(self, frames: float, down: bool = False) -> int:
        """The frame count of the form ``k * temporal_compression + 1`` (k >= 0) nearest to ``frames``,
        or the largest not above it with ``down`` (what a clip of that many frames can give)."""
        step = self.temporal_compression
        k = (frames - 1) // step if down else round((frames - 1) / step)
        return int(max(k, 0)) * step + 1

    def weights_location(self, settings: StoreSettings | None = None) -> str:
        """The string to hand to ``from_pretrained``: an absolute local folder if it exists, else the repo id.

        Raises:
            FileNotFoundError: only a local_path is configured and the folder is missing.
        """
        settings = settings or StoreSettings()
        if self.weights.local_path is not None:
            path = self.weights.local_path
            if not path.is_absolute():
                path = settings.model_dir / path
            if path.is_dir():
                return str(path.resolve())
            if self.weights.repo_id is None:
                hint = " (build it with `wan-serve models build-tiny`)" if self.twin_of else ""
                raise FileNotFoundError(f"weights folder for variant {self.name!r} is missing: {path}{hint}")
        assert self.weights.repo_id is not None
        return self.weights.repo_id


def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = (
            _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


def load_variant(name: str, settings: StoreSettings | None = None, overrides: dict | None = None) -> VariantConfig:
    """Load and validate ``configs/<name>.yaml``, with ``overrides`` (nested keys) merged in first.

    Raises:
        VariantNotFound: no such file.
        pydantic.ValidationError: the file (with the overrides) does not match VariantConfig.
    """
    settings = settings or StoreSettings()
    path = settings.configs_dir / f"{name}.yaml"
    if not path.is_file():
        raise VariantNotFound(f"no variant config {name!r}; known: {', '.join(list_variants(settings))}")
    data = _merge(yaml.safe_load(path.read_text()), overrides or {})
    config = VariantConfig.model_validate(data)
    if config.name != name:
        raise ValueError(f"{path.name} declares name {config.name!r}; the file name and the name must agree")
    return config


def list_variants(settings: StoreSettings | None = None) -> list[str]:
    """Names of every variant config in the configs folder, sorted."""
    settings = settings or StoreSettings()
    return sorted(p.stem for p in settings.configs_dir.glob("*.yaml"))
