"""The web studio at / and the API docs at /docs, in real headless Chromium (Debian's package),
against the app on the tiny twins. Every request leaves 127.0.0.1 for nowhere: the context aborts
the rest and the tests check none was tried. A screenshot of each state is saved under the
test's tmp dir."""

import email.parser
import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from tests.browser import chromium, only_loopback
from tests.conftest import wait_terminal
from tests.media_samples import ASTRONAUT, CHELSEA, COCKATOO

JOB_TIMEOUT_MS = 180_000
# The studio's Content-Security-Policy forbids eval: the waits below pass functions, never
# expression strings (Playwright evaluates those with eval).


@pytest.fixture(scope="module")
def browser():
    yield from chromium()


@pytest.fixture
def page(browser, app_url, tmp_path):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    refused: list[str] = []
    only_loopback(context, refused)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(f"{app_url}/")
    pg.wait_for_selector("body[data-ready=true]")
    pg.shots = tmp_path
    yield pg
    context.close()
    assert errors == [], errors
    assert refused == [], f"the page tried to leave 127.0.0.1: {refused}"


def _shot(pg, name):
    pg.screenshot(path=str(pg.shots / f"{name}.png"), full_page=True)


def _watch_progress(pg):
    """Record every value the job cards' progress bars take (the studio sets them from SSE)."""
    pg.evaluate("""() => {
        window.seenProgress = [];
        new MutationObserver((changes) => {
            for (const c of changes) if (c.target.matches && c.target.matches('progress.job-progress'))
                window.seenProgress.push(Number(c.target.getAttribute('value')));
        }).observe(document.getElementById('jobs'), {attributes: true, subtree: true, attributeFilter: ['value']});
    }""")


def _submitted_id(pg, before: set) -> str:
    pg.wait_for_function(f"() => document.querySelectorAll('#jobs article.job').length > {len(before)}")
    ids = pg.eval_on_selector_all("#jobs article.job", "els => els.map(e => e.dataset.jobId)")
    (new,) = set(ids) - before
    return new


def _cards(pg) -> set:
    return set(pg.eval_on_selector_all("#jobs article.job", "els => els.map(e => e.dataset.jobId)"))


def _card(pg, job_id):
    return pg.locator(f'#jobs article.job[data-job-id="{job_id}"]')


def test_text_job_progress_then_the_video_plays(page, client):
    pg = page
    pg.select_option("#variant", "ti2v-5b-tiny")
    pg.fill("#prompt", "a cockatoo over the beach")
    pg.fill("#num_inference_steps", "8")
    pg.select_option("#size", "1280x720")
    _shot(pg, "form")
    _watch_progress(pg)
    before = _cards(pg)
    pg.click("#submit")
    job_id = _submitted_id(pg, before)
    card = _card(pg, job_id)
    card.locator("video.job-video").wait_for(state="visible", timeout=JOB_TIMEOUT_MS)
    assert card.get_attribute("data-status") == "success"
    seen = pg.evaluate("() => window.seenProgress")
    steps = [v for v in seen if 0 < v < 1]
    # Denoising fills 0..0.9 in 8 steps; at least a few distinct steps were shown, in order, then 1.
    assert len(set(steps)) >= 3 and steps == sorted(steps) and seen[-1] == 1, seen
    assert "Done · 100%" in card.locator(".job-state").inner_text()
    pg.wait_for_function(
        f"""() => {{ const v = document.querySelector('article[data-job-id="{job_id}"] video');
                   return v.readyState >= 1 && v.duration > 0; }}"""
    )
    duration, width, height = card.locator("video").evaluate("v => [v.duration, v.videoWidth, v.videoHeight]")
    assert (width, height) == (1280, 720) and duration == pytest.approx(5 / 24, abs=0.05)
    assert card.locator("a.job-download").get_attribute("download").endswith(".mp4")
    _shot(pg, "done")
    assert client.get(f"/status/{job_id}").json()["total_steps"] == 8


