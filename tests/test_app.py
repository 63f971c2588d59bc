"""The Gradio app, launched on 127.0.0.1 in this process, driven by gradio_client and by Debian's chromium.

The app serves small presets (tests/tiny_models.py): random-weight tiny-var (4 scales) and tiny-mar (64 tokens),
and tiny-mar-diffusion (the golden official-format MAR, 16 tokens), so every run is fast on a CPU. A screenshot
of the page lands in test-results/.
"""

import concurrent.futures
import contextlib
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.tiny_models import write_presets

RESULTS = Path(__file__).resolve().parents[1] / "test-results"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]

# /generate's parameters in order (every one has a default; tests name the ones they change)
PARAMS = ["model", "class_name", "scales", "steps", "temperature", "top_k", "top_p", "cfg", "more_smooth",
          "schedule", "randomness", "seed", "randomize_seed", "num_images", "preview", "cfg_schedule",
          "diffusion_steps", "preview_every"]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    os.environ["EDIFICE_PRESETS"] = str(write_presets(tmp_path_factory.mktemp("presets")))
    os.environ["EDIFICE_DEFAULT_MODEL"] = "tiny-mar"
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    import app

    demo = app.build_demo()
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    yield url
    demo.close()
    for key in ("EDIFICE_PRESETS", "EDIFICE_DEFAULT_MODEL"):
        os.environ.pop(key, None)


@pytest.fixture
def client(app_url):
    from gradio_client import Client

    c = Client(app_url, download_files=False, verbose=False)
    yield c
    c.close()


def run(client, **kw):
    """Submit /generate and collect every streamed update (an app error raises AppError)."""
    job = client.submit(**kw, api_name="/generate")
    outs = list(job)
    job.result()
    return outs


def png(update) -> np.ndarray:
    return np.asarray(Image.open(update[7]["path"]))


def test_api_parameters_all_have_defaults(client):
    params = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/generate"]["parameters"]
    assert [p["parameter_name"] for p in params] == PARAMS
    assert all(p["parameter_has_default"] for p in params)


def test_zero_gpu_asks_for_the_time_mar_needs(app_url):
    """ZeroGPU's duration comes from /generate's own arguments (positional or named): its 60 s default, except
    for MAR with diffusion head at settings that need longer (256 x 100 steps: 1.5 x 77 s + 15 s)."""
    import app

    assert app.zero_gpu_seconds("tiny-var", "random", None, 256) == 60
    assert app.zero_gpu_seconds("mar-base", "random", None, 64, diffusion_steps=100) == 60
    assert app.zero_gpu_seconds(model="mar-huge", steps=256, diffusion_steps=100) == 131
    assert app.zero_gpu_seconds(model="mar-huge", steps=256, diffusion_steps=100, num_images=4) == 165


def test_var_streams_one_update_per_chosen_scale(client):
    outs = run(client, model="tiny-var", class_name="1 · square", scales=[1, 2, 4], seed=3, preview="fast")
    assert [o[2].split(" · ")[0] for o in outs] == ["scale 1/3", "scale 2/3", "scale 3/3"]
    assert outs[-1][2].startswith("scale 3/3 · 4×4") and "seed 3" in outs[-1][2]
    assert all(o[7] is None for o in outs[:-1])  # downloads come with the last update only
    assert png(outs[-1]).shape == (32, 32, 3)
    rows = outs[-1][4]["data"]
    assert [r[0] for r in rows] == [1, 2, 3, "total"] and [r[1] for r in rows[:3]] == [1, 2, 4]
    with Image.open(outs[-1][5]["path"]) as gif:
        assert gif.n_frames == 3


def test_mar_streams_one_update_per_step(client):
    outs = run(client, model="tiny-mar", class_name="2 · triangle", steps=12, seed=1, num_images=2)
    assert len(outs) == 12 and outs[-1][2].startswith("step 12/12 · 64/64 revealed")
    assert png(outs[-1]).shape == (32, 2 * 32 + 4, 3)  # two images side by side at native size, 4 px apart


def test_mar_diffusion_says_the_wait_then_streams_every_step(client):
    outs = run(client, model="tiny-mar-diffusion", class_name="3 · class 3", steps=8, cfg=2.0,
               cfg_schedule="constant", diffusion_steps=5, preview_every=3, seed=2, num_images=2)
    unchanged = {"__type__": "update"}  # gr.update(): the component keeps what it shows
    assert outs[0][2].startswith("starting · expected wait ≈ ") and outs[0][0] == unchanged
    assert [o[2].split(" · ")[0] for o in outs[1:]] == [f"step {k}/8" for k in range(1, 9)]
    assert outs[-1][2].startswith("step 8/8 · 16/16 revealed · cfg 2.00") and "seed 2" in outs[-1][2]
    # previews after steps 3 and 6 and the last: the live image changes only then
    assert [o[0] != unchanged for o in outs[1:]] == [False, False, True, False, False, True, False, True]
    assert all(o[1]["path"] for o in outs[1:])  # the token view changes every step
    assert png(outs[-1]).shape == (64, 2 * 64 + 4, 3)
    with Image.open(outs[-1][5]["path"]) as gif:
        assert gif.n_frames == 3
    again = run(client, model="tiny-mar-diffusion", class_name="3 · class 3", steps=8, cfg=2.0,
                cfg_schedule="constant", diffusion_steps=5, preview_every=3, seed=2, num_images=2)
    assert np.array_equal(png(again[-1]), png(outs[-1]))


