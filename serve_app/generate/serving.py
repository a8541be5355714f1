"""Serving logic of the /generate API: requests into job specs, submission with the job's
inputs, and job views into responses.

Routes (routes.py) stay thin; the router deployment owns the state. Responses are built here
from the job domain's ``JobView``, never from stored records.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, get_args

from auth.signed_urls import DEFAULT_FILE_URL_TTL_S, UrlSigner
from jobs.errors import (
    AdapterNotDeployed,
    JobNotFound,
    ServiceError,
    ValidationFailed,
    VariantNotDeployed,
    unwrap,
)
from jobs.filenames import caller_filename
from jobs.inputs import PreparedInputs, remove_inputs
from jobs.model import (
    DEFAULT_WEBHOOK_EVENTS,
    OUTPUT_FORMATS,
    GenerationParams,
    JobSpec,
    JobView,
    LoraRef,
    OutputFormat,
    WebhookEvent,
    WebhookSpec,
)
from jobs.objects import ObjectStore
from jobs.ownership import OPEN, Caller
from model_store.adapters import AdapterNotFound, adapter_for, list_adapters
from model_store.settings import StoreSettings
from model_store.variants import Size, VariantConfig
from serve_app.generate.protocol import (
    GenerateAccepted,
    GenerateRequest,
    JobStatusResponse,
    VideoInfo,
    WebhookDeliveries,
)
from serve_app.job_reads import JobReads
from serve_app.media_inputs import Upload, prepare_media
from webhooks.guard import DEFAULT_WEBHOOK_PORTS, Resolver, check_webhook_url, system_resolve
from webhooks.model import WebhookMessage

#: Longest Idempotency-Key taken, characters (Stripe's limit, which clients are written for).
MAX_IDEMPOTENCY_KEY = 255

#: Seconds a submit whose router call failed waits for a router to say whether the job was stored:
#: Serve restarts a dead router in a few seconds (bench/recovery.py measured 8 to 10 s).
STORED_CHECK_S = 60.0


def idempotency(
    path: str, key: str | None, req: GenerateRequest, uploads: list[Upload] | None
) -> tuple[str, str] | None:
    """(key, sha256 of the route, the request's fields and files) when the request has an Idempotency-Key.

    Raises:
        ValidationFailed: an empty key, or one longer than 255 characters.
    """
    if key is None:
        return None
    if not key.strip() or len(key) > MAX_IDEMPOTENCY_KEY:
        raise ValidationFailed(
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters", field="Idempotency-Key"
        )
    digest = hashlib.sha256(path.encode() + b"\0" + req.model_dump_json().encode())
    for upload in uploads or []:
        digest.update(b"\0" + upload.field.encode() + b"\0" + hashlib.sha256(upload.data).digest())
    return key, digest.hexdigest()


#: Requests whose uploads one ingress replica decodes at once (more wait their turn): two, the
#: cores of a small node; decoding holds the GIL only part of the time (PyAV and Pillow release it).
DECODE_WORKERS = 2


def output_formats(variant: VariantConfig) -> list[OutputFormat]:
    """The result formats ``variant`` writes, its default first: image variants the image formats
    (png first); video variants mp4, and webm and png_zip (the mask as alpha) for inpainting (vace)
    variants only, since only they have a mask."""
    formats = [f for f in get_args(OutputFormat) if OUTPUT_FORMATS[f].kind == variant.output_kind]
    return formats if variant.task in ("vace", "image_edit") else ["mp4"]


def frames_for_seconds(variant: VariantConfig, seconds: float) -> int:
    """``seconds`` of video at the variant's fps, rounded to the nearest 4k+1 frame count.

    Raises:
        ValidationFailed: not a positive number, or more frames than ``limits.max_num_frames``.
    """
    if not seconds > 0:
        raise ValidationFailed(f"seconds must be a positive number, got {seconds!r}", field="seconds")
    # Compared before rounding: a huge float (1e307 s) times fps is inf, which round() refuses.
    too_long = seconds * variant.fps > variant.limits.max_num_frames + variant.temporal_compression
    frames = variant.limits.max_num_frames + 1 if too_long else variant.round_frames(seconds * variant.fps)
    if frames > variant.limits.max_num_frames:
        longest = variant.limits.max_num_frames / variant.fps
        raise ValidationFailed(
            f"seconds={seconds:g} is more than {variant.name} makes: at most "
            f"{variant.limits.max_num_frames} frames ({longest:g} s)",
            field="seconds",
        )
    return frames


class JobService:
    """Validates requests against the deployed variants, builds and submits jobs, and turns job
    views into responses.

    Args:
        router: the router deployment's handle (or any object with its methods' ``.remote``).
        reads: the job store's reads (serve_app/job_reads.py); None only where nothing is submitted.
        variants: the deployed variants by name; ``default_variant`` for requests naming none.
        objects: the object store this ingress saves a job's decoded uploads to (jobs/inputs.py).
        webhook_allow_networks: networks the SSRF guard admits; ``webhook_allow_ports`` the ports
            it admits for public receivers; ``resolve`` its resolver.
        store: the model store (LoRA adapters).
        signer: signs the ``file_url`` of responses (auth/signed_urls.py).
    """

    def __init__(
        self,
        router: Any,
        variants: dict[str, VariantConfig],
        default_variant: str,
        objects: ObjectStore,
        webhook_allow_networks: list[str] | None = None,
        resolve: Resolver = system_resolve,
        webhook_allow_ports: list[int] | None = None,
        store: StoreSettings | None = None,
        signer: UrlSigner | None = None,
        reads: JobReads | None = None,
    ) -> None:
        self.router = router
        self._reads = reads
        self.objects = objects
        self.store = store or StoreSettings()
        self.variants = variants
        self.default_variant = default_variant
        self.webhook_allow_networks = list(webhook_allow_networks or [])
        self.webhook_allow_ports = list(webhook_allow_ports or DEFAULT_WEBHOOK_PORTS)
        self.decode_pool = ThreadPoolExecutor(max_workers=DECODE_WORKERS, thread_name_prefix="decode")
        self.resolve = resolve
        self.signer = signer or UrlSigner(secrets.token_bytes(32), ttl_s=DEFAULT_FILE_URL_TTL_S)

    @property
    def reads(self) -> JobReads:
        """The job store's reads. Raises RuntimeError in a JobService built without them."""
        if self._reads is None:
            raise RuntimeError("this JobService was built without the job store's reads")
        return self._reads

    def webhook_spec(self, url: str | None, events: list[WebhookEvent] | None) -> WebhookSpec | None:
        """The checked webhook of a request, or None without ``url``. Resolves the host (blocking).

        Raises:
            WebhookRefused: the URL fails the SSRF guard (see deployments/webhook_guard.py).
            ValidationFailed: events without a URL, or an empty event list.
        """
        if url is None:
            if events:
                raise ValidationFailed("webhook_events needs a webhook_url to send them to", field="webhook_events")
            return None
        if events is not None and not events:
            raise ValidationFailed(
                "webhook_events is empty; leave it out for the terminal events", field="webhook_events"
            )
        check_webhook_url(url, self.webhook_allow_networks, self.resolve, self.webhook_allow_ports)
        return WebhookSpec(url=url, events=list(dict.fromkeys(events)) if events else list(DEFAULT_WEBHOOK_EVENTS))

    def variant_for(self, name: str | None) -> VariantConfig:
        """The deployed variant ``name`` (default when None). Raises VariantNotDeployed."""
        name = name or self.default_variant
        if name not in self.variants:
            raise VariantNotDeployed(
                f"variant {name!r} is not deployed here; deployed: {', '.join(sorted(self.variants))}",
                deployed=sorted(self.variants),
            )
        return self.variants[name]

    def build_spec(
        self, req: GenerateRequest, uploads: list[Upload] | None = None
    ) -> tuple[JobSpec, PreparedInputs | None]:
        """Resolve defaults, check limits, and decode and fit the uploads, before anything is queued.

        CPU-bound for media uploads (decoding, resizing): call it in a worker thread.
        Returns the job spec (without ``inputs``: the caller saves the prepared inputs and sets
        it) and the prepared inputs, or None for a text-only job.

        Raises:
            VariantNotDeployed: unknown variant.
            ValidationFailed: size, frames, steps or output format outside what the variant allows;
                a bad filename; a missing or unexpected upload (and its subclasses for bad media).
            WebhookRefused: a webhook_url the SSRF guard refuses.
            AdapterNotDeployed: a LoRA adapter the model store lacks for this variant.
        """
        variant = self.variant_for(req.variant)
        webhook = self.webhook_spec(req.webhook_url, req.webhook_events)
        loras = self.check_loras(variant, req.loras or [])
        d, limits = variant.defaults, variant.limits
        formats = output_formats(variant)
        output_format = req.output_format or formats[0]
        if output_format not in formats:
            why = (
                f"{variant.name} makes {variant.output_kind}s"
                if OUTPUT_FORMATS[output_format].kind != variant.output_kind
                else f"output_format {output_format} carries an inpainting mask as alpha; it is for vace variants, "
                f"and {variant.name} is {variant.task}"
            )
            raise ValidationFailed(f"{why}: use {' or '.join(formats)}", field="output_format")
        self._check_guidance_fields(variant, req)
        speed = req.speed or variant.speed.default
        if speed not in variant.speed.profiles:
            raise ValidationFailed(
                f"{variant.name} has no speed profile {speed!r}; it has {', '.join(variant.speed.profiles)}",
                field="speed",
            )
        num_frames = req.num_frames
        if req.seconds is not None:
            if num_frames is not None:
                raise ValidationFailed("send num_frames or seconds, not both", field="seconds")
            num_frames = frames_for_seconds(variant, req.seconds)
        if num_frames is not None:
            self._check_frames(variant, num_frames)
        distilled = variant.speed.profiles[speed].distilled
        steps = req.num_inference_steps if req.num_inference_steps is not None else d.num_inference_steps
        asked_guidance = req.true_cfg_scale if variant.task == "image_edit" else req.guidance_scale
        if distilled is not None:
            # The LoRA was distilled for one step count without CFG: other settings would run the
            # fast profile at its cost in quality without its speed.
            asked = {
                "num_inference_steps": (req.num_inference_steps, distilled.num_inference_steps),
                ("true_cfg_scale" if variant.task == "image_edit" else "guidance_scale"): (asked_guidance, 1.0),
                "guidance_scale_2": (req.guidance_scale_2, 1.0),
            }
            for field, (value, fixed) in asked.items():
                if value is not None and value != fixed:
                    raise ValidationFailed(
                        f"speed profile {speed} runs {distilled.num_inference_steps} denoising steps with CFG off "
                        f"(guidance_scale 1); leave {field} unset or send {fixed:g}",
                        field=field,
                    )
            steps = distilled.num_inference_steps
        elif not limits.min_inference_steps <= steps <= limits.max_inference_steps:
            raise ValidationFailed(
                f"num_inference_steps must be {limits.min_inference_steps} to {limits.max_inference_steps} "
                f"for {variant.name}; got {steps}",
                field="num_inference_steps",
            )
        image_variants = sorted(n for n, v in self.variants.items() if v.takes_image)
        media = prepare_media(
            variant,
            size=req.size,
            num_frames=num_frames,
            fit=req.fit,
            uploads=uploads or [],
            image_variants=image_variants,
        )
        self._check_frames(variant, media.num_frames)
        native = variant.native_sizes[media.size] if variant.native_sizes else Size.parse(media.size)
        guidance = asked_guidance if asked_guidance is not None else d.guidance_scale
        guidance_2 = req.guidance_scale_2 if req.guidance_scale_2 is not None else d.guidance_scale_2
        if distilled is not None:
            guidance, guidance_2 = 1.0, 1.0
        params = GenerationParams(
            prompt=req.prompt,
            negative_prompt=req.negative_prompt if req.negative_prompt is not None else d.negative_prompt,
            width=native.width,
            height=native.height,
            num_frames=media.num_frames,
            num_inference_steps=steps,
            guidance_scale=guidance,
            guidance_scale_2=guidance_2 if variant.boundary_ratio is not None else None,
            seed=req.seed if req.seed is not None else secrets.randbelow(2**32),
            loras=loras,
            speed=speed,
        )
        extension = OUTPUT_FORMATS[output_format].extension
        spec = JobSpec(
            id=uuid.uuid4().hex,
            variant=variant.name,
            params=params,
            output_size=Size.parse(media.size),
            filename=caller_filename(req.filename, extension) if req.filename is not None else None,
            output_format=output_format,
            preserve_unmasked=req.preserve_unmasked,
            webhook=webhook,
        )
        return spec, media.inputs

    def check_loras(self, variant: VariantConfig, loras: list[LoraRef]) -> list[LoraRef]:
        """The request's adapters, each present in the model store for ``variant`` (adapter.yaml's base).

        Raises:
            AdapterNotDeployed: unknown, or for another variant; the message lists the ones there are.
            ValidationFailed: the same adapter named twice.
        """
        names = [lora.name for lora in loras]
        if len(set(names)) != len(names):
            raise ValidationFailed(
                "loras names an adapter twice; give each adapter once, with one scale", field="loras"
            )
        for lora in loras:
            try:
                adapter_for(lora.name, variant, self.store)
            except AdapterNotFound as exc:
                there = sorted(a.name for a in list_adapters(self.store) if a.base == variant.name)
                raise AdapterNotDeployed(
                    f"{exc}; adapters for {variant.name}: {', '.join(there) or 'none'}", field="loras", adapters=there
                ) from None
        return loras

    @staticmethod
    def _check_guidance_fields(variant: VariantConfig, req: GenerateRequest) -> None:
        """Refuse the fields of another kind of variant, naming the one this variant takes.

        Raises:
            ValidationFailed: guidance_scale_2 without two experts; true_cfg_scale on a Wan variant;
                guidance_scale, num_frames or seconds on an image variant.
        """
        if req.guidance_scale_2 is not None and variant.boundary_ratio is None:
            raise ValidationFailed(
                f"guidance_scale_2 sets the low-noise expert's guidance; {variant.name} has one expert: "
                "use guidance_scale" + (" (true_cfg_scale for an image variant)" if variant.image_sizing else ""),
                field="guidance_scale_2",
            )
        if variant.task == "image_edit":
            if req.guidance_scale is not None:
                raise ValidationFailed(
                    f"{variant.name} (Qwen-Image-Edit) takes its guidance as true_cfg_scale, not guidance_scale",
                    field="guidance_scale",
                )
            for name in ("num_frames", "seconds"):
                if getattr(req, name) is not None:
                    raise ValidationFailed(f"{variant.name} makes one image; leave out {name}", field=name)
        elif req.true_cfg_scale is not None:
            raise ValidationFailed(
                f"true_cfg_scale is Qwen-Image-Edit's guidance; {variant.name} takes guidance_scale",
                field="true_cfg_scale",
            )

    @staticmethod
    def _check_frames(variant: VariantConfig, num_frames: int) -> None:
        limits = variant.limits
        if not variant.frames_ok(num_frames) or num_frames > limits.max_num_frames:
            nearest = min(variant.round_frames(num_frames), limits.max_num_frames)
            raise ValidationFailed(
                f"num_frames must be {variant.frame_rule} and at most {limits.max_num_frames} for {variant.name}; "
                f"got {num_frames}, try {nearest}",
                field="num_frames",
            )

    async def submit(
        self,
        req: GenerateRequest | None,
        uploads: list[Upload] | None,
        spec: JobSpec | None = None,
        idempotent: tuple[str, str] | None = None,
        caller: Caller = OPEN,
    ) -> JobView:
        """Build (unless given), store the inputs of, and submit one job of ``caller``; returns the
        router's view.

        ``idempotent`` is (key, request hash): a key seen before returns its job, built once. Inputs
        are removed again when the router refuses the job or a concurrent twin won its key.

        Raises:
            ServiceError: what ``build_spec`` or the router's submit raise.
        """
        key, request_hash = idempotent or (None, None)
        if key is not None:
            earlier = await self.reads.find_idempotent(key, request_hash or "", caller=caller)
            if earlier is not None:
                return earlier
        if spec is None:
            assert req is not None
            if uploads or req.webhook_url or req.loras:
                # Decoding runs in a pool of its own, so a few hostile uploads wait behind each other
                # instead of taking the threads that status calls and /ready use. A webhook's host
                # is resolved (the SSRF guard) and adapters are looked up on disk there too.
                loop = asyncio.get_running_loop()
                built, prepared = await loop.run_in_executor(self.decode_pool, self.build_spec, req, uploads)
            else:  # checks of numbers and names only: cheaper here than the hop to a thread
                built, prepared = self.build_spec(req, uploads)
            if prepared is not None:
                built.inputs = await asyncio.to_thread(prepared.save, self.objects, built.id)
            spec = built
        try:
            view = await self.router.submit.remote(spec, key, request_hash, caller=caller)
        except Exception as exc:
            # Refused (queue full, filename taken): the job does not exist, so neither do its inputs.
            # Anything else (the router died): it may have stored the job before dying, so ask.
            stored = None if isinstance(unwrap(exc), ServiceError) else await self._stored(spec.id, caller)
            if stored is None:
                await asyncio.to_thread(remove_inputs, spec.inputs, self.objects)
                raise
            return stored
        if view.id != spec.id:  # a concurrent twin with the same key won
            await asyncio.to_thread(remove_inputs, spec.inputs, self.objects)
        return view

    async def _stored(self, job_id: str, caller: Caller) -> JobView | None:
        """The job as the job store has it, or None when it is not stored (the router died before
        its write committed: the write is all or nothing)."""
        try:
            return await self.reads.status(job_id, caller)
        except JobNotFound:
            return None

    @staticmethod
    def accepted(view: JobView) -> GenerateAccepted:
        return GenerateAccepted(
            id=view.id,
            queue_position=view.queue_position,
            eta_seconds=view.eta_seconds,
            waiting_for_replica=view.waiting_for_replica,
        )

    def signed(self, url: str | None) -> str | None:
        """A download path as a signed, expiring URL (None stays None)."""
        return self.signer.sign(url) if url else None

    def status(self, view: JobView) -> JobStatusResponse:
        return JobStatusResponse(
            id=view.id,
            status=view.status,
            variant=view.variant,
            prompt=view.prompt,
            progress=view.progress,
            phase=view.phase.value if view.phase else None,
            step=view.step,
            total_steps=view.total_steps,
            queue_position=view.queue_position,
            eta_seconds=view.eta_seconds,
            waiting_for_replica=view.waiting_for_replica,
            gpu_id=view.gpu_id,
            attempts=view.attempts,
            seed=view.params.seed,
            speed=view.params.speed,
            filename=view.filename,
            file_url=self.signed(view.file_url),
            error=view.error.model_dump() if view.error else None,
            webhook=view.webhook,
            created_at=view.created_at,
            output_format=view.output_format,
            size=str(view.output_size),
            num_frames=view.params.num_frames,
            inputs=view.inputs,
            timings={k: view.result[k] for k in ("pipeline_seconds", "encode_seconds")} if view.result else None,
            started_at=view.started_at,
            finished_at=view.finished_at,
        )

    def video(self, view: JobView) -> VideoInfo:
        assert view.filename is not None and view.file_url is not None
        return VideoInfo(
            filename=view.filename,
            file_url=self.signer.sign(view.file_url),
            job_id=view.id,
            size_bytes=(view.result or {}).get("size_bytes", 0),
            created_at=view.finished_at or view.created_at,
        )

    @staticmethod
    def webhook_deliveries(view: JobView, messages: list[WebhookMessage]) -> WebhookDeliveries:
        return WebhookDeliveries(job_id=view.id, webhook=view.webhook, messages=messages)
