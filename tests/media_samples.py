"""Test media: the real files in tests/data, and bad uploads made from them in memory."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import av
import numpy as np
from PIL import Image

DATA = Path(__file__).parent / "data"
CHELSEA = DATA / "chelsea.png"      # 451x300 RGB photo
ASTRONAUT = DATA / "astronaut.png"  # 512x512 RGB photo
COCKATOO = DATA / "cockatoo.mp4"    # 1280x720 H.264 yuv444p, 20 fps, 280 frames


def load_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file."""
    return np.asarray(Image.open(path).convert("RGB"))


def encode_image(array: np.ndarray, fmt: str, **save_args) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **save_args)
    return buf.getvalue()


def box_mask(width: int, height: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """(H, W) bool, True inside box = (left, top, right, bottom)."""
    mask = np.zeros((height, width), bool)
    left, top, right, bottom = box
    mask[top:bottom, left:right] = True
    return mask


def mask_png(mask: np.ndarray) -> bytes:
    return encode_image(mask.astype(np.uint8) * 255, "PNG")


def cockatoo_frames(indices: list[int]) -> np.ndarray:
    """Source frames of cockatoo.mp4 by index, (T, 720, 1280, 3) uint8, decoded independently of the service."""
    wanted, out = set(indices), {}
    with av.open(str(COCKATOO)) as c:
        for i, frame in enumerate(c.decode(c.streams.video[0])):
            if i in wanted:
                out[i] = frame.to_ndarray(format="rgb24")
            if i >= max(indices):
                break
    return np.stack([out[i] for i in indices])


def faststart_truncated_mp4() -> bytes:
    """cockatoo.mp4 remuxed with its index first (faststart), then cut to 40 % of its bytes.

    Unlike the original (index at the end), this still opens, so only the missing frames betray it.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "faststart.mp4"  # faststart rewrites the file in a second pass: not a BytesIO
        with av.open(str(COCKATOO)) as src, av.open(str(path), "w", options={"movflags": "faststart"}) as dst:
            in_stream = src.streams.video[0]
            out_stream = dst.add_stream_from_template(in_stream)
            for packet in src.demux(in_stream):
                if packet.dts is None:
                    continue
                packet.stream = out_stream
                dst.mux(packet)
        data = path.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat"), "the index must come first"
    return data[: int(len(data) * 0.4)]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 arrays (inf when equal)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def gif_bytes() -> bytes:
    return encode_image(load_rgb(CHELSEA), "GIF")


def tiff_bytes() -> bytes:
    return encode_image(load_rgb(CHELSEA), "TIFF")


SVG = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><rect width="64" height="64"/></svg>'


def huge_png() -> bytes:
    """A real 10000x10000 PNG (bilevel, so it is small on disk; 300 MB once decoded to RGB)."""
    return encode_image(np.zeros((10000, 10000), bool), "PNG")




def synthetic_mp4(width: int, height: int, frames: int, fps: int = 1000) -> bytes:
    """A flat-grey H.264 MP4 (ultrafast preset) of ``frames`` frames of width x height: hostile
    sizes and counts for the upload limits, made in a second or two."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        stream = c.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), 128, np.uint8), format="rgb24")
        for _ in range(frames):
            for packet in stream.encode(frame):
                c.mux(packet)
        for packet in stream.encode():
            c.mux(packet)
    return buf.getvalue()
