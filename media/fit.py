"""Bringing input images, videos and masks to the size a variant generates at.

One policy, chosen per request with ``fit``:

- ``crop`` (default): center-crop to the target aspect ratio, then resize. Nothing is
  distorted and the frame is filled; the edges of a differently shaped input are lost.
- ``pad``: resize to fit inside the target, then center it on black. Nothing is lost;
  the video gets black bands (and the model will animate them as such).

Images and video frames are resized with Lanczos (PIL), masks with nearest neighbour so
they stay binary; padding in a mask is False (keep), so bands are never regenerated.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from PIL import Image

Fit = Literal["crop", "pad"]


def _crop_box(w: int, h: int, width: int, height: int) -> tuple[float, float, float, float]:
    """Centered box of the target aspect inside a w x h source, in source pixels (floats)."""
    target = width / height
    if w / h > target:  # source is wider: cut the sides
        cw = h * target
        return ((w - cw) / 2, 0.0, (w + cw) / 2, float(h))
    ch = w / target
    return (0.0, (h - ch) / 2, float(w), (h + ch) / 2)


def _fit_pil(im: Image.Image, width: int, height: int, fit: Fit, resample: int, fill) -> Image.Image:
    w, h = im.size
    if (w, h) == (width, height):
        return im
    if fit == "crop":
        return im.resize((width, height), resample, box=_crop_box(w, h, width, height))
    scale = min(width / w, height / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = Image.new(im.mode, (width, height), fill)
    canvas.paste(im.resize((nw, nh), resample), ((width - nw) // 2, (height - nh) // 2))
    return canvas


def fit_image(image: np.ndarray, width: int, height: int, fit: Fit) -> np.ndarray:
    """(H, W, 3) uint8 -> (height, width, 3) uint8 by the ``fit`` policy (Lanczos resampling)."""
    out = _fit_pil(Image.fromarray(image), width, height, fit, Image.Resampling.LANCZOS, (0, 0, 0))
    return np.asarray(out, dtype=np.uint8)


def fit_video(frames: np.ndarray, width: int, height: int, fit: Fit) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, height, width, 3) uint8, every frame by ``fit_image``."""
    if frames.shape[1:3] == (height, width):
        return frames
    return np.stack([fit_image(f, width, height, fit) for f in frames])


def fit_mask(mask: np.ndarray, width: int, height: int, fit: Fit) -> np.ndarray:
    """(H, W) or (T, H, W) bool -> the same at (height, width), nearest-neighbour; padding is False."""
    if mask.ndim == 3:
        return np.stack([fit_mask(m, width, height, fit) for m in mask])
    im = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    out = _fit_pil(im, width, height, fit, Image.Resampling.NEAREST, 0)
    return np.asarray(out) >= 128
