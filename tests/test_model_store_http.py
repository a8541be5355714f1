"""The model store through the service: a variant that would not fit and one with a corrupted
weight file are not ready (with the reason) while a third serves; requests over the fit budget
get 422 before queueing; LoRA adapters per request, Ray Serve multiplexing's LRU, and 404 for
adapters the store lacks. Real Ray, real pipelines (tiny twins), real files."""

import io
import shutil
import threading
import time

import av
import httpx
import numpy as np
import pytest

from deployments.replica_status import generator_deployment_name
from model_store.adapters import build_random_lora
from model_store.loader import load_variant_pipeline
from model_store.variants import load_variant
from tests.conftest import wait_terminal

APP = "store"
TI2V, T2V, I2V = "ti2v-5b-tiny", "t2v-a14b-tiny", "i2v-a14b-tiny"
WEIGHT = "transformer/diffusion_pytorch_model.safetensors"
JOB = {"prompt": "a red cat walking", "variant": TI2V, "size": "1280x720", "num_frames": 1,
       "num_inference_steps": 2, "seed": 11}


@pytest.fixture(scope="module")
def store(ray_serve, tiny_weights, tmp_path_factory):
    """One app, three variants: ti2v-5b-tiny serving under a 0.15 GiB budget with two adapters in
    its store; t2v-a14b-tiny with a budget nothing fits; i2v-a14b-tiny with a flipped byte."""
    from ray import serve

    from serve_app.app import build_app

    root = tmp_path_factory.mktemp("store")
    models = root / "models"
    models.mkdir()
    for name in (TI2V, T2V):
        (models / name).symlink_to(tiny_weights.parent / name)
    shutil.copytree(tiny_weights.parent / I2V, models / I2V)
    data = bytearray((models / I2V / WEIGHT).read_bytes())
    data[-100] ^= 0xFF
    (models / I2V / WEIGHT).write_bytes(data)
    pipe = load_variant_pipeline(load_variant(TI2V)).pipe
    for i, name in enumerate(("style", "style2")):
        build_random_lora(pipe, models / "loras" / name, TI2V, seed=i)

    app = build_app({
        "data_dir": str(root / "data"), "model_dir": str(models), "variants": [TI2V, T2V, I2V],
        "when_unavailable": "refuse",
        "overrides": {
            TI2V: {"warmup": False, "memory": {"budget_gib": 0.15, "margin_gib": 0},
                   "deployment": {"max_loaded_adapters": 1}},
            T2V: {"warmup": False, "memory": {"budget_gib": 0.001}},
            I2V: {"warmup": False},
        }})
    def run() -> None:
        try:
            serve.run(app, name=APP, route_prefix=f"/{APP}")  # returns once Serve gives up on the two
        except Exception:  # two generators cannot start, by design; the rest of the app runs
            pass

    # Not waiting for Serve to give up on the failing generators (its retries take half a minute):
    # the tests need their first failure's message, and the working variant.
    threading.Thread(target=run, daemon=True).start()
    with httpx.Client(base_url=f"{ray_serve}/{APP}", timeout=60) as client:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                ready = client.get("/ready").json()["variants"]
            except (httpx.HTTPError, ValueError, KeyError):  # the ingress is not up yet
                time.sleep(0.5)
                continue
            if ready[TI2V]["ready"] and "needs ~" in (ready[T2V]["reason"] or "") and "failed verification" in (
                    ready[I2V]["reason"] or ""):
                break
            time.sleep(0.5)
        yield {"client": client, "models": models, "root": root}
    serve.delete(APP)


def decode(content: bytes) -> np.ndarray:
    with av.open(io.BytesIO(content)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])])


def run_job(client, **fields) -> np.ndarray:
    r = client.post("/generate", json={**JOB, **fields})
    assert r.status_code == 202, r.text
    final = wait_terminal(client, r.json()["id"], timeout=180)[-1]
    assert final["status"] == "success", final
    return decode(client.get(final["file_url"]).content)


