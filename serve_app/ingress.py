"""The HTTP ingress deployment: FastAPI routes through ``serve.ingress``. OpenAPI at /docs."""


import asyncio
import hashlib
import json
import shutil
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.errors import FileNotFoundForJob, JobNotFound, ValidationFailed, unwrap
from deployments.jobs import JobStatus
from deployments.replica_status import generator_statuses
from deployments.router import JobView
from model_store.variants import VariantConfig
from model_store.settings import StoreSettings
from serve_app import errors
from serve_app.filenames import RESULT_EXTENSIONS, sanitize_filename
from serve_app.protocol import (
    DeleteJobsResult,
    DeleteVideosResult,
    ErrorResponse,
    GenerateAccepted,
    JobStatusResponse,
    VideoInfo,
    WebhookDeliveries,
)
from serve_app.previews import spritesheet_jpeg, thumbnail_jpeg
from serve_app.request_body import generate_openapi, read_fields_and_files, read_generate_request
from serve_app.serving import JobService
from serve_app.videos_protocol import RemixRequest, Video, VideoDeleted, VideoList
from serve_app.videos_serving import VIDEO_FILE_FIELDS, VideosService

_MEDIA_TYPES = {".mp4": "video/mp4", ".webm": "video/webm", ".zip": "application/zip"}

#: Seconds one events call waits in the router for something new; an SSE keep-alive comment
#: goes out after each empty wait, so proxies with idle timeouts of 30 s or more keep the stream.
EVENTS_WAIT_S = 15.0


def _last_event_id(header: str | None) -> int:
    try:
        return max(int(header), 0) if header else 0
    except ValueError:
        raise ValidationFailed(f"Last-Event-ID must be an event id (an integer), got {header!r}",
                               field="Last-Event-ID") from None

api = FastAPI(
    title="wan-serve",
    summary="Wan 2.2 video generation over HTTP: submit a prompt, poll progress, download an MP4.",
    version="0.1.0",
)
errors.install(api)

_ERRORS = {code: {"model": ErrorResponse} for code in (404, 409, 413, 415, 422, 429, 503)}


#: Longest Idempotency-Key taken, characters (Stripe's limit, which clients are written for).
MAX_IDEMPOTENCY_KEY = 255


