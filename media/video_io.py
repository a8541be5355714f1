"""Writing and reading result files with PyAV (FFmpeg) and Pillow.

Frames are numpy arrays of shape (T, H, W, 3), dtype uint8, RGB; alpha planes (T, H, W) uint8.
MP4 is H.264 yuv420p; WebM is VP9 yuva420p with alpha; png_zip is a zip of RGBA PNG frames.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np
from PIL import Image

from jobs.errors import JobCanceled


def fit_frames(frames: np.ndarray, width: int, height: int, mode: Literal["pad", "scale"]) -> np.ndarray:
    """Bring (T, H, W, 3) uint8 frames to ``width`` x ``height`` pixels.

    ``pad`` centres the frames and fills the rest with black (TI2V-5B's 1280x704 gets
    8 black rows above and below to make 1280x720); nothing is distorted. ``scale``
    returns the frames unchanged: the encoder rescales them (swscale, bicubic).

    Raises:
        ValueError: ``pad`` asked to shrink a dimension.
    """
    t, h, w, c = frames.shape
    if mode == "scale" or (h, w) == (height, width):
        return frames
    if h > height or w > width:
        raise ValueError(f"cannot pad {w}x{h} frames down to {width}x{height}; use resize_mode: scale")
    top, left = (height - h) // 2, (width - w) // 2
    return np.pad(frames, ((0, 0), (top, height - h - top), (left, width - w - left), (0, 0)))


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``path``; rename it to ``path`` if the block succeeds.

    A rename replaces only a file of the same job (an earlier attempt's): result names are unique
    to their job by construction (jobs/filenames.py).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _check_abort(should_abort: Callable[[], bool] | None) -> None:
    if should_abort is not None and should_abort():
        raise JobCanceled("job canceled while writing the result file")


def _check_frames(frames: np.ndarray, alpha: np.ndarray | None = None) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    if alpha is not None and (alpha.shape != frames.shape[:3] or alpha.dtype != np.uint8):
        raise ValueError(f"alpha must be (T, H, W) uint8 matching the frames, got {alpha.shape} {alpha.dtype}")


def _encode(
    path: Path,
    container_format: str,
    codec: str,
    fps: int,
    width: int,
    height: int,
    pix_fmt: str,
    options: dict,
    video_frames: Iterator[av.VideoFrame],
    should_abort: Callable[[], bool] | None,
) -> int:
    """Encode ``video_frames`` with ``codec`` into ``path`` atomically; returns the file size in bytes."""
    with atomic_file(path) as tmp:
        with av.open(str(tmp), mode="w", format=container_format) as container:
            stream = container.add_stream(codec, rate=Fraction(fps, 1))
            stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
            stream.options = options
            for video_frame in video_frames:
                _check_abort(should_abort)
                container.mux(stream.encode(video_frame))
            container.mux(stream.encode(None))
        _check_abort(should_abort)
    return Path(path).stat().st_size


def write_mp4(
    frames: np.ndarray,
    path: Path,
    fps: int,
    *,
    width: int | None = None,
    height: int | None = None,
    crf: int = 18,
    should_abort: Callable[[], bool] | None = None,
) -> int:
    """Encode (T, H, W, 3) uint8 RGB frames as H.264 (yuv420p) MP4 at ``fps`` frames per second.

    The output size is ``width`` x ``height`` (default: the frames' size; other sizes are
    rescaled by the encoder). Written to a hidden temporary name in the same folder and
    renamed, so a half-written file is never visible under ``path``. ``crf`` is x264's
    constant rate factor (18: visually lossless, the x264 documentation's usual high bar).
    Returns the file size in bytes.

    Raises:
        JobCanceled: ``should_abort()`` turned true; no file is left behind.
        ValueError: frames are not (T, H, W, 3) uint8, or a side is odd (yuv420p needs even sides).
    """
    _check_frames(frames)
    out_h = height or frames.shape[1]
    out_w = width or frames.shape[2]
    if out_w % 2 or out_h % 2:
        raise ValueError(f"H.264 yuv420p needs even width and height, got {out_w}x{out_h}")

    def video_frames():
        for frame in frames:
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            if (frame.shape[1], frame.shape[0]) != (out_w, out_h):
                video_frame = video_frame.reformat(width=out_w, height=out_h)
            yield video_frame

    return _encode(
        path,
        "mp4",
        "libx264",
        fps,
        out_w,
        out_h,
        "yuv420p",
        {"crf": str(crf), "preset": "medium"},
        video_frames(),
        should_abort,
    )


def write_webm_alpha(
    frames: np.ndarray,
    alpha: np.ndarray,
    path: Path,
    fps: int,
    *,
    crf: int = 18,
    should_abort: Callable[[], bool] | None = None,
) -> int:
    """Encode RGB frames (T, H, W, 3) uint8 with ``alpha`` (T, H, W) uint8 as VP9 yuva420p WebM.

    The alpha plane is kept at full resolution (libvpx encodes it as a second VP9 stream,
    stored as Matroska BlockAdditional data); browsers and FFmpeg's ``libvpx-vp9`` decoder
    read it. VP9 is lossy at ``crf`` 18 (libvpx's constant-quality mode, with ``b:v`` 0), so
    treat alpha >= 128 as opaque when compositing; ``png_zip`` is the exact alternative.
    Written to a temporary name and renamed. Returns the file size in bytes.

    Raises:
        JobCanceled: ``should_abort()`` turned true; no file is left behind.
        ValueError: shapes or dtypes do not match, or a side is odd.
    """
    _check_frames(frames, alpha)
    _, h, w, _ = frames.shape
    if w % 2 or h % 2:
        raise ValueError(f"VP9 yuva420p needs even width and height, got {w}x{h}")
    video_frames = (
        av.VideoFrame.from_ndarray(np.dstack([rgb, a]), format="rgba") for rgb, a in zip(frames, alpha, strict=True)
    )
    options = {"crf": str(crf), "b:v": "0", "deadline": "good", "cpu-used": "4", "row-mt": "1"}
    return _encode(path, "webm", "libvpx-vp9", fps, w, h, "yuva420p", options, video_frames, should_abort)


def write_png_zip(
    frames: np.ndarray,
    alpha: np.ndarray,
    path: Path,
    *,
    should_abort: Callable[[], bool] | None = None,
) -> int:
    """Write RGBA PNG frames ``frame_00000.png``, ... into a zip (stored: PNG is compressed already).

    ``frames`` (T, H, W, 3) uint8 and ``alpha`` (T, H, W) uint8 are kept exactly. Written to a
    temporary name and renamed. Returns the file size in bytes.

    Raises:
        JobCanceled: ``should_abort()`` turned true; no file is left behind.
        ValueError: shapes or dtypes do not match.
    """
    _check_frames(frames, alpha)
    with atomic_file(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
            for i, (rgb, a) in enumerate(zip(frames, alpha, strict=True)):
                _check_abort(should_abort)
                buf = io.BytesIO()
                Image.fromarray(np.dstack([rgb, a]), mode="RGBA").save(buf, format="PNG", compress_level=6)
                archive.writestr(f"frame_{i:05d}.png", buf.getvalue())
        _check_abort(should_abort)
    return Path(path).stat().st_size


def read_png_zip(path: Path) -> np.ndarray:
    """Read a ``write_png_zip`` archive back as (T, H, W, 4) uint8 RGBA, in frame order."""
    with zipfile.ZipFile(path) as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".png"))
        return np.stack([np.asarray(Image.open(io.BytesIO(archive.read(n))).convert("RGBA")) for n in names])


@dataclass
class DecodedVideo:
    """A decoded video: ``frames`` (T, H, W, 3) uint8 RGB, or (T, H, W, 4) RGBA when read with
    alpha, and its frame rate in frames per second."""

    frames: np.ndarray
    fps: float


def read_video(path: Path, *, with_alpha: bool = False) -> DecodedVideo:
    """Decode every frame of the first video stream to RGB (or RGBA), whatever its pixel format.

    With ``with_alpha``, a VP9 stream is decoded by ``libvpx-vp9``, which (unlike FFmpeg's
    native vp9 decoder) reads the alpha plane that WebM stores beside the colour.

    Raises:
        av.error.FFmpegError: the file is not a decodable video.
    """
    fmt = "rgba" if with_alpha else "rgb24"
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        if with_alpha and stream.codec_context.name == "vp9":
            decoder = av.codec.CodecContext.create("libvpx-vp9", "r")
            frames = [f.to_ndarray(format=fmt) for p in container.demux(stream) for f in decoder.decode(p)]
        else:
            frames = [f.to_ndarray(format=fmt) for f in container.decode(stream)]
    return DecodedVideo(frames=np.stack(frames), fps=fps)