def generator_info(variant: str) -> dict:
    from ray import serve

    return serve.get_deployment_handle(generator_deployment_name(variant), app_name=APP).info.remote().result()


def test_variants_that_would_not_fit_or_are_corrupted_are_not_ready_and_say_why(store):
    client = store["client"]
    r = client.get("/ready")
    assert r.status_code == 503
    variants = r.json()["variants"]
    assert variants[TI2V]["ready"] is True
    wont_fit = variants[T2V]["reason"]
    assert f"variant {T2V} (quantization none, offload none) needs ~" in wont_fit
    assert "for its default request (5 frames at 832x480)" in wont_fit and "in its budget" in wont_fit
    assert "no memory mode fits it on this device" in wont_fit  # on CPU, offload is no option
    corrupt = variants[I2V]["reason"]
    assert f"weights of variant {I2V} failed verification: {WEIGHT} does not match its sha256" in corrupt
    assert str(store["root"]) not in r.text and "Traceback" not in r.text
    assert variants[T2V]["ready"] is False and variants[I2V]["ready"] is False
    # when_unavailable: refuse answers 503 with the same reason once Serve gives up on the
    # deployment (tests/test_durability.py covers that path; not waited for here).


def test_a_request_over_the_budget_is_refused_before_queueing_and_a_smaller_one_runs(store):
    client = store["client"]
    plan = generator_info(TI2V)["fit"]
    assert plan["budget_bytes"] == int(0.15 * 2**30) and plan["variant"] == TI2V
    before = client.get("/v1/videos", params={"limit": 100}).json()["data"]
    r = client.post("/generate", json={**JOB, "num_frames": 33})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "request_too_large" and error["param"] == "num_frames"
    most = error["max_num_frames"]
    assert 1 < most < 33 and f"at this size at most {most} frames fit" in error["message"]
    assert client.get("/v1/videos", params={"limit": 100}).json()["data"] == before  # nothing queued
    frames = run_job(client, num_frames=most)  # the most that fits is accepted, and runs
    assert frames.shape == (most, 720, 1280, 3)


def test_loras_change_the_output_the_lru_evicts_and_unknown_ones_are_404(store):
    client = store["client"]
    base = run_job(client)
    styled = run_job(client, loras=[{"name": "style", "scale": 1.0}])
    assert styled.shape == base.shape and not np.array_equal(styled, base)
    assert generator_info(TI2V)["adapters"] == ["style"]
    other = run_job(client, loras=[{"name": "style2"}])
    assert not np.array_equal(other, styled)
    assert generator_info(TI2V)["adapters"] == ["style2"]  # max_loaded_adapters 1: style was evicted
    assert np.array_equal(run_job(client), base)  # no adapter asked for: the base model's output again
    assert np.array_equal(run_job(client, loras=[{"name": "style", "scale": 1.0}]), styled)  # reloaded

    before = client.get("/v1/videos", params={"limit": 100}).json()["data"]
    r = client.post("/generate", json={**JOB, "loras": [{"name": "nope"}]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "adapter_not_found"
    assert "no LoRA adapter 'nope'" in r.json()["error"]["message"]
    assert r.json()["error"]["adapters"] == ["style", "style2"]
    form = client.post("/generate", data={"prompt": "x", "variant": TI2V, "loras": '[{"name": "nope"}]'})
    assert form.status_code == 404
    bad = client.post("/generate", json={**JOB, "loras": [{"name": "style", "scale": 9}]})
    assert bad.status_code == 422
    shutil.rmtree(store["models"] / "loras" / "style2")  # `wan-serve models rm style2`
    gone = client.post("/generate", json={**JOB, "loras": [{"name": "style2"}]})
    assert gone.status_code == 404 and gone.json()["error"]["adapters"] == ["style"]
    assert client.get("/v1/videos", params={"limit": 100}).json()["data"] == before
