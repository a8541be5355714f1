import pytest

from jobs.errors import ValidationFailed
from jobs.filenames import sanitize_filename


@pytest.mark.parametrize(
    "given, expected",
    [("clip", "clip.mp4"), ("clip.mp4", "clip.mp4"), ("My Clip!.MP4", "My_Clip_.MP4"), ("a.avi", "a.avi.mp4")],
)
def test_sanitized_names(given, expected):
    assert sanitize_filename(given) == expected


@pytest.mark.parametrize("bad", ["../../x", "a/b", "a\\b", "..", ".hidden", "", "   "])
def test_unsafe_names_are_refused_with_a_reason(bad):
    with pytest.raises(ValidationFailed) as err:
        sanitize_filename(bad)
    assert "filename" in err.value.message


@pytest.mark.parametrize(
    "given, extension, expected",
    [("clip", ".webm", "clip.webm"), ("clip.mp4", ".webm", "clip.webm"), ("frames.zip", ".zip", "frames.zip"),
     ("clip.webm", ".zip", "clip.zip"), ("a.avi", ".webm", "a.avi.webm")],
)
def test_the_output_format_decides_the_extension(given, extension, expected):
    assert sanitize_filename(given, extension) == expected
