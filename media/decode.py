"""Decoding uploaded images, masks and videos into frames, once, on receipt.

Everything here runs before a job is queued, so a bad upload is refused with a 4xx that
says what is wrong instead of becoming a job that fails later. Frames come out as numpy
arrays: images (H, W, 3) uint8 RGB, videos (T, H, W, 3) uint8 RGB, masks (H, W) or
(T, H, W) bool, where True (white in the upload) means "regenerate this pixel".
"""

from __future__ import annotations

import io
import time
import warnings
from dataclasses import dataclass

import av
import numpy as np
from PIL import Image, ImageOps

from jobs.errors import InvalidMedia, UnsupportedMediaType

#: Image formats taken, detected from the bytes, never from a file name or a Content-Type.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")

#: Container formats taken for videos, as FFmpeg names its demuxers (MP4 and MOV share one; so do
#: Matroska and WebM).
VIDEO_CONTAINERS = {"mov,mp4,m4a,3gp,3g2,mj2": "MP4/MOV", "matroska,webm": "WebM/Matroska"}

# Signatures of formats people commonly send by mistake, so the refusal can name them.
_OTHER_IMAGE_SIGNATURES = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"%PDF", "PDF"),
)

#: Mask pixels at or above this 8-bit luminance count as white ("regenerate"); half of 255,
#: so anti-aliased edges split evenly.
MASK_THRESHOLD = 128

# Seconds of slack when comparing frame timestamps (rounding of pts * time_base).
_TIME_EPS = 1e-6
# A clip whose frames end this many seconds before its declared duration was cut short
# (a faststart MP4 keeps its index at the front, so a truncated one still opens).
_TRUNCATION_SLACK_S = 0.5


def sniff_image_format(data: bytes) -> str | None:
    """``"PNG"``, ``"JPEG"`` or ``"WEBP"`` from the file's leading bytes; None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _name_other_format(data: bytes) -> str:
    for signature, name in _OTHER_IMAGE_SIGNATURES:
        if data.startswith(signature):
            return name
    head = data[:1024].lstrip().lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head):
        return "SVG"
    return "not a recognized image"


def looks_like_image(data: bytes) -> bool:
    """True when the bytes start like an image (one taken or a known other one, e.g. GIF or SVG)."""
    return sniff_image_format(data) is not None or _name_other_format(data) != "not a recognized image"


def _check_pixels(field: str, width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise InvalidMedia(
            f"{field} is {width}x{height} pixels ({width * height:,}); at most {max_pixels:,} pixels a frame "
            "are taken: downscale it first",
            field=field,
        )


def decode_image(data: bytes, *, field: str, max_side: int, max_pixels: int | None = None) -> np.ndarray:
    """Decode a PNG, JPEG or WEBP upload to (H, W, 3) uint8 RGB.

    EXIF orientation is applied (phone photos are often stored sideways); an alpha channel
    is dropped. The pixel size is checked from the header before the pixels are decoded.

    Raises:
        UnsupportedMediaType: the bytes are not PNG, JPEG or WEBP (a GIF, TIFF, SVG...).
        InvalidMedia: the file is empty, truncated or corrupt, a side exceeds ``max_side`` pixels,
            or width x height exceeds ``max_pixels`` (None: no such limit).
    """
    if not data:
        raise InvalidMedia(f"{field} is empty: send the file's bytes", field=field)
    fmt = sniff_image_format(data)
    if fmt is None:
        raise UnsupportedMediaType(
            f"{field} is {_name_other_format(data)}; send a PNG, JPEG or WEBP image", field=field
        )
    try:
        with warnings.catch_warnings():
            # max_side below bounds the pixels; PIL's own bomb warning would only add log noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=[fmt])
        with im:
            width, height = im.size
            if max(width, height) > max_side:
                raise InvalidMedia(
                    f"{field} is {width}x{height} pixels; the longest side may be at most {max_side}: "
                    "downscale it first",
                    field=field,
                )
            _check_pixels(field, width, height, max_pixels)
            im.load()
            rgb = ImageOps.exif_transpose(im).convert("RGB")
    except InvalidMedia:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidMedia(
            f"{field} could not be decoded as {fmt}: the file is truncated or corrupt ({type(exc).__name__})",
            field=field,
        ) from None
    return np.asarray(rgb, dtype=np.uint8)


def image_to_mask(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) bool: luminance (ITU-R 601, as PIL's "L") >= MASK_THRESHOLD."""
    luma = np.asarray(Image.fromarray(rgb).convert("L"))
    return luma >= MASK_THRESHOLD


@dataclass
class DecodedClip:
    """A video upload resampled to the variant's frame rate.

    Attributes:
        frames: (T, H, W, 3) uint8 RGB, at most the ``max_frames`` asked for.
        source_fps: the upload's own frame rate, frames per second.
        source_size: (width, height) of the upload in pixels.
        container: FFmpeg's demuxer name, e.g. ``mov,mp4,m4a,3gp,3g2,mj2``.
    """

    frames: np.ndarray
    source_fps: float
    source_size: tuple[int, int]
    container: str


