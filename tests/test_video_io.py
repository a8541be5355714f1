import numpy as np
import pytest

from jobs.errors import JobCanceled
from media.video_io import fit_frames, read_video, write_mp4


def _gradient(t=5, h=704, w=1280):
    y = np.linspace(40, 215, h, dtype=np.float32)[None, :, None, None]
    x = np.linspace(40, 215, w, dtype=np.float32)[None, None, :, None]
    frames = np.broadcast_to((y + x) / 2, (t, h, w, 3)).astype(np.uint8).copy()
    frames[:, :, :, 0] = np.arange(t, dtype=np.uint8)[:, None, None] * 20 + 60
    return frames


def test_pad_704_to_720_adds_eight_black_rows_each_side():
    out = fit_frames(_gradient(), 1280, 720, "pad")
    assert out.shape == (5, 720, 1280, 3)
    assert not out[:, :8].any() and not out[:, -8:].any()
    assert out[:, 8:-8].min() > 0
    out = fit_frames(_gradient(h=1280, w=704), 720, 1280, "pad")
    assert out.shape == (5, 1280, 720, 3) and not out[:, :, :8].any() and not out[:, :, -8:].any()


def test_pad_cannot_shrink():
    with pytest.raises(ValueError, match="scale"):
        fit_frames(_gradient(), 1024, 576, "pad")


def test_mp4_round_trip_keeps_size_count_fps_and_content(tmp_path):
    frames = _gradient()
    path = tmp_path / "v.mp4"
    size = write_mp4(frames, path, fps=24)
    assert size == path.stat().st_size > 0
    video = read_video(path)
    assert video.frames.shape == frames.shape and video.fps == 24
    assert np.abs(video.frames.astype(int) - frames).mean() < 3
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]


def test_scale_mode_rescales_in_the_encoder(tmp_path):
    path = tmp_path / "s.mp4"
    write_mp4(_gradient(), path, fps=16, width=1280, height=720)
    video = read_video(path)
    assert video.frames.shape == (5, 720, 1280, 3) and video.fps == 16


def test_abort_leaves_no_file(tmp_path):
    calls = iter(range(100))
    with pytest.raises(JobCanceled):
        write_mp4(_gradient(), tmp_path / "x.mp4", fps=24, should_abort=lambda: next(calls) >= 2)
    assert list(tmp_path.iterdir()) == []


def test_odd_sizes_and_bad_arrays_are_refused(tmp_path):
    with pytest.raises(ValueError, match="even"):
        write_mp4(_gradient(h=33, w=64), tmp_path / "x.mp4", fps=24)
    with pytest.raises(ValueError, match="uint8"):
        write_mp4(_gradient().astype(np.float32), tmp_path / "x.mp4", fps=24)


def test_alpha_formats_keep_the_alpha_plane_and_leave_nothing_when_aborted(tmp_path):
    from media.video_io import read_png_zip, write_png_zip, write_webm_alpha

    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (3, 48, 80, 3), dtype=np.uint8)
    alpha = np.zeros((3, 48, 80), np.uint8)
    alpha[:, 8:40, 16:64] = 255
    write_png_zip(rgb, alpha, tmp_path / "a.zip")
    rgba = read_png_zip(tmp_path / "a.zip")
    assert np.array_equal(rgba[..., :3], rgb) and np.array_equal(rgba[..., 3], alpha)
    write_webm_alpha(rgb, alpha, tmp_path / "a.webm", 16)
    video = read_video(tmp_path / "a.webm", with_alpha=True)
    assert video.frames.shape == (3, 48, 80, 4) and np.array_equal(video.frames[..., 3] >= 128, alpha == 255)
    assert read_video(tmp_path / "a.webm").frames.shape == (3, 48, 80, 3)  # players without alpha see colour
    for writer, name, extra in ((write_png_zip, "b.zip", {}), (write_webm_alpha, "b.webm", {"fps": 16})):
        with pytest.raises(JobCanceled):
            writer(rgb, alpha, tmp_path / name, should_abort=lambda: True, **extra)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a.webm", "a.zip"]
