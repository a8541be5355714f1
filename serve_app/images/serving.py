"""Serving logic of the OpenAI-compatible Images API: OpenAI's fields in, /generate requests out,
a wait for the job (OpenAI answers images synchronously), and the result as OpenAI's
``ImagesResponse``. The jobs are /generate's: same queue, store, ids, limits and webhooks."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any, cast, get_args

from jobs.errors import JobFailed, ValidationFailed, VariantNotDeployed
from jobs.files import ResultFiles
from jobs.model import JobStatus, JobView
from jobs.ownership import Caller
from model_store.variants import VariantConfig
from serve_app.generate.protocol import GenerateRequest
from serve_app.generate.serving import JobService
from serve_app.images.protocol import ImageData, ImageJobAccepted, ImagesResponse, ResponseFormat
from serve_app.job_reads import JobReads
from serve_app.media_inputs import Upload
from serve_app.request_body import validate_model

#: Multipart file fields of POST /v1/images/edits: openai-python sends one image as ``image`` and a
#: list as repeated ``image[]``.
IMAGE_FILE_FIELDS = ("image", "image[]")

#: OpenAI's fields this service takes, and its own beyond them (the /generate names).
OPENAI_FIELDS = ("prompt", "model", "n", "size", "response_format", "output_format", "user")
EXTRA_FIELDS = (
    "negative_prompt",
    "seed",
    "num_inference_steps",
    "true_cfg_scale",
    "filename",
    "webhook_url",
    "webhook_events",
    "loras",
)

#: How long a synchronous /v1/images request waits for its job by default, seconds: under the 600 s
#: default timeout of the openai package's client, so the service answers (202) before it gives up.
DEFAULT_IMAGE_WAIT_S = 540.0

#: Seconds one wait for the job's events lasts before the deadline is looked at again.
WAIT_STEP_S = 15.0


def _one_image(n: Any) -> None:
    """Refuse any ``n`` but 1: a job makes one image.

    Raises:
        ValidationFailed: n is not 1.
    """
    if n is None or str(n).strip() == "1":
        return
    raise ValidationFailed(f"n must be 1 here, got {n}: each image is a job; send one request per image", field="n")


class ImagesService:
    """Maps /v1/images requests onto ``JobService`` and finished jobs onto ``ImagesResponse``.

    Args:
        jobs: the ingress's job service.
        reads: the job store's reads (events, status, check_file; serve_app/job_reads.py).
        files: the result files (in the object store).
        wait_s: how long a synchronous request waits for its job, seconds (AppArgs.image_wait_s).
    """

    def __init__(self, jobs: JobService, reads: JobReads, files: ResultFiles, wait_s: float) -> None:
        self.jobs = jobs
        self.reads = reads
        self.files = files
        self.wait_s = wait_s

    def image_variant(self, model: str | None, route: str) -> VariantConfig:
        """The image variant ``model`` names; without one, the default variant when it makes images,
        else the first deployed image variant.

        Raises:
            VariantNotDeployed: no such variant, or no image variant is deployed.
            ValidationFailed: ``model`` makes videos.
        """
        if model:
            variant = self.jobs.variant_for(model)
            if variant.output_kind != "image":
                raise ValidationFailed(
                    f"model {variant.name} makes videos; {route} is for image variants: use POST /v1/videos "
                    "or POST /generate",
                    field="model",
                )
            return variant
        default = self.jobs.variant_for(None)
        if default.output_kind == "image":
            return default
        images = [v for v in self.jobs.variants.values() if v.output_kind == "image"]
        if not images:
            raise VariantNotDeployed(
                f"no image variant is deployed here; deployed: {', '.join(sorted(self.jobs.variants))}",
                deployed=sorted(self.jobs.variants),
            )
        return images[0]

    def edit_request(self, fields: dict, uploads: list[Upload]) -> tuple[GenerateRequest, list[Upload], ResponseFormat]:
        """OpenAI's edit fields as a /generate request, its images, and the response format.

        Raises:
            ValidationFailed: an unknown or unsupported field, n other than 1, a bad response_format.
            RequestValidationError: fields /generate refuses (answered 422).
            VariantNotDeployed: see ``image_variant``.
        """
        fields = dict(fields)
        unknown = sorted(set(fields) - set(OPENAI_FIELDS) - set(EXTRA_FIELDS))
        if unknown:
            raise ValidationFailed(
                f"field {unknown[0]!r} is not supported; /v1/images/edits takes image (or image[]), "
                f"{', '.join(OPENAI_FIELDS)}, and beyond OpenAI's fields {', '.join(EXTRA_FIELDS)}",
                field=unknown[0],
            )
        _one_image(fields.pop("n", None))
        fields.pop("user", None)  # OpenAI's end-user id, for its abuse monitoring; nothing to do with it here
        response_format = fields.pop("response_format", None) or "url"
        if response_format not in get_args(ResponseFormat):
            raise ValidationFailed(
                f"response_format must be url or b64_json, got {response_format!r}", field="response_format"
            )
        variant = self.image_variant(fields.pop("model", None), "/v1/images/edits")
        if fields.get("size") == "auto":
            del fields["size"]
        images = [Upload(field="image", data=u.data, filename=u.filename) for u in uploads]
        request = validate_model(GenerateRequest, {**fields, "variant": variant.name})
        return request, images, cast(ResponseFormat, response_format)

    def refuse_generation(self, fields: dict) -> None:
        """/v1/images/generations: every deployed image variant edits images, and none makes one
        from text alone, so the request is refused with where to send it.

        Raises:
            ValidationFailed: always, naming the route that takes the request.
            VariantNotDeployed: no image variant is deployed, or ``model`` is unknown.
        """
        _one_image(fields.get("n"))
        variant = self.image_variant(fields.get("model"), "/v1/images/generations")
        raise ValidationFailed(
            f"model {variant.name} edits images and cannot make one from text alone: send the image(s) to edit "
            "with the prompt to POST /v1/images/edits",
            field="model",
        )

    async def wait(self, job_id: str, caller: Caller) -> JobView | None:
        """The job once it has ended, or None when ``wait_s`` passed first (it keeps running)."""
        deadline = time.monotonic() + self.wait_s
        after = 0
        while (left := deadline - time.monotonic()) > 0:
            batch = await self.reads.events(job_id, after, min(WAIT_STEP_S, left), caller=caller)
            if batch.events:
                after = batch.events[-1].id
            if batch.done:
                return await self.reads.status(job_id, caller=caller)
        return None

    @staticmethod
    def accepted(view: JobView) -> ImageJobAccepted:
        status = "running" if view.status == JobStatus.running else "queued"
        return ImageJobAccepted(id=view.id, status=status, status_url=f"/status/{view.id}")

    async def response(
        self, view: JobView, response_format: ResponseFormat, base_url: str, caller: Caller
    ) -> ImagesResponse:
        """The ended job as OpenAI's answer: a signed absolute URL or the bytes in base64.

        Raises:
            JobFailed: the job ended in error or was canceled (its code and message in the details).
            FileNotFoundForJob: its file was deleted meanwhile.
        """
        if view.status != JobStatus.success or view.file_url is None or view.filename is None:
            error = view.error
            raise JobFailed(
                f"job {view.id} ended {view.status.value}: {error.message if error else 'no image was made'}",
                job_id=view.id,
                job_error_code=error.code if error else None,
            )
        if response_format == "url":
            data = ImageData(url=base_url.rstrip("/") + self.jobs.signer.sign(view.file_url))
        else:
            name = await self.reads.check_file(view.filename, caller=caller)
            raw = await asyncio.to_thread(self.files.store.get_bytes, self.files.key(name))
            data = ImageData(b64_json=base64.b64encode(raw).decode())
        return ImagesResponse(
            created=int(view.created_at),
            data=[data],
            output_format=cast(Any, view.output_format),
            size=str(view.output_size),
            id=view.id,
            model=view.variant,
            seed=view.params.seed,
        )