def decode_video(
    data: bytes,
    *,
    field: str,
    fps: float,
    max_frames: int,
    max_side: int,
    max_pixels: int | None = None,
    max_source_frames: int | None = None,
    budget_s: float | None = None,
) -> DecodedClip:
    """Decode an MP4, MOV or WebM upload to RGB frames at ``fps`` frames per second.

    Any pixel format is converted to RGB (yuv420p, yuv444p, 10-bit...). Resampling picks, for
    output frame i at time i / fps after the first frame, the source frame on screen at that
    moment (the last one whose timestamp is not later), so 20 fps -> 16 fps keeps source frames
    0, 1, 2, 3, 5, ... Decoding stops once ``max_frames`` frames are out.

    Hostile files are refused as early as the container allows: the frame size (``max_side``,
    ``max_pixels``) and the frame count (``max_source_frames``: the container's count, or its
    duration times its frame rate) from the header, before any frame is decoded; then every
    decoded frame must have the header's size, at most ``max_source_frames`` may be decoded, and
    decoding may take at most ``budget_s`` seconds. A None limit is not applied.

    Raises:
        UnsupportedMediaType: the container is not MP4/MOV or WebM/Matroska, or holds no video.
        InvalidMedia: empty, truncated or undecodable data, or over one of the limits above.
    """
    started = time.monotonic()
    if not data:
        raise InvalidMedia(f"{field} is empty: send the file's bytes", field=field)
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except av.error.FFmpegError:
        raise InvalidMedia(
            f"{field} could not be opened as a video: send an MP4, MOV or WebM file (it may be truncated)",
            field=field,
        ) from None
    with container:
        name = container.format.name
        if name not in VIDEO_CONTAINERS:
            raise UnsupportedMediaType(
                f"{field} is {container.format.long_name or name}; send an MP4, MOV or WebM video", field=field
            )
        if not container.streams.video:
            raise UnsupportedMediaType(f"{field} has no video stream", field=field)
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if max(width, height) > max_side:
            raise InvalidMedia(
                f"{field} is {width}x{height} pixels; the longest side may be at most {max_side}: downscale it first",
                field=field,
            )
        _check_pixels(field, width, height, max_pixels)
        source_fps = float(stream.average_rate or stream.guessed_rate or 0) or fps
        declared: float | None
        if stream.duration is not None and stream.time_base is not None:
            declared = float(stream.duration * stream.time_base)
        else:
            declared = float(container.duration / av.time_base) if container.duration else None
        declared_frames = stream.frames or (round(declared * source_fps) if declared else 0)
        if max_source_frames is not None and declared_frames > max_source_frames:
            raise InvalidMedia(
                f"{field} holds {declared_frames:,} frames; at most {max_source_frames:,} are taken: "
                "cut the clip to the part to use first",
                field=field,
            )
        decoded = 0
        frames: list[np.ndarray] = []
        prev = prev_rgb = None
        t0 = last_rel = None
        try:
            for frame in container.decode(stream):
                decoded += 1
                if (frame.width, frame.height) != (width, height):
                    raise InvalidMedia(
                        f"{field} frame {decoded} is {frame.width}x{frame.height} but the stream declares "
                        f"{width}x{height}: the file is malformed",
                        field=field,
                    )
                if max_source_frames is not None and decoded > max_source_frames:
                    raise InvalidMedia(
                        f"{field} holds more than the {max_source_frames:,} frames taken (more than its header "
                        "says): cut the clip first",
                        field=field,
                    )
                if budget_s is not None and time.monotonic() - started > budget_s:
                    raise InvalidMedia(
                        f"{field} took longer than {budget_s:g} s to decode; send a shorter or smaller clip",
                        field=field,
                    )
                rel = frame.time if frame.time is not None else len(frames) / source_fps
                t0 = rel if t0 is None else t0
                rel -= t0
                # Output frames strictly before this frame's time show the previous frame.
                while prev is not None and len(frames) < max_frames and len(frames) / fps < rel - _TIME_EPS:
                    if prev_rgb is None:
                        prev_rgb = prev.to_ndarray(format="rgb24")
                    frames.append(prev_rgb)
                if len(frames) >= max_frames:
                    break
                prev, prev_rgb, last_rel = frame, None, rel
        except av.error.FFmpegError:
            raise InvalidMedia(
                f"{field} could not be decoded after {len(frames)} frames: the file is truncated or corrupt",
                field=field,
            ) from None
        if prev is not None and last_rel is not None and len(frames) < max_frames:
            # The last decoded frame stays on screen for one source frame duration.
            end = last_rel + 1.0 / source_fps
            if declared is not None and end < declared - _TRUNCATION_SLACK_S:
                raise InvalidMedia(
                    f"{field} stops after {end:.2f} s but declares {declared:.2f} s: the file is truncated",
                    field=field,
                )
            while len(frames) < max_frames and len(frames) / fps < end - _TIME_EPS:
                if prev_rgb is None:
                    prev_rgb = prev.to_ndarray(format="rgb24")
                frames.append(prev_rgb)
    if not frames:
        raise InvalidMedia(f"{field} holds no decodable frames", field=field)
    return DecodedClip(frames=np.stack(frames), source_fps=source_fps, source_size=(width, height), container=name)
