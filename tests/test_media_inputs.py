"""Upload rules per variant task, without Ray (the HTTP tests send the same cases end to end)."""

import numpy as np
import pytest

from jobs.errors import InvalidMedia, UploadTooLarge, ValidationFailed
from model_store.variants import load_variant
from serve_app.media_inputs import Upload, prepare_media
from tests.media_samples import CHELSEA, COCKATOO, box_mask, mask_png


def test_text_only_jobs_take_the_first_native_size():
    media = prepare_media(load_variant("t2v-a14b"), size=None, num_frames=None, fit="crop", uploads=[],
                          image_variants=[])
    assert (media.size, media.num_frames, media.inputs) == ("1280x720", 81, None)


def test_files_over_the_limit_are_413():
    variant = load_variant("i2v-a14b-tiny")
    small = variant.model_copy(update={"limits": variant.limits.model_copy(update={"max_upload_bytes": 1000})})
    with pytest.raises(UploadTooLarge, match="MiB"):
        prepare_media(small, size=None, num_frames=None, fit="crop", uploads=[Upload("image", CHELSEA.read_bytes())],
                      image_variants=[])


def test_vace_frames_come_from_the_clip_unless_asked():
    variant = load_variant("vace-14b-tiny")
    uploads = [Upload("video", COCKATOO.read_bytes()), Upload("mask", mask_png(box_mask(1280, 720, (0, 0, 64, 64))))]
    media = prepare_media(variant, size="832x480", num_frames=None, fit="pad", uploads=uploads, image_variants=[])
    assert media.num_frames == 5 and media.inputs.video.shape == (5, 480, 832, 3)
    assert media.inputs.mask.shape == (5, 480, 832) and media.inputs.mask.dtype == bool
    assert media.inputs.summary["mask"]["kind"] == "image"
    # 280 frames at 20 fps give 224 at 16 fps: an explicit 33 is taken as asked.
    media = prepare_media(variant, size="832x480", num_frames=33, fit="crop", uploads=uploads, image_variants=[])
    assert media.num_frames == 33 and media.inputs.video.shape[0] == 33


def test_a_clip_shorter_than_num_frames_says_what_would_fit():
    variant = load_variant("vace-14b-tiny")
    big = variant.model_copy(update={"limits": variant.limits.model_copy(update={"max_num_frames": 301})})
    uploads = [Upload("video", COCKATOO.read_bytes()), Upload("mask", mask_png(box_mask(1280, 720, (0, 0, 64, 64))))]
    with pytest.raises(InvalidMedia) as err:
        prepare_media(big, size="832x480", num_frames=257, fit="crop", uploads=uploads, image_variants=[])
    assert "224 frames at 16 fps" in err.value.message and "num_frames=221" in err.value.message


def test_a_mask_of_the_output_size_is_used_as_is():
    variant = load_variant("vace-14b-tiny")
    mask = box_mask(832, 480, (100, 100, 300, 200))
    uploads = [Upload("video", COCKATOO.read_bytes()), Upload("mask", mask_png(mask))]
    media = prepare_media(variant, size="832x480", num_frames=None, fit="crop", uploads=uploads, image_variants=[])
    assert np.array_equal(media.inputs.mask[0], mask)


def test_two_images_for_one_field_are_refused():
    with pytest.raises(ValidationFailed, match="send one image"):
        prepare_media(load_variant("i2v-a14b-tiny"), size=None, num_frames=None, fit="crop",
                      uploads=[Upload("image", CHELSEA.read_bytes())] * 2, image_variants=[])


def test_reference_images_are_decoded_and_bounded():
    variant = load_variant("vace-14b-tiny")
    base = [Upload("video", COCKATOO.read_bytes()), Upload("mask", mask_png(box_mask(1280, 720, (0, 0, 64, 64))))]
    media = prepare_media(variant, size="832x480", num_frames=None, fit="crop",
                          uploads=base + [Upload("reference_images", CHELSEA.read_bytes())], image_variants=[])
    assert [r.shape for r in media.inputs.reference_images] == [(300, 451, 3)]
    with pytest.raises(ValidationFailed, match="at most 3 reference_images"):
        prepare_media(variant, size="832x480", num_frames=None, fit="crop",
                      uploads=base + [Upload("reference_images", CHELSEA.read_bytes())] * 4, image_variants=[])