def test_image_to_video_with_a_photo(page, client):
    pg = page
    pg.select_option("#variant", "i2v-a14b-tiny")
    assert pg.is_visible("#image") and pg.is_hidden("#video")  # only the inputs i2v takes
    assert "(required)" in pg.inner_text('[data-upload="image"] label')
    pg.fill("#prompt", "the cat turns its head")
    pg.set_input_files("#image", str(CHELSEA))
    pg.wait_for_function("() => { const i = document.querySelector('[data-upload=image] img'); "
                         "return !i.hidden && i.naturalWidth === 451; }")
    _shot(pg, "i2v-form")
    before = _cards(pg)
    pg.click("#submit")
    job_id = _submitted_id(pg, before)
    _card(pg, job_id).locator("video.job-video").wait_for(state="visible", timeout=JOB_TIMEOUT_MS)
    status = client.get(f"/status/{job_id}").json()
    assert status["status"] == "success" and status["inputs"]["image"] == {"width": 451, "height": 300, "format": "PNG"}
    assert status["size"] == "832x480"  # the variant's first landscape size, from the photo's orientation


def test_edit_an_image_with_two_inputs_and_see_it(page, client):
    pg = page
    pg.select_option("#variant", "qwen-image-edit-tiny")
    assert pg.is_visible("#image") and pg.is_hidden("#length") and pg.is_hidden("#video")
    assert pg.inner_text("#guidance-label") == "True CFG scale"
    assert pg.eval_on_selector("#image", "i => i.multiple") is True
    pg.fill("#prompt", "the cat wears the astronaut's helmet")
    pg.fill("#num_inference_steps", "2")
    pg.select_option("#size", "1152x864")
    pg.set_input_files("#image", [str(CHELSEA), str(ASTRONAUT)])
    before = _cards(pg)
    pg.click("#submit")
    job_id = _submitted_id(pg, before)
    card = _card(pg, job_id)
    card.locator("img.job-image").wait_for(state="visible", timeout=JOB_TIMEOUT_MS)
    pg.wait_for_function(f"""() => document.querySelector('article[data-job-id="{job_id}"] img.job-image')
                               .naturalWidth === 1152""")
    assert card.locator("video.job-video").is_hidden()
    assert card.locator("a.job-download").get_attribute("download").endswith(".png")
    status = client.get(f"/status/{job_id}").json()
    assert status["size"] == "1152x864" and len(status["inputs"]["images"]) == 2
    assert status["total_steps"] == 2 and status["output_format"] == "png"
    _shot(pg, "image-edit")


def _multipart_files(request) -> dict[str, bytes]:
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser().parsebytes(head + request.post_data_buffer)
    return {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
            for part in message.get_payload()}


def test_paint_a_mask_for_inpainting(page, client):
    pg = page
    pg.select_option("#variant", "vace-14b-tiny")
    assert pg.is_visible("#video") and pg.is_hidden("#image")
    pg.fill("#prompt", "a golden parrot")
    pg.select_option("#size", "1280x720")
    pg.select_option("#output_format", "png_zip")
    pg.set_input_files("#video", str(COCKATOO))
    pg.wait_for_selector(".mask-stage[data-ready=true]", state="visible")
    canvas = pg.locator("#mask-canvas")
    assert canvas.evaluate("c => [c.width, c.height]") == [1280, 720]
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()  # in viewport coordinates, as the mouse moves
    # One horizontal stroke across the middle, from 25% to 75% of the width.
    y = box["y"] + box["height"] / 2
    pg.mouse.move(box["x"] + box["width"] * 0.25, y)
    pg.mouse.down()
    for i in range(1, 11):
        pg.mouse.move(box["x"] + box["width"] * (0.25 + 0.05 * i), y)
    pg.mouse.up()
    _shot(pg, "mask-painted")
    before = _cards(pg)
    with pg.expect_request(lambda r: r.url.endswith("/generate") and r.method == "POST") as sent:
        pg.click("#submit")
    files = _multipart_files(sent.value)
    mask = np.asarray(Image.open(io.BytesIO(files["mask"])).convert("L"))
    assert mask.shape == (720, 1280) and set(np.unique(mask)) == {0, 255}
    assert (mask[360, 320:960] == 255).all()  # white where the brush went
    assert (mask[:200] == 0).all() and (mask[520:] == 0).all()  # black far from it
    job_id = _submitted_id(pg, before)
    _card(pg, job_id).locator("a.job-download").wait_for(state="visible", timeout=JOB_TIMEOUT_MS)
    final = client.get(f"/status/{job_id}").json()
    assert final["status"] == "success" and final["output_format"] == "png_zip"
    content = client.get(f"/v1/videos/{job_id}/content").content
    with zipfile.ZipFile(io.BytesIO(content)) as z:
        alphas = [np.asarray(Image.open(z.open(n)))[..., 3] for n in z.namelist()]
    # The server got the painted mask: every frame's alpha is it, exactly (PNG is lossless).
    assert len(alphas) == 5 and all(np.array_equal(a, mask) for a in alphas)
    thumb = client.get(f"/v1/videos/{job_id}/content", params={"variant": "thumbnail"})
    assert thumb.headers["content-type"] == "image/jpeg"  # the gallery's thumbnail of a PNG-zip result
    assert Image.open(io.BytesIO(thumb.content)).size == (1280, 720)


