"""Combining VACE inpainting output with its source: paste-back and the alpha plane.

An inpainting model regenerates the whole frame, and its VAE round trip softens pixels
outside the mask too. The service therefore copies the (fitted) source pixels back outside
the mask by default, as image inpainting tools do (diffusers' ``apply_overlay``), so the
footage the user did not ask to change comes back unchanged. The mask also becomes the
result's alpha channel for the webm and png_zip formats.
"""

from __future__ import annotations

import numpy as np


def paste_back(generated: np.ndarray, source: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Source pixels where ``mask`` is False, generated pixels where it is True.

    Args:
        generated: (T, H, W, 3) uint8, the pipeline's frames.
        source: (T, H, W, 3) uint8, the fitted source clip.
        mask: (T, H, W) bool, True = regenerated.

    Returns (T, H, W, 3) uint8. Raises ValueError when the shapes disagree.
    """
    if generated.shape != source.shape or mask.shape != generated.shape[:3]:
        raise ValueError(f"shapes disagree: generated {generated.shape}, source {source.shape}, mask {mask.shape}")
    return np.where(mask[..., None], generated, source)


def mask_to_alpha(mask: np.ndarray) -> np.ndarray:
    """(T, H, W) bool -> (T, H, W) uint8 alpha: 255 (opaque) where regenerated, 0 elsewhere."""
    return mask.astype(np.uint8) * 255
