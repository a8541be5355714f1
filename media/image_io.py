"""Writing and reading image results (Pillow): PNG, WebP and JPEG.

An image is (H, W, 3) uint8 RGB; image variants hand over (1, H, W, 3), one frame.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from jobs.errors import JobCanceled
from media.video_io import atomic_file

ImageFormat = Literal["png", "webp", "jpeg"]

#: Pillow save arguments per format. PNG is lossless (zlib level 6, Pillow's default trade-off);
#: WebP is lossless too, so an edit can be re-edited without generational loss; JPEG at quality
#: 95 with 4:4:4 chroma, the settings Pillow's documentation gives for near-lossless output.
SAVE_ARGS: dict[str, dict] = {
    "png": {"format": "PNG", "compress_level": 6},
    "webp": {"format": "WEBP", "lossless": True},
    "jpeg": {"format": "JPEG", "quality": 95, "subsampling": 0},
}


def write_image(
    frames: np.ndarray, path: Path, fmt: ImageFormat, *, should_abort: Callable[[], bool] | None = None
) -> int:
    """Write the one frame of ``frames`` ((1, H, W, 3) uint8 RGB) as ``fmt`` to ``path``.

    Written to a hidden temporary name beside ``path`` and renamed, so a reader never sees half a
    file. Returns the file size in bytes.

    Raises:
        JobCanceled: ``should_abort()`` turned true; no file is left behind.
        ValueError: not one (H, W, 3) uint8 frame.
    """
    if frames.ndim != 4 or frames.shape[0] != 1 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"an image result is one (1, H, W, 3) uint8 frame, got {frames.shape} {frames.dtype}")
    with atomic_file(path) as tmp:
        Image.fromarray(frames[0]).save(tmp, **SAVE_ARGS[fmt])
        if should_abort is not None and should_abort():
            raise JobCanceled("job canceled while writing the result file")
    return Path(path).stat().st_size


def read_image(path: Path) -> np.ndarray:
    """An image result as (H, W, 3) uint8 RGB.

    Raises:
        OSError: not a readable image.
    """
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))