def test_cancel_a_running_job(page, client):
    pg = page
    pg.select_option("#variant", "ti2v-5b-tiny")
    pg.fill("#prompt", "a very long job")
    pg.fill("#num_inference_steps", "400")
    before = _cards(pg)
    pg.click("#submit")
    job_id = _submitted_id(pg, before)
    card = _card(pg, job_id)
    pg.wait_for_function(f"""() => /step [1-9]/.test(document.querySelector(
        'article[data-job-id="{job_id}"] .job-state').textContent)""", timeout=JOB_TIMEOUT_MS)
    _shot(pg, "running")
    card.locator("button.job-cancel").click()
    pg.wait_for_selector(f'article[data-job-id="{job_id}"][data-status=canceled]')
    assert card.locator(".job-state").inner_text() == "Canceled"
    assert card.locator("button.job-cancel").is_hidden()
    assert wait_terminal(client, job_id)[-1]["status"] == "canceled"
    _shot(pg, "canceled")


def test_gallery_remix_and_delete(page, client):
    pg = page
    # More jobs than one gallery page (8), whichever tests ran before.
    for _ in range(9 - len(client.get("/jobs", params={"limit": 9}).json()["data"])):
        filler = client.post("/generate", json={"prompt": "filler", "num_inference_steps": 1}).json()
        wait_terminal(client, filler["id"])  # one at a time: the queue holds 8
    done = client.post("/generate", json={"prompt": "gallery sample", "variant": "ti2v-5b-tiny"}).json()["id"]
    assert wait_terminal(client, done)[-1]["status"] == "success"
    pg.click("#gallery-refresh")
    item = pg.locator(f'#gallery li[data-job-id="{done}"]')
    item.wait_for()
    newest = pg.eval_on_selector_all("#gallery li", "els => els.map(e => e.dataset.jobId)")
    assert newest[0] == done  # newest first
    thumb = item.locator("img")
    pg.wait_for_function(f"""() => document.querySelector('#gallery li[data-job-id="{done}"] img').naturalWidth > 0""")
    assert thumb.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [1280, 720]
    _shot(pg, "gallery")
    # Paged, 8 a page: the app holds more jobs than that by now.
    assert len(newest) == 8
    pg.click("#gallery-older")
    pg.wait_for_function(f"""() => !document.querySelector('#gallery li[data-job-id="{done}"]')""")
    older = pg.eval_on_selector_all("#gallery li", "els => els.map(e => e.dataset.jobId)")
    expected = [j["id"] for j in client.get("/jobs", params={"limit": 8, "after": newest[-1]}).json()["data"]]
    assert older == expected and pg.is_enabled("#gallery-newer")
    pg.click("#gallery-newer")
    item.wait_for()
    item.locator("button").click()  # opens the job's card
    card = _card(pg, done)
    card.locator("video.job-video").wait_for(state="visible")

    before = _cards(pg)
    card.locator(".job-remix input").fill("gallery sample, at night")
    card.locator(".job-remix button").click()
    remix_id = _submitted_id(pg, before)
    _card(pg, remix_id).locator("video.job-video").wait_for(state="visible", timeout=JOB_TIMEOUT_MS)
    remixed = client.get(f"/status/{remix_id}").json()
    assert remixed["prompt"] == "gallery sample, at night"
    assert remixed["seed"] == client.get(f"/status/{done}").json()["seed"]  # same settings

    card.locator("button.job-delete").click()
    card.wait_for(state="detached")
    assert client.get(f"/status/{done}").status_code == 404


