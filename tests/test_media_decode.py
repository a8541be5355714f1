"""Decoding and checking uploads (no Ray): real photos and a real yuv444p 20 fps clip."""

import numpy as np
import pytest

from jobs.errors import InvalidMedia, UnsupportedMediaType
from media.decode import decode_image, decode_video, image_to_mask, sniff_image_format
from tests.media_samples import (
    ASTRONAUT,
    CHELSEA,
    COCKATOO,
    SVG,
    cockatoo_frames,
    encode_image,
    faststart_truncated_mp4,
    gif_bytes,
    huge_png,
    load_rgb,
    tiff_bytes,
)


@pytest.mark.parametrize("fmt, save_args", [("PNG", {}), ("JPEG", {"quality": 95}), ("WEBP", {"lossless": True})])
def test_png_jpeg_webp_decode_to_rgb(fmt, save_args):
    rgb = load_rgb(CHELSEA)
    data = encode_image(rgb, fmt, **save_args)
    assert sniff_image_format(data) == fmt
    out = decode_image(data, field="image", max_side=4096)
    assert out.shape == (300, 451, 3) and out.dtype == np.uint8
    if fmt != "JPEG":
        assert np.array_equal(out, rgb)
    else:
        assert np.abs(out.astype(int) - rgb).mean() < 3


def test_format_comes_from_the_bytes_and_alpha_is_dropped():
    rgba = np.dstack([load_rgb(ASTRONAUT), np.full((512, 512), 7, np.uint8)])
    out = decode_image(encode_image(rgba, "PNG"), field="image", max_side=4096)
    assert out.shape == (512, 512, 3) and np.array_equal(out, rgba[..., :3])


@pytest.mark.parametrize("make, name", [(gif_bytes, "GIF"), (tiff_bytes, "TIFF"), (lambda: SVG, "SVG")])
def test_gif_tiff_svg_are_refused_by_name(make, name):
    with pytest.raises(UnsupportedMediaType) as err:
        decode_image(make(), field="image", max_side=4096)
    assert name in err.value.message and "PNG, JPEG or WEBP" in err.value.message


def test_truncated_and_garbage_images_are_refused():
    data = CHELSEA.read_bytes()
    with pytest.raises(InvalidMedia, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2], field="image", max_side=4096)
    with pytest.raises(UnsupportedMediaType, match="not a recognized image"):
        decode_image(b"\x00\x01garbage" * 100, field="image", max_side=4096)
    with pytest.raises(InvalidMedia, match="empty"):
        decode_image(b"", field="image", max_side=4096)


def test_a_10000x10000_image_is_refused_before_it_is_decoded():
    with pytest.raises(InvalidMedia) as err:
        decode_image(huge_png(), field="image", max_side=4096)
    assert "10000x10000" in err.value.message and "4096" in err.value.message


def test_mask_threshold_white_means_regenerate():
    gray = np.array([[[0, 0, 0], [127, 127, 127], [128, 128, 128], [255, 255, 255]]], np.uint8)
    assert image_to_mask(gray).tolist() == [[False, False, True, True]]


def test_video_is_converted_from_yuv444p_and_resampled_from_20_to_16_fps():
    clip = decode_video(COCKATOO.read_bytes(), field="video", fps=16, max_frames=9, max_side=4096)
    assert clip.source_fps == 20.0 and clip.source_size == (1280, 720)
    assert clip.frames.shape == (9, 720, 1280, 3) and clip.frames.dtype == np.uint8
    # Output frame i shows the source frame on screen at i/16 s: floor(i * 20 / 16).
    expected = cockatoo_frames([0, 1, 2, 3, 5, 6, 7, 8, 10])
    assert np.array_equal(clip.frames, expected)


def test_video_upsampling_repeats_frames():
    clip = decode_video(COCKATOO.read_bytes(), field="video", fps=40, max_frames=6, max_side=4096)
    expected = cockatoo_frames([0, 0, 1, 1, 2, 2])
    assert np.array_equal(clip.frames, expected)


