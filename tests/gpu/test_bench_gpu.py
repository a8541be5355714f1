"""bench/gpu.py on a GPU, one step of TI2V-5B at full size: every part is timed and reported."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none is visible to torch here"),
]


def test_one_step_of_ti2v_5b_at_full_size(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [sys.executable, "bench/gpu.py", "--variant", "ti2v-5b", "--profile", "quality", "--steps", "1",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (report,) = json.loads(out.read_text())["variants"]
    step = report["denoising"]["quality"]
    assert step["seconds_per_step"] > 0 and step["denoising_seconds_extrapolated"] == pytest.approx(
        step["seconds_per_step"] * 50, rel=0.01)
    assert report["text_encoder"]["seconds"] > 0 and report["vae_decode"]["seconds"] > 0
    assert 10 < step["peak_gib"] < torch.cuda.get_device_properties(0).total_memory / 2**30