def idempotency(request: Request, req, uploads) -> tuple[str, str] | None:
    """(key, sha256 of the request's fields and files) when the request has an Idempotency-Key.

    Raises:
        ValidationFailed: an empty key, or one longer than 255 characters.
    """
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not key.strip() or len(key) > MAX_IDEMPOTENCY_KEY:
        raise ValidationFailed(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters", field="Idempotency-Key")
    digest = hashlib.sha256(request.url.path.encode() + b"\0" + req.model_dump_json().encode())
    for upload in uploads or []:
        digest.update(b"\0" + upload.field.encode() + b"\0" + hashlib.sha256(upload.data).digest())
    return key, digest.hexdigest()


def _split(csv: str | None) -> list[str]:
    return [part for part in (csv or "").split(",") if part]


@serve.deployment(max_ongoing_requests=200, ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class Ingress:
    """Validates requests, forwards them to the router, and serves result files."""

    def __init__(self, router: DeploymentHandle, variants: dict[str, VariantConfig], default_variant: str,
                 inputs_dir: str, webhook_allow_networks: list[str] | None = None,
                 retention_days: float | None = None, model_dir: str | None = None) -> None:
        self.router = router
        store = StoreSettings(model_dir=Path(model_dir)) if model_dir else StoreSettings()
        self.jobs = JobService(variants, default_variant, webhook_allow_networks, store=store)
        self.videos = VideosService(self.jobs, retention_days)
        self.inputs_dir = Path(inputs_dir)

    @api.post("/generate", status_code=202, response_model=GenerateAccepted, responses=_ERRORS,
              openapi_extra=generate_openapi())
    async def generate(self, request: Request, response: Response) -> GenerateAccepted:
        """Queue a video generation job: JSON for text-only jobs, multipart/form-data with files
        (image, last_image, video, mask, reference_images) for the others.

        Uploads are decoded and checked before anything is queued; the job (and its decoded
        inputs) are stored before this answers 202. With an ``Idempotency-Key`` header, the
        same key and request return the same job (header ``Idempotent-Replayed: true``).
        """
        req, uploads = await read_generate_request(request)
        # Shielded: once the request is read, a client that goes away does not stop it being stored.
        view = await asyncio.shield(self._submit(req, uploads, idempotent=idempotency(request, req, uploads)))
        if view.replayed:
            response.headers["Idempotent-Replayed"] = "true"
        return self.jobs.accepted(view)

    async def _submit(self, req, uploads, spec=None, idempotent: tuple[str, str] | None = None) -> JobView:
        """Build (unless given), store the inputs of, and submit one job; returns the router's view.

        ``idempotent`` is (key, request hash): a key seen before returns its job, built once.
        """
        key, request_hash = idempotent or (None, None)
        if key is not None:
            earlier = await self.router.find_idempotent.remote(key, request_hash)
            if earlier is not None:
                return earlier
        if spec is None:
            spec, prepared = await asyncio.to_thread(self.jobs.build_spec, req, uploads)
            if prepared is not None:
                spec.inputs = await asyncio.to_thread(prepared.save, self.inputs_dir / spec.id)
        try:
            view = await self.router.submit.remote(spec, key, request_hash)
        except BaseException:
            # Refused (queue full, filename taken): the job does not exist, so neither do its inputs.
            if spec.inputs is not None:
                await asyncio.to_thread(shutil.rmtree, spec.inputs.folder, True)
            raise
        if view.record.id != spec.id and spec.inputs is not None:  # a concurrent twin with the same key won
            await asyncio.to_thread(shutil.rmtree, spec.inputs.folder, True)
        return view

    # ---- OpenAI-compatible Videos API --------------------------------------------------

    @api.post("/v1/videos", response_model=Video, responses=_ERRORS, tags=["openai"])
    async def create_video(self, request: Request) -> Video:
        """OpenAI ``videos.create``: prompt, model (a variant), seconds, size, and an optional
        ``input_reference`` image (multipart) for image-to-video."""
        fields, uploads = await read_fields_and_files(request, VIDEO_FILE_FIELDS)
        req, images = self.videos.generate_request(fields, uploads)
        return self.videos.video(await asyncio.shield(
            self._submit(req, images, idempotent=idempotency(request, req, images))))

    @api.get("/v1/videos", response_model=VideoList, responses=_ERRORS, tags=["openai"])
    async def list_videos(
        self,
        after: str | None = Query(default=None, description="Id of the last video of the previous page."),
        limit: int = Query(default=20, ge=1, le=100, description="Videos per page."),
        order: Literal["asc", "desc"] = Query(default="desc", description="By creation time."),
    ) -> VideoList:
        """OpenAI ``videos.list``: every job of this service, newest first by default."""
        views, more = await self.router.page.remote(after, limit, order == "desc")
        data = [self.videos.video(v) for v in views]
        return VideoList(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None,
                         has_more=more)

    @api.get("/v1/videos/{video_id}", response_model=Video, responses=_ERRORS, tags=["openai"])
    async def retrieve_video(self, video_id: str) -> Video:
        """OpenAI ``videos.retrieve``."""
        return self.videos.video(await self.router.status.remote(video_id))

    @api.delete("/v1/videos/{video_id}", response_model=VideoDeleted, responses=_ERRORS, tags=["openai"])
    async def delete_video(self, video_id: str) -> VideoDeleted:
        """OpenAI ``videos.delete``: cancels the job if it is unfinished, removes it and its file."""
        await self.router.status.remote(video_id)  # 404 for an unknown id
        await self.router.delete_jobs.remote([video_id], None, False, True)
        return VideoDeleted(id=video_id)

    @api.get("/v1/videos/{video_id}/content", responses={**_ERRORS, 200: {"content": {
        "video/mp4": {}, "image/jpeg": {}}}}, tags=["openai"])
    async def video_content(
        self, video_id: str,
        variant: Literal["video", "thumbnail", "spritesheet"] = Query(
            default="video", description="video: the MP4; thumbnail: its middle frame (JPEG); spritesheet: "
            "up to 16 evenly spaced frames in a 4-column grid (JPEG)."),
    ) -> Response:
        """OpenAI ``videos.download_content``, once the video is completed."""
        view = await self.router.status.remote(video_id)
        filename = view.record.filename if view.record.status == JobStatus.success else None
        if not filename:
            raise FileNotFoundForJob(f"video {video_id} is {view.record.status.value}; content exists once it "
                                     "is completed")
        path = Path(await self.router.resolve_file.remote(filename))
        if variant == "video":
            extension = path.suffix.lower()
            return FileResponse(path, media_type=_MEDIA_TYPES.get(extension, "application/octet-stream"),
                                filename=path.name)
        make = thumbnail_jpeg if variant == "thumbnail" else spritesheet_jpeg
        return Response(await asyncio.to_thread(make, path), media_type="image/jpeg")

    @api.post("/v1/videos/{video_id}/remix", response_model=Video, responses=_ERRORS, tags=["openai"])
    async def remix_video(self, video_id: str, body: RemixRequest) -> Video:
        """OpenAI ``videos.remix``: a new job with the same parameters (seed, size, frames, inputs) and a new prompt."""
        original = (await self.router.status.remote(video_id)).record.spec
        spec = await asyncio.to_thread(self.videos.remix_spec, original, body.prompt, self.inputs_dir)
        return self.videos.video(await self._submit(None, None, spec=spec))

    @api.get("/status/{job_id}", response_model=JobStatusResponse, responses=_ERRORS)
    async def status(self, job_id: str) -> JobStatusResponse:
        """Status, progress (0..1), ETA, and the file URL once done."""
        return self.jobs.status(await self.router.status.remote(job_id))

    @api.post("/jobs/{job_id}/cancel", response_model=JobStatusResponse, responses=_ERRORS)
    async def cancel(self, job_id: str) -> JobStatusResponse:
        """Cancel a queued or running job; it ends `canceled` and writes no file. The job stays listed."""
        return self.jobs.status(await self.router.cancel.remote(job_id))

    @api.get("/jobs/{job_id}/events", responses={**_ERRORS, 200: {"content": {"text/event-stream": {}}}})
    async def job_events(self, job_id: str, request: Request) -> StreamingResponse:
        """Server-Sent Events: one event per phase change, per denoising step and per queue move,
        then the terminal event, after which the stream ends. Each has ``id``, ``event`` (queued,
        phase, step, terminal) and JSON ``data`` (status, phase, step, total_steps, progress,
        eta_seconds, queue_position). Reconnect with ``Last-Event-ID`` to resume after that event."""
        after = _last_event_id(request.headers.get("last-event-id"))
        first = await self.router.events.remote(job_id, after, 0.0)  # 404 before the stream starts

        async def stream():
            batch = first
            nonlocal after
            while True:
                for event in batch["events"]:
                    after = event["id"]
                    yield f"id: {event['id']}\nevent: {event['event']}\ndata: {json.dumps(event)}\n\n"
                if batch["done"]:
                    return
                if not batch["events"]:
                    yield ": keep-alive\n\n"
                batch = await self.router.events.remote(job_id, after, EVENTS_WAIT_S)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @api.websocket("/ws/jobs/{job_id}")
    async def job_events_ws(self, websocket: WebSocket, job_id: str, last_event_id: int = 0) -> None:
        """The same events as /jobs/{id}/events, one JSON message each; the server closes the
        socket (code 1000) after the terminal event, or with 4404 for an unknown job."""
        await websocket.accept()
        after = last_event_id
        try:
            while True:
                try:
                    batch = await self.router.events.remote(job_id, after, EVENTS_WAIT_S)
                except Exception as exc:
                    inner = unwrap(exc)
                    if isinstance(inner, JobNotFound):
                        await websocket.close(code=4404, reason=inner.message[:120])
                        return
                    raise
                for event in batch["events"]:
                    after = event["id"]
                    await websocket.send_json(event)
                if batch["done"]:
                    await websocket.close(code=1000)
                    return
        except WebSocketDisconnect:
            return

    @api.get("/jobs/{job_id}/webhooks", response_model=WebhookDeliveries, responses=_ERRORS)
    async def webhook_deliveries(self, job_id: str) -> WebhookDeliveries:
        """The job's webhook and every message sent for it, each with its delivery attempts."""
        view = await self.router.status.remote(job_id)
        messages = await self.router.webhook_deliveries.remote(job_id)
        return WebhookDeliveries(job_id=job_id, webhook=view.record.spec.webhook, messages=messages)

    @api.get("/jobs/lookup", response_model=JobStatusResponse, responses=_ERRORS)
    async def lookup(self, prompt: str = Query(min_length=1, description="Exact prompt text.")) -> JobStatusResponse:
        """The newest job submitted with exactly this prompt."""
        return self.jobs.status(await self.router.lookup.remote(prompt))

    @api.delete("/jobs", response_model=DeleteJobsResult, responses=_ERRORS)
    async def delete_jobs(
        self,
        ids: str | None = Query(default=None, description="Comma-separated job ids."),
        status: JobStatus | None = Query(default=None, description="Every job in this status."),
        all: bool = Query(default=False, description="Every job."),
        delete_files: bool = Query(default=False, description="Also delete the jobs' result files."),
    ) -> DeleteJobsResult:
        """Cancel the selected queued and running jobs, then remove the selected jobs."""
        if not (ids or status or all):
            raise ValidationFailed("say which jobs: ids=a,b or status=queued|running|success|error|canceled or all=true")
        result = await self.router.delete_jobs.remote(_split(ids) or None, status, all, delete_files)
        return DeleteJobsResult(**result)

    @api.get("/videos", response_model=list[VideoInfo])
    async def videos(self) -> list[VideoInfo]:
        """Every result video still on disk, oldest first."""
        return [self.jobs.video(r) for r in await self.router.videos.remote()]

    @api.delete("/videos", response_model=DeleteVideosResult, responses=_ERRORS)
    async def delete_videos(
        self,
        filenames: str | None = Query(default=None, description="Comma-separated file names."),
        ids: str | None = Query(default=None, description="Comma-separated job ids."),
        all: bool = Query(default=False, description="Every video."),
    ) -> DeleteVideosResult:
        """Delete result files; their jobs stay, with file_url null."""
        if not (filenames or ids or all):
            raise ValidationFailed("say which videos: filenames=a.mp4,b.mp4 or ids=a,b or all=true")
        result = await self.router.delete_videos.remote(_split(filenames) or None, _split(ids) or None, all)
        return DeleteVideosResult(**result)

    @api.get("/files/{filename}", response_class=FileResponse, responses=_ERRORS)
    async def files(self, filename: str):
        """Download a result file this service wrote (nothing else is served): MP4, WebM or zip."""
        extension = next((ext for ext in RESULT_EXTENSIONS if filename.lower().endswith(ext)), ".mp4")
        safe = sanitize_filename(filename, extension)
        path = await self.router.resolve_file.remote(safe)
        return FileResponse(path, media_type=_MEDIA_TYPES[extension], filename=safe)

    @api.get("/health")
    async def health(self) -> dict:
        """Liveness: the HTTP process answers. No model work, no Ray calls."""
        return {"status": "ok"}

    @api.get("/ready", responses={503: {"description": "Some variant has no running generator replica."}})
    async def ready(self) -> Response:
        """Readiness: every configured variant has at least one running generator replica."""
        app_name = serve.get_replica_context().app_name
        statuses = await asyncio.to_thread(generator_statuses, app_name, sorted(self.jobs.variants))
        variants = {name: st.model_dump(exclude_none=True) for name, st in statuses.items()}
        ready = all(st.ready for st in statuses.values())
        body = {"status": "ready" if ready else "not_ready", "variants": variants}
        return JSONResponse(body, status_code=200 if ready else 503)
