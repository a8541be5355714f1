"""Routes of the OpenAI-compatible Videos API (/v1/videos), over the same jobs as /generate.

Thin: each route maps OpenAI's fields with ``VideosService`` (serving.py) and reads the job store
(serve_app/job_reads.py) or, for changes, calls the router.
``VideosRoutes`` is a base of the ingress deployment (serve_app/ingress.py).
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from jobs.errors import FileNotFoundForJob
from jobs.files import ResultFiles
from jobs.model import OUTPUT_FORMATS, JobStatus
from jobs.ownership import Caller
from media.previews import spritesheet_jpeg, thumbnail_jpeg
from serve_app.authentication import current_caller
from serve_app.downloads import preview, result_response
from serve_app.errors import ERROR_RESPONSES
from serve_app.generate.serving import JobService, idempotency
from serve_app.job_reads import JobReads
from serve_app.request_body import read_fields_and_files
from serve_app.videos.protocol import RemixRequest, Video, VideoDeleted, VideoList
from serve_app.videos.serving import VIDEO_FILE_FIELDS, VideosService

router = APIRouter(tags=["openai"])

#: The caller of a route (when auth is on, the API key is OpenAI's ``api_key``).
CallerDep = Depends(current_caller)


class VideosRoutes:
    """The /v1/videos routes. Needs ``router`` (the router's handle, for writes), ``reads`` (the
    job store's reads), ``jobs``, ``videos``, and
    ``results``, ``downloads`` and ``file_url_ttl_s`` (serve_app/downloads.py)."""

    router: Any
    reads: JobReads
    jobs: JobService
    videos: VideosService
    results: ResultFiles
    downloads: str
    file_url_ttl_s: float

    @router.post("/v1/videos", response_model=Video, responses=ERROR_RESPONSES)
    async def create_video(self, request: Request, caller: Caller = CallerDep) -> Video:
        """OpenAI ``videos.create``: prompt, model (a variant), seconds, size, and an optional
        ``input_reference`` image (multipart) for image-to-video."""
        fields, uploads = await read_fields_and_files(request, VIDEO_FILE_FIELDS)
        req, images = self.videos.generate_request(fields, uploads)
        key = idempotency(request.url.path, request.headers.get("idempotency-key"), req, images)
        return self.videos.video(await asyncio.shield(self.jobs.submit(req, images, idempotent=key, caller=caller)))

    @router.get("/v1/videos", response_model=VideoList, responses=ERROR_RESPONSES)
    async def list_videos(
        self,
        after: str | None = Query(default=None, description="Id of the last video of the previous page."),
        limit: int = Query(default=20, ge=1, le=100, description="Videos per page."),
        order: Literal["asc", "desc"] = Query(default="desc", description="By creation time."),
        caller: Caller = CallerDep,
    ) -> VideoList:
        """OpenAI ``videos.list``: the caller's jobs (an admin key's: every job), newest first by default."""
        views, more = await self.reads.page(after, limit, order == "desc", caller=caller)
        data = [self.videos.video(v) for v in views]
        return VideoList(
            data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None, has_more=more
        )

    @router.get("/v1/videos/{video_id}", response_model=Video, responses=ERROR_RESPONSES)
    async def retrieve_video(self, video_id: str, caller: Caller = CallerDep) -> Video:
        """OpenAI ``videos.retrieve``."""
        return self.videos.video(await self.reads.status(video_id, caller=caller))

    @router.delete("/v1/videos/{video_id}", response_model=VideoDeleted, responses=ERROR_RESPONSES)
    async def delete_video(self, video_id: str, caller: Caller = CallerDep) -> VideoDeleted:
        """OpenAI ``videos.delete``: cancels the job if it is unfinished, removes it and its file."""
        await self.reads.status(video_id, caller=caller)  # 404 for an unknown id, or another key's
        await self.router.delete_jobs.remote([video_id], None, False, True, caller=caller)
        return VideoDeleted(id=video_id)

    @router.get(
        "/v1/videos/{video_id}/content",
        responses={**ERROR_RESPONSES, 200: {"content": {"video/mp4": {}, "image/jpeg": {}}}},
    )
    async def video_content(
        self,
        video_id: str,
        request: Request,
        variant: Literal["video", "thumbnail", "spritesheet"] = Query(
            default="video",
            description="video: the MP4; thumbnail: its middle frame (JPEG); spritesheet: "
            "up to 16 evenly spaced frames in a 4-column grid (JPEG).",
        ),
        caller: Caller = CallerDep,
    ) -> Response:
        """OpenAI ``videos.download_content``, once the video is completed."""
        view = await self.reads.status(video_id, caller=caller)
        if not view.filename or view.status != JobStatus.success:
            raise FileNotFoundForJob(f"video {video_id} is {view.status.value}; content exists once it is completed")
        name = await self.reads.check_file(view.filename, caller=caller)
        if variant == "video":
            fmt = OUTPUT_FORMATS[view.output_format]
            return result_response(self.results, name, fmt.media_type, request, self.downloads, self.file_url_ttl_s)
        make = thumbnail_jpeg if variant == "thumbnail" else spritesheet_jpeg
        return Response(await asyncio.to_thread(preview, make, self.results, name), media_type="image/jpeg")

    @router.post("/v1/videos/{video_id}/remix", response_model=Video, responses=ERROR_RESPONSES)
    async def remix_video(self, video_id: str, body: RemixRequest, caller: Caller = CallerDep) -> Video:
        """OpenAI ``videos.remix``: a new job with the same parameters (seed, size, frames, inputs) and a
        new prompt, of one of the caller's own videos."""
        return self.videos.video(await self.router.remix.remote(video_id, body.prompt, caller=caller))
