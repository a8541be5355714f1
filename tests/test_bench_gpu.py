"""bench/gpu.py on a machine without a GPU: the dry run counts FLOPs from the model dimensions
without allocating the models, and a real run says what it needs."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "bench/gpu.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_dry_run_counts_each_variants_flops_per_step():
    done = _bench("--dry-run", "--variant", "ti2v-5b", "t2v-a14b")
    assert done.returncode == 0, done.stderr
    plans = {p["variant"]: p for p in json.loads(done.stdout)["variants"]}
    ti2v, a14b = plans["ti2v-5b"], plans["t2v-a14b"]
    # TI2V-5B at 1280x704, 121 frames: 31 latent frames of 44x80 (the Wan2.2 VAE's 4x16x16), 48 channels.
    assert ti2v["latents"] == [1, 48, 31, 44, 80] and ti2v["num_inference_steps"] == 50
    assert a14b["latents"] == [1, 16, 21, 90, 160] and a14b["num_inference_steps"] == 40
    # Per block and pass, from the dimensions: 12 N d^2 (self- and cross-attention projections), 4 N^2 d
    # (attention), 4 N d ffn (feed-forward); N tokens = latent cells / the 2x2 patch; two passes (CFG).
    for plan, (d, ffn, layers) in ((ti2v, (3072, 14336, 30)), (a14b, (5120, 13824, 40))):
        _, _, f, h, w = plan["latents"]
        n = f * h * w // 4
        analytic = 2 * layers * n * d * (12 * d + 4 * n + 4 * ffn) / 1e12
        assert abs(plan["step_tflop"] - analytic) / analytic < 0.03, (plan["variant"], plan["step_tflop"], analytic)
    assert a14b["weights_gb"]["transformer"] == a14b["weights_gb"]["transformer_2"] == 28.58
    assert ti2v["profiles"] == ["quality", "balanced", "fast"]


def test_without_a_gpu_a_real_run_says_what_it_needs():
    done = _bench("--variant", "ti2v-5b")
    assert done.returncode == 1
    assert done.stderr.strip().endswith(
        "bench/gpu.py needs a CUDA GPU (none is visible to torch); --dry-run works anywhere")