@pytest.mark.parametrize("model, steps", [("tiny-var", 4), ("tiny-mar", 6), ("tiny-mar-diffusion", 6)])
def test_latent_previews_stream_and_end_exact(client, model, steps):
    kw = dict(model=model, steps=steps, diffusion_steps=3, seed=4)
    latent, full = run(client, preview="latent", **kw), run(client, preview="full", **kw)
    assert len(latent) == len(full) >= steps
    assert np.array_equal(png(latent[-1]), png(full[-1]))  # the final image is always the exact decode


def test_seeds_repeat_and_differ(client):
    a = png(run(client, model="tiny-mar", steps=8, seed=5)[-1])
    b = png(run(client, model="tiny-mar", steps=8, seed=5)[-1])
    c = png(run(client, model="tiny-mar", steps=8, seed=6)[-1])
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("kw, message", [
    (dict(model="tiny-var", scales=[2, 3]), "invalid scale list"),
    (dict(model="tiny-mar", steps=65), "num_steps must be in 1..64"),
    (dict(model="tiny-mar", class_name="7"), "unknown class 7"),
    (dict(model="tiny-var", num_images=9), "greater than maximum value 4"),  # bounded by the slider itself
    (dict(model="tiny-mar-diffusion", steps=17), "num_steps must be in 1..16"),
    (dict(model="tiny-mar-diffusion", cfg=0.5), "cfg must be >= 1"),
    (dict(model="tiny-mar-diffusion", diffusion_steps=1), "less than minimum value 2"),
    (dict(model="/etc"), "local path"),
    (dict(model="no-such-preset"), "neither a preset nor a Hub repo id"),
])
def test_bad_inputs_come_back_as_readable_errors(client, kw, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        run(client, **kw)


def test_hub_model_without_network_gives_the_loaders_message(client):
    """var-d16 is not cached and the Hub (HF_ENDPOINT: the fake Hub, not running here) cannot be reached."""
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="could not reach the Hugging Face Hub"):
        client.predict("var-d16", api_name="/select_model")
    assert len(run(client, model="tiny-var", seed=0)) == 4  # and the app keeps working


def test_cancel_stops_the_generator_and_the_next_run_works(client):
    import app

    job = client.submit(model="tiny-mar", steps=64, seed=0, api_name="/generate")
    while len(job.outputs()) < 2:
        time.sleep(0.01)
    job.cancel()
    deadline = time.time() + 10
    while app.ACTIVE["runs"] and time.time() < deadline:
        time.sleep(0.02)
    assert app.ACTIVE["runs"] == 0  # the generator's finally ran
    assert len(job.outputs()) < 64
    assert len(run(client, model="tiny-var", seed=0)) == 4


def test_four_clients_at_once_all_finish(app_url):
    from gradio_client import Client

    def one(seed):
        c = Client(app_url, download_files=False, verbose=False)
        try:
            return len(run(c, model="tiny-var" if seed % 2 else "tiny-mar", steps=8, seed=seed))
        finally:
            c.close()

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert sorted(pool.map(one, range(4))) == [4, 4, 8, 8]


needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                    reason="Debian chromium is not installed (.ci/run installs it)")


@contextlib.contextmanager
def browser_page(app_url, height: int):
    """A chromium page on the app, loaded (its default model's controls shown)."""
    from playwright.sync_api import sync_playwright

    RESULTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": height})
        page.goto(app_url)
        page.get_by_label("Steps (MAR)").first.wait_for()
        yield page
        browser.close()


@needs_chromium
def test_browser_streams_frames_and_stops(app_url):
    with browser_page(app_url, 1000) as page:
        page.get_by_label("Steps (MAR)").first.fill("64")
        page.get_by_label("Steps (MAR)").first.press("Enter")
        live = page.locator("#live img")
        page.get_by_role("button", name="Generate").click()
        frames = set()
        status = page.get_by_label("Status")
        deadline = time.time() + 60
        while "64/64 revealed" not in status.input_value() and time.time() < deadline:
            if live.count():
                frames.add(live.first.get_attribute("src"))
            page.wait_for_timeout(20)
        assert "64/64 revealed" in status.input_value()
        assert len(frames) >= 3, f"saw {len(frames)} distinct live frames"
        page.screenshot(path=str(RESULTS / "app.png"), full_page=True)

        page.get_by_role("button", name="Generate").click()
        page.wait_for_function("""() => {  // the second run is under way: step 2 or later, not done
            const v = document.querySelector('#status textarea').value, m = v.match(/^step (\\d+)\\/64 /);
            return m && +m[1] >= 2 && !v.includes('done');
        }""", timeout=30_000, polling=10)
        page.get_by_role("button", name="Stop").click()
        page.wait_for_timeout(1500)
        stopped_at = int(status.input_value().split("/")[0].removeprefix("step "))
        assert stopped_at < 64
        page.wait_for_timeout(500)
        assert int(status.input_value().split("/")[0].removeprefix("step ")) == stopped_at


@needs_chromium
def test_browser_mar_diffusion_controls_wait_and_steps(app_url):
    """Picking MAR with diffusion head shows its controls and the expected wait, then streams all its steps."""
    with browser_page(app_url, 1200) as page:
        model = page.get_by_label("Model")
        model.fill("tiny-mar-diffusion")
        model.press("Enter")
        page.get_by_label("Diffusion steps").first.wait_for()
        page.get_by_text("Expected wait ≈").wait_for(timeout=30_000)
        assert not page.get_by_label("Ranking randomness").first.is_visible()
        page.get_by_role("button", name="Generate").click()
        status = page.get_by_label("Status")
        page.wait_for_function("() => document.querySelector('#status textarea').value.includes('done')",
                               timeout=60_000, polling=20)
        assert status.input_value().startswith("step 8/8 · 16/16 revealed")
        assert page.locator("#live img").count() == 1
        page.screenshot(path=str(RESULTS / "app-mar-diffusion.png"), full_page=True)
