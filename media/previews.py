"""Still previews of a result for /v1/videos content variants and /files: a thumbnail and a
spritesheet. An image result is its own one-frame clip."""

from __future__ import annotations

import io
import math
import zipfile
from pathlib import Path

import av
import numpy as np
from PIL import Image

from jobs.model import OUTPUT_FORMATS, format_of_filename
from media.image_io import read_image

#: Frames in a spritesheet (at most), its columns, and the width of each cell in pixels.
SPRITE_FRAMES, SPRITE_COLUMNS, SPRITE_CELL_WIDTH = 16, 4, 256
#: JPEG quality of previews (Pillow's scale; 85 is its documented "good" setting).
JPEG_QUALITY = 85


def _png_names(path: Path) -> list[str] | None:
    """The frame files of a PNG-zip result (write_png_zip), in order; None when ``path`` is a video."""
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        return sorted(n for n in archive.namelist() if n.endswith(".png"))


def _is_image(path: Path) -> bool:
    """Whether ``path`` is an image result (PNG, WebP or JPEG), by its extension (jobs/model.py)."""
    fmt = format_of_filename(Path(path).name)
    return fmt is not None and OUTPUT_FORMATS[fmt].kind == "image"


def _frames_at(path: Path, wanted: list[int]) -> list[np.ndarray]:
    """Decode only frames ``wanted`` (indices, sorted) of the video (or PNG-zip, or image) at
    ``path``, as (H, W, 3) uint8 RGB."""
    if _is_image(path):
        return [read_image(path)]
    names = _png_names(path)
    if names is not None:
        with zipfile.ZipFile(path) as archive:
            return [np.asarray(Image.open(io.BytesIO(archive.read(names[i]))).convert("RGB")) for i in wanted]
    out, want = [], set(wanted)
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(container.streams.video[0])):
            if i in want:
                out.append(frame.to_ndarray(format="rgb24"))
            if i >= wanted[-1]:
                break
    return out


def _frame_count(path: Path) -> int:
    if _is_image(path):
        return 1
    names = _png_names(path)
    if names is not None:
        return len(names)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return stream.frames or sum(1 for _ in container.demux(stream) if _.size)


def _jpeg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def thumbnail_jpeg(path: Path) -> bytes:
    """The middle frame of the result at ``path`` (MP4, WebM, PNG zip or an image), full size, as JPEG bytes."""
    n = _frame_count(path)
    return _jpeg(_frames_at(path, [max(n // 2, 0)])[0])


def spritesheet_jpeg(path: Path) -> bytes:
    """Up to 16 evenly spaced frames in a 4-column grid, each 256 pixels wide, as JPEG bytes."""
    n = _frame_count(path)
    count = min(SPRITE_FRAMES, n)
    indices = sorted({round(i * (n - 1) / max(count - 1, 1)) for i in range(count)})
    frames = _frames_at(path, indices)
    h, w = frames[0].shape[:2]
    cell_w, cell_h = SPRITE_CELL_WIDTH, max(1, round(SPRITE_CELL_WIDTH * h / w))
    cols = min(SPRITE_COLUMNS, len(frames))
    sheet = Image.new("RGB", (cols * cell_w, math.ceil(len(frames) / cols) * cell_h))
    for i, frame in enumerate(frames):
        cell = Image.fromarray(frame).resize((cell_w, cell_h), Image.Resampling.LANCZOS)
        sheet.paste(cell, ((i % cols) * cell_w, (i // cols) * cell_h))
    return _jpeg(np.asarray(sheet))
