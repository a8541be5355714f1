"""Routes of the OpenAI-compatible Images API (/v1/images/edits, /v1/images/generations).

Thin: each route maps OpenAI's fields with ``ImagesService`` (serving.py) and submits through
``JobService``. ``ImagesRoutes`` is a base of the ingress deployment (serve_app/ingress.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from jobs.ownership import Caller
from serve_app.authentication import current_caller
from serve_app.errors import ERROR_RESPONSES
from serve_app.event_streams import StreamSlots
from serve_app.generate.serving import JobService, idempotency
from serve_app.images.protocol import ImageJobAccepted, ImagesResponse
from serve_app.images.serving import IMAGE_FILE_FIELDS, ImagesService
from serve_app.job_reads import JobReads
from serve_app.request_body import read_fields_and_files

router = APIRouter(tags=["openai"])

CallerDep = Depends(current_caller)

#: RFC 7240's preference for an answer before the work is done.
RESPOND_ASYNC = "respond-async"


class ImagesRoutes:
    """The /v1/images routes. Needs ``router`` (the router's handle), ``reads`` (the job store's
    reads), ``jobs``, ``images`` and
    ``streams`` (a synchronous request holds one of the replica's stream slots while it waits, as a
    progress stream does)."""

    router: Any
    reads: JobReads
    jobs: JobService
    images: ImagesService
    streams: StreamSlots

    @router.post(
        "/v1/images/edits",
        response_model=ImagesResponse,
        responses={**ERROR_RESPONSES, 202: {"model": ImageJobAccepted}},
    )
    async def edit_image(self, request: Request, caller: Caller = CallerDep) -> Any:
        """OpenAI ``images.edit``: multipart ``image`` (or ``image[]``, one to three), ``prompt``,
        ``model`` (an image variant), ``n`` (1), ``size`` (WIDTHxHEIGHT or auto), ``response_format``
        (url or b64_json), ``output_format`` (png, webp, jpeg); beyond OpenAI's fields negative_prompt,
        seed, num_inference_steps, true_cfg_scale, filename and webhooks.

        Answers when the image is made, as OpenAI does; the job is stored first, and listed and
        downloadable like any other. With ``Prefer: respond-async``, or once ``image_wait_s`` has
        passed, 202 with the job's id instead. A job that fails is 422 ``job_failed`` with its own
        error code in ``job_error_code``."""
        fields, uploads = await read_fields_and_files(request, IMAGE_FILE_FIELDS)
        req, images, response_format = self.images.edit_request(fields, uploads)
        key = idempotency(request.url.path, request.headers.get("idempotency-key"), req, images)
        view = await asyncio.shield(self.jobs.submit(req, images, idempotent=key, caller=caller))
        if RESPOND_ASYNC in request.headers.get("prefer", "").lower():
            return self._accepted(view)
        hold = self.streams.acquire(caller.key_id)  # 429 past the replica's or the key's limit
        try:
            ended = await self.images.wait(view.id, caller)
        finally:
            hold.release()
        if ended is None:
            return self._accepted(await self.reads.status(view.id, caller=caller))
        return await self.images.response(ended, response_format, str(request.base_url), caller)

    def _accepted(self, view) -> Response:
        body = self.images.accepted(view)
        return JSONResponse(body.model_dump(), status_code=202, headers={"Location": body.status_url})

    @router.post("/v1/images/generations", response_model=ImagesResponse, responses=ERROR_RESPONSES)
    async def generate_image(self, request: Request, caller: Caller = CallerDep) -> ImagesResponse:
        """OpenAI ``images.generate``. The image variants served here edit images and none makes one
        from text alone, so this answers 422 naming /v1/images/edits (or /v1/videos for a video model)."""
        fields, _ = await read_fields_and_files(request, ())
        self.images.refuse_generation(fields)
        raise AssertionError("refuse_generation always raises")