def test_truncated_and_foreign_videos_are_refused():
    data = COCKATOO.read_bytes()
    with pytest.raises(InvalidMedia, match="could not be opened"):  # its index is at the end: cut off
        decode_video(data[: len(data) // 2], field="video", fps=16, max_frames=5, max_side=4096)
    with pytest.raises(InvalidMedia, match="truncated"):  # index first: opens, then runs out of frames
        decode_video(faststart_truncated_mp4(), field="video", fps=16, max_frames=200, max_side=4096)
    with pytest.raises(UnsupportedMediaType, match="MP4, MOV or WebM"):
        decode_video(gif_bytes(), field="video", fps=16, max_frames=5, max_side=4096)
    with pytest.raises(InvalidMedia, match="1280x720 pixels"):
        decode_video(data, field="video", fps=16, max_frames=5, max_side=1000)


@pytest.mark.parametrize("container, codec, pix_fmt, demuxer", [
    ("mp4", "libx264", "yuv420p", "mov,mp4,m4a,3gp,3g2,mj2"),
    ("mov", "libx264", "yuv444p", "mov,mp4,m4a,3gp,3g2,mj2"),
    ("webm", "libvpx-vp9", "yuv420p", "matroska,webm"),
])
def test_mp4_mov_and_webm_clips_decode(tmp_path, container, codec, pix_fmt, demuxer):
    from fractions import Fraction

    import av

    source = cockatoo_frames(list(range(12)))[:, ::4, ::4]  # 320x180, 12 frames
    path = tmp_path / f"clip.{container}"
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=Fraction(24, 1))
        stream.width, stream.height, stream.pix_fmt = 320, 180, pix_fmt
        for frame in source:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode(None))
    clip = decode_video(path.read_bytes(), field="video", fps=16, max_frames=5, max_side=4096)
    assert clip.container == demuxer and clip.source_fps == 24.0 and clip.frames.shape == (5, 180, 320, 3)
    # 24 -> 16 fps keeps source frames 0, 1, 3, 4, 6 (floor(i * 24 / 16)); lossy codecs, so compare loosely.
    assert np.abs(clip.frames.astype(int) - source[[0, 1, 3, 4, 6]]).mean() < 8


def test_hostile_videos_are_refused_from_the_header_before_decoding():
    import time

    from tests.media_samples import synthetic_mp4

    many = synthetic_mp4(16, 16, 50_000)  # 50 s at 1000 fps: 650 KB
    started = time.monotonic()
    with pytest.raises(InvalidMedia, match="holds 50,000 frames; at most 10,000"):
        decode_video(many, field="video", fps=16, max_frames=5, max_side=4096, max_source_frames=10_000)
    assert time.monotonic() - started < 1.0  # the header said so; nothing was decoded
    huge = synthetic_mp4(4096, 4096, 2, fps=16)
    with pytest.raises(InvalidMedia, match=r"4096x4096 pixels \(16,777,216\); at most 8,847,360"):
        decode_video(huge, field="video", fps=16, max_frames=5, max_side=4096, max_pixels=4096 * 2160)
    with pytest.raises(InvalidMedia, match="took longer than 1e-09 s to decode"):
        decode_video(synthetic_mp4(64, 64, 10), field="video", fps=16, max_frames=5, max_side=4096, budget_s=1e-9)
    clip = decode_video(synthetic_mp4(64, 64, 10), field="video", fps=1000, max_frames=5, max_side=4096,
                        max_pixels=4096, max_source_frames=10, budget_s=30)
    assert clip.frames.shape == (5, 64, 64, 3)  # within every limit: decoded as before


def test_an_image_over_the_pixel_limit_is_refused_from_its_header():
    big = encode_image(np.zeros((3000, 3000, 3), np.uint8), "PNG")  # each side under 4096, 9 MP in all
    with pytest.raises(InvalidMedia, match=r"3000x3000 pixels \(9,000,000\)"):
        decode_image(big, field="image", max_side=4096, max_pixels=4096 * 2160)
    assert decode_image(big, field="image", max_side=4096).shape == (3000, 3000, 3)
