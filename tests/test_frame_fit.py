"""The crop | pad policy on images and masks."""

import numpy as np

from media.fit import fit_image, fit_mask
from tests.media_samples import CHELSEA, load_rgb


def _banded(width=400, height=300, band=20):
    """Blue image with a red band of ``band`` rows at the top."""
    img = np.zeros((height, width, 3), np.uint8)
    img[..., 2] = 255
    img[:band, :, 0], img[:band, :, 2] = 255, 0
    return img


def test_crop_cuts_to_the_target_aspect_and_fills_the_frame():
    out = fit_image(_banded(), 1280, 720, "crop")
    assert out.shape == (720, 1280, 3)
    # 400x300 -> 16:9 keeps the middle 225 rows: the 20-row red band at the top is cut away.
    assert out[..., 0].max() < 30 and out[..., 2].min() > 225


def test_pad_keeps_everything_inside_black_bands():
    out = fit_image(_banded(), 1280, 720, "pad")
    assert out.shape == (720, 1280, 3)
    # 400x300 scaled by 2.4 -> 960x720, centred: 160 black columns each side, the red band kept.
    assert out[:, :158].max() == 0 and out[:, -158:].max() == 0
    assert out[10, 640, 0] > 200 and out[400, 640, 2] > 200


def test_portrait_crop_of_a_real_photo():
    out = fit_image(load_rgb(CHELSEA), 720, 1280, "crop")
    assert out.shape == (1280, 720, 3)
    assert out.std() > 20  # a photo, not a blank frame


def test_masks_stay_binary_and_padding_is_keep():
    mask = np.zeros((300, 400), bool)
    mask[100:200, 100:300] = True
    cropped = fit_mask(mask, 1280, 720, "crop")
    assert cropped.dtype == bool and cropped.shape == (720, 1280)
    assert 0.2 < cropped.mean() < 0.5
    padded = fit_mask(np.ones((300, 400), bool), 1280, 720, "pad")
    assert not padded[:, :158].any() and padded[:, 170:1110].all()
    video = fit_mask(np.stack([mask, ~mask]), 832, 480, "crop")
    assert video.shape == (2, 480, 832) and np.array_equal(video[0], ~video[1])