def test_an_error_shows_the_services_message(page, client):
    pg = page
    pg.select_option("#variant", "ti2v-5b-tiny")
    pg.fill("#prompt", "")
    total = len(client.get("/jobs", params={"limit": 100}).json()["data"])
    pg.click("#submit")
    error = pg.locator("#form-error")
    error.wait_for(state="visible")
    assert "prompt" in error.inner_text() and error.get_attribute("data-code") == "validation_error"
    assert len(client.get("/jobs", params={"limit": 100}).json()["data"]) == total  # nothing queued
    _shot(pg, "error")

    pg.fill("#prompt", "too many frames")
    pg.fill("#length", "6")
    pg.click("#submit")
    pg.wait_for_function("() => document.getElementById('form-error').textContent.includes('4k+1')")
    assert "try 5" in error.inner_text()  # the service's own advice


def test_every_control_is_labelled_and_it_fits_a_phone(browser, app_url, tmp_path):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    refused: list[str] = []
    only_loopback(context, refused)
    pg = context.new_page()
    pg.goto(f"{app_url}/")
    pg.wait_for_selector("body[data-ready=true]")
    for variant in ("ti2v-5b-tiny", "i2v-a14b-tiny", "vace-14b-tiny", "t2v-a14b-tiny"):
        pg.select_option("#variant", variant)
        unlabelled = pg.evaluate("""() => [...document.querySelectorAll('input, select, textarea, button')]
            .filter(e => e.offsetParent !== null)
            .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
            .map(e => e.id || e.outerHTML.slice(0, 60))""")
        assert unlabelled == [], (variant, unlabelled)
        assert pg.evaluate("() => document.documentElement.scrollWidth") <= 390  # no sideways scrolling
    pg.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
    # Keyboard: Tab reaches the variant picker, the prompt and the submit button.
    reached = []
    for _ in range(40):
        pg.keyboard.press("Tab")
        reached.append(pg.evaluate("() => document.activeElement.id"))
    assert {"variant", "prompt", "submit"} <= set(reached)
    context.close()
    assert refused == []


def test_api_docs_render_without_network(browser, app_url, tmp_path):
    context = browser.new_context()
    refused: list[str] = []
    only_loopback(context, refused)
    pg = context.new_page()
    pg.goto(f"{app_url}/docs")
    pg.wait_for_selector(".opblock", timeout=30_000)
    paths = pg.eval_on_selector_all(".opblock-summary-path", "els => els.map(e => e.getAttribute('data-path'))")
    assert {"/generate", "/status/{job_id}", "/v1/videos", "/v1/models", "/variants"} <= set(paths)
    pg.screenshot(path=str(tmp_path / "docs.png"))
    context.close()
    assert refused == [], f"/docs tried to load from the network: {refused}"


def test_with_api_keys_the_studio_asks_for_a_key_and_plays_the_signed_video(
    browser, ray_serve, tmp_path, temporary_apps
):
    from auth.keys import KeyStore
    from jobs.config import DataLayout
    from jobs.store import Database
    from tests.conftest import deploy

    data_dir = tmp_path / "keyed"
    secret = KeyStore(Database(DataLayout(data_dir=data_dir).jobs_db)).create("artists")[1]
    temporary_apps.append("studio-keys")
    url = deploy(ray_serve, "studio-keys", data_dir, variants=["ti2v-5b-tiny"])
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    refused: list[str] = []
    only_loopback(context, refused)
    pg = context.new_page()
    pg.goto(f"{url}/")
    pg.wait_for_selector("#key-form:not([hidden])")
    pg.wait_for_selector("#form-error:not([hidden])")
    assert pg.locator("#form-error").inner_text().startswith("this service needs an API key")
    pg.fill("#api-key", secret)
    pg.click("#key-form button")
    pg.wait_for_selector("body[data-ready=true]")
    pg.fill("#prompt", "a keyed cockatoo")
    pg.fill("#num_inference_steps", "2")
    before = _cards(pg)
    pg.click("#submit")
    job_id = _submitted_id(pg, before)
    card = _card(pg, job_id)
    card.locator("video.job-video").wait_for(state="visible", timeout=JOB_TIMEOUT_MS)
    pg.wait_for_function(
        f"""() => {{ const v = document.querySelector('article[data-job-id="{job_id}"] video');
                   return v.readyState >= 1 && v.duration > 0; }}"""
    )
    src = card.locator("video").evaluate("v => v.currentSrc")
    assert "/files/" in src and "signature=" in src  # the <video> loads the signed URL, no header
    assert card.get_attribute("data-status") == "success"
    pg.screenshot(path=str(tmp_path / "keyed.png"), full_page=True)
    context.close()
    assert refused == []
