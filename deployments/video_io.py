"""Writing and reading video files with PyAV (FFmpeg).

Frames are numpy arrays of shape (T, H, W, 3), dtype uint8, RGB.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Literal

import av
import numpy as np

from deployments.errors import JobCanceled


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
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    out_h = height or frames.shape[1]
    out_w = width or frames.shape[2]
    if out_w % 2 or out_h % 2:
        raise ValueError(f"H.264 yuv420p needs even width and height, got {out_w}x{out_h}")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps, 1))
            stream.width, stream.height, stream.pix_fmt = out_w, out_h, "yuv420p"
            stream.options = {"crf": str(crf), "preset": "medium"}
            for frame in frames:
                if should_abort is not None and should_abort():
                    raise JobCanceled("job canceled while encoding")
                video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
                if (frame.shape[1], frame.shape[0]) != (out_w, out_h):
                    video_frame = video_frame.reformat(width=out_w, height=out_h)
                container.mux(stream.encode(video_frame))
            container.mux(stream.encode(None))
        if should_abort is not None and should_abort():
            raise JobCanceled("job canceled while encoding")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path.stat().st_size


@dataclass
class DecodedVideo:
    """A decoded video: ``frames`` (T, H, W, 3) uint8 RGB and its frame rate in frames per second."""

    frames: np.ndarray
    fps: float


def read_video(path: Path) -> DecodedVideo:
    """Decode every frame of the first video stream to RGB, whatever its pixel format.

    Raises:
        av.error.FFmpegError: the file is not a decodable video.
    """
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
    return DecodedVideo(frames=np.stack(frames), fps=fps)
