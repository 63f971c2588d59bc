"""The Gradio app, launched on 127.0.0.1 in this process, driven by gradio_client, raw HTTP and Debian's chromium.

The app serves small presets (tests/tiny_models.py): random-weight tiny-var (4 scales) and tiny-mar (64 tokens),
tiny-mar-diffusion (the golden official-format MAR, 16 tokens) and the golden tiny Halton-MaskGIT, LlamaGen and
FractalMAR, so every run is fast on a CPU. Screenshots of
the page land in test-results/.
"""

import concurrent.futures
import contextlib
import json
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from tests.tiny_models import write_presets

RESULTS = Path(__file__).resolve().parents[1] / "test-results"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
# /generate's outputs, in order
LIVE, TOKENS, UNCERTAINTY, STATUS, NUMBERS, TIMELINE, GALLERY, TIMINGS, GIF, WEBP, PNG, INFO = range(12)
UNCHANGED = {"__type__": "update"}  # gr.update(): the component keeps what it shows


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    os.environ["EDIFICE_PRESETS"] = str(write_presets(tmp_path_factory.mktemp("presets"), all_families=True))
    os.environ["EDIFICE_DEFAULT_MODEL"] = "tiny-mar"
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    import app

    demo = app.build_demo()
    _, url, _ = app.launch(demo, server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
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


def run(client, api_name="/generate", **kw):
    """Submit and collect every streamed update; a failed call raises AppError (iterating a failed job yields
    and raises nothing: ``job.result()`` is what raises, as the README's example does)."""
    job = client.submit(**kw, api_name=api_name)
    outs = list(job)
    job.result()
    return outs


def steps(outs) -> list[str]:
    """The status line of every update that showed a step."""
    return [o[STATUS] for o in outs if isinstance(o[STATUS], str) and o[STATUS]]


def png(update) -> np.ndarray:
    return np.asarray(Image.open(update[PNG]["path"]))


# -- the API --------------------------------------------------------------------------------------------------
def test_api_parameters_all_have_defaults(client):
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    params = api["/generate"]["parameters"]
    assert [p["parameter_name"] for p in params] == ["model", "class_name", "seed", "randomize_seed", "num_images",
                                                     "settings"]
    assert all(p["parameter_has_default"] for p in params)
    assert [p["parameter_name"] for p in api["/compare"]["parameters"]] == [
        "model_a", "settings_a", "model_b", "settings_b", "class_name", "seed", "num_images"]


def test_zero_gpu_asks_for_the_time_the_family_needs(app_url):
    """ZeroGPU's duration comes from /generate's own arguments, by the family's rule: its 60 s default, except
    for MAR with diffusion head at settings that need longer (256 x 100 steps: 1.5 x 77 s + 15 s)."""
    import app

    assert app.zero_gpu_seconds("tiny-var", "random", 0, False, 1, {"scales": [1, 2]}) == 60
    assert app.zero_gpu_seconds("mar-base", settings={"num_steps": 64, "num_sampling_steps": 100}) == 60
    assert app.zero_gpu_seconds(model="mar-huge", settings={"num_steps": 256, "num_sampling_steps": 100}) == 131
    assert app.zero_gpu_seconds(model="mar-huge", num_images=4,
                                settings={"num_steps": 256, "num_sampling_steps": 100}) == 165
    # the page's runs and /compare ask by the same rule (a comparison for both of its runs)
    assert app.run_seconds("mar-huge", "random", 0, False, 1, {"num_steps": 256, "num_sampling_steps": 100}, 0.0,
                           None, None) == 131
    assert app.compare_seconds("mar-huge", {"num_steps": 256, "num_sampling_steps": 100}, "tiny-var", None) == 191


def test_var_streams_one_update_per_chosen_scale(client):
    outs = run(client, model="tiny-var", class_name="1 · square", seed=3, settings={"scales": [1, 2, 4],
                                                                                   "preview": "fast"})
    assert [s.split(" · ")[0] for s in steps(outs)] == ["scale 1/3", "scale 2/3", "scale 3/3"]
    assert steps(outs)[-1].startswith("scale 3/3 · 4×4") and "seed 3" in outs[-1][INFO]
    assert all(o[PNG] in (None, UNCHANGED) for o in outs[:-1])  # downloads come with the last update only
    assert png(outs[-1]).shape == (32, 32, 3)
    rows = outs[-1][TIMINGS]["data"]
    assert [r[0] for r in rows] == [1, 2, 3, "total"] and rows[2][1].startswith("scale 3/3 · 4×4")
    with Image.open(outs[-1][GIF]["path"]) as gif:
        assert gif.n_frames == 3


def test_a_run_first_clears_the_last_ones_outputs(client):
    outs = run(client, model="tiny-var", seed=0)
    assert outs[0][LIVE] is None and outs[0][TOKENS] is None and outs[0][PNG] is None and outs[0][GALLERY] == []
    assert outs[0][STATUS] == "" and outs[0][INFO] == ""


def test_mar_streams_one_update_per_step(client):
    outs = run(client, model="tiny-mar", class_name="2 · triangle", seed=1, num_images=2, settings={"num_steps": 12})
    assert len(steps(outs)) == 12 and steps(outs)[-1].startswith("step 12/12 · 64/64 revealed")
    assert png(outs[-1]).shape == (32, 2 * 32 + 4, 3)  # two images side by side at native size, 4 px apart
    assert all(o[UNCERTAINTY] for o in outs if isinstance(o[STATUS], str) and o[STATUS])
    assert len(outs[-2][GALLERY]) == 12  # the filmstrip: one thumbnail per step


def test_mar_diffusion_says_the_wait_then_streams_every_step(client):
    kw = dict(model="tiny-mar-diffusion", class_name="3 · class 3", seed=2, num_images=2,
              settings=dict(num_steps=8, cfg=2.0, cfg_schedule="constant", num_sampling_steps=5, preview_every=3))
    outs = run(client, **kw)
    assert "expected wait ≈" in outs[1][INFO] or outs[1][INFO].startswith("starting MAR (diffusion head)")
    shown = [o for o in outs if isinstance(o[STATUS], str) and o[STATUS]]
    assert [s.split(" · ")[0] for s in steps(outs)] == [f"step {k}/8" for k in range(1, 9)]
    assert steps(outs)[-1].startswith("step 8/8 · 16/16 revealed · cfg 2.00") and "seed 2" in outs[-1][INFO]
    # previews after steps 3 and 6 and the last: the live image changes only then
    assert [o[LIVE] != UNCHANGED for o in shown] == [False, False, True, False, False, True, False, True]
    assert png(outs[-1]).shape == (64, 2 * 64 + 4, 3)
    with Image.open(outs[-1][GIF]["path"]) as gif:
        assert gif.n_frames == 3
    assert np.array_equal(png(run(client, **kw)[-1]), png(outs[-1]))


@pytest.mark.parametrize("model, steps_", [("tiny-var", 4), ("tiny-mar", 6), ("tiny-mar-diffusion", 6)])
def test_latent_previews_stream_and_end_exact(client, model, steps_):
    s = {"scales": None} if model == "tiny-var" else {"num_steps": steps_}
    if model == "tiny-mar-diffusion":
        s["num_sampling_steps"] = 3
    latent = run(client, model=model, seed=4, settings={**s, "preview": "latent"})
    full = run(client, model=model, seed=4, settings={**s, "preview": "full"})
    assert len(steps(latent)) == len(steps(full)) == steps_
    assert np.array_equal(png(latent[-1]), png(full[-1]))  # the final image is always the exact decode


def test_seeds_repeat_and_differ(client):
    a = png(run(client, model="tiny-mar", seed=5)[-1])
    b = png(run(client, model="tiny-mar", seed=5)[-1])
    c = png(run(client, model="tiny-mar", seed=6)[-1])
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_api_defaults_reproduce_the_page(client):
    """/generate with only model, class and seed gives the image of the page's initial settings (what
    /select_model puts in the controls), for each of the six families; and a MAR selected first does not break a
    VAR call with defaults."""
    import app

    for model in ("tiny-var", "tiny-mar", "tiny-mar-diffusion", "tiny-maskgit", "tiny-llamagen", "tiny-fractalgen"):
        shown = client.predict(model, api_name="/select_model")
        pipe = app.MODELS.get(model)
        slot_values = shown[3: 3 + len(app.slot_controls(pipe))]
        settings = {c.name: v["value"] for c, v in zip(app.slot_controls(pipe), slot_values, strict=True)
                    if c is not None}
        assert set(settings) == {c.name for c in pipe.controls()}
        page = run(client, model=model, class_name=shown[1]["value"], seed=7, settings=settings)
        api = run(client, model=model, class_name=shown[1]["value"], seed=7)
        assert np.array_equal(png(page[-1]), png(api[-1])), model
    client.predict("tiny-mar", api_name="/select_model")
    assert len(steps(run(client, model="tiny-var", seed=0))) == 4


def test_select_model_shows_the_checkpoints_showcase_seed(client):
    """/select_model ends with the seed shown first: the checkpoint's ``defaults["seed"]`` when that is a valid
    seed, else 0 (a bool, a negative number, a string or a float is not one)."""
    from types import SimpleNamespace

    import app

    pipe = app.MODELS.get("tiny-var")
    assert client.predict("tiny-var", api_name="/select_model")[-1] == 0
    try:
        pipe.defaults["seed"] = 11
        assert client.predict("tiny-var", api_name="/select_model")[-1] == 11
    finally:
        del pipe.defaults["seed"]
    for bad in (True, -1, "3", 2 ** 63, 1.5):
        assert app.showcase_seed(SimpleNamespace(defaults={"seed": bad})) == 0


def test_string_scales_and_none_values_are_accepted(client):
    """The schema's JSON settings take numbers as strings; None (e.g. preview) means the recommended value."""
    outs = run(client, model="tiny-var", seed=1, settings={"scales": ["1", "2", "4"], "preview": None})
    assert [s.split(" · ")[0] for s in steps(outs)] == ["scale 1/3", "scale 2/3", "scale 3/3"]


@pytest.mark.parametrize("kw, message", [
    (dict(model="tiny-var", settings={"scales": [2, 3]}), "invalid scale list"),
    (dict(model="tiny-var", settings={"scales": [1, 5]}), r"Scales \(scales\) must be one of 1, 2, 3, 4; got 5"),
    (dict(model="tiny-var", settings={"top_k": 99}), r"Top-k \(top_k\) must be from 0 to 32, got 99"),
    (dict(model="tiny-mar", settings={"num_steps": 65}), r"Steps \(num_steps\) must be from 1 to 64"),
    (dict(model="tiny-mar", settings={"num_steps": "abc"}), r"must be a whole number from 1 to 64, got 'abc'"),
    (dict(model="tiny-mar", settings={"temperature": "inf"}), r"Temperature \(temperature\) must be a number"),
    (dict(model="tiny-mar", settings={"steps": 8}), "has no setting 'steps'; it takes: num_steps"),
    (dict(model="tiny-mar", class_name="7"), "unknown class 7"),
    (dict(model="tiny-mar", class_name="x" * 5_000_000), r"unknown class 'x{80}… \(5000000 characters\)'"),
    (dict(model="tiny-var", num_images=9), "greater than maximum value 4"),  # the slider's own check
    (dict(model="tiny-var", seed=2 ** 64), r"seed must be a whole number from 0 to 2\^63 - 1"),
    (dict(model="tiny-var", seed=-1), r"seed must be a whole number from 0 to 2\^63 - 1"),
    (dict(model="tiny-mar-diffusion", settings={"num_steps": 17}), r"Steps \(num_steps\) must be from 1 to 16"),
    (dict(model="tiny-mar-diffusion", settings={"cfg": 0.5}), r"CFG \(cfg\) must be from 1 to 20"),
    (dict(model="tiny-mar-diffusion", settings={"num_sampling_steps": 1}), "must be from 2 to 1000"),
    (dict(model="/etc"), "neither a preset nor a Hub repo id"),
    (dict(model="no-such-preset"), "neither a preset nor a Hub repo id"),
    (dict(model="x" * 100_000), "a model name has at most 200 characters"),
    (dict(model="tiny-var", settings=[1, 2]), "settings must be a JSON object"),
])
def test_bad_inputs_come_back_as_readable_errors(client, kw, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        run(client, **kw)


def test_nan_by_raw_http_is_refused_before_work(app_url):
    """A raw HTTP call can send NaN (Python's json allows it); it is refused with the setting's message."""
    body = json.dumps({"data": ["tiny-var", "random", 0, False, 1, {"cfg": float("nan")}]}).encode()
    assert b"NaN" in body
    req = urllib.request.Request(app_url + "gradio_api/call/generate", body, {"Content-Type": "application/json"})
    event = json.loads(urllib.request.urlopen(req, timeout=30).read())["event_id"]
    with urllib.request.urlopen(f"{app_url}gradio_api/call/generate/{event}", timeout=60) as stream:
        text = stream.read().decode()
    assert "event: error" in text and "CFG (cfg) must be a number from 0 to 20, got nan" in text
    assert "done in" not in text


def test_local_folder_is_not_read_in_public_mode(client):
    """checkpoints/emoji-var exists and looks like org/name: in public mode it is asked of the Hub (unreachable
    here), never read from disk, and the message names no server path."""
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as e:
        run(client, model="checkpoints/emoji-var", seed=0)
    assert "could not reach the Hugging Face Hub" in str(e.value)
    assert "/work" not in str(e.value) and os.environ["HF_HOME"] not in str(e.value)


def test_empty_model_is_the_default_and_a_revision_is_a_hub_spec(client):
    """'' is the default model (not "a local path"); org/name@rev goes to the Hub like org/name."""
    from gradio_client.exceptions import AppError

    assert steps(run(client, model="", seed=0, settings={"num_steps": 2}))[-1].startswith("step 2/2")
    with pytest.raises(AppError, match="could not reach the Hugging Face Hub"):
        run(client, model="someone/some-model@v1.0", seed=0)


def test_hub_model_without_network_gives_the_loaders_message(client):
    """var-d16 is not cached and the Hub (HF_ENDPOINT: the fake Hub, not running here) cannot be reached."""
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="could not reach the Hugging Face Hub"):
        client.predict("var-d16", api_name="/select_model")
    assert len(steps(run(client, model="tiny-var", seed=0))) == 4  # and the app keeps working


def test_user_errors_print_no_traceback(app_url, capfd):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    capfd.readouterr()
    c = Client(app_url, download_files=False, verbose=False)
    with pytest.raises(AppError):
        run(c, model="tiny-mar", class_name="y" * 100_000)
    c.close()
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err and "y" * 200 not in out + err


def test_a_request_cannot_hold_the_generation_slot(client, monkeypatch):
    """Fair use: a run is stopped at EDIFICE_MAX_SECONDS (what it made is kept and offered), and settings the
    family can estimate beyond it are refused before any work, saying the limit."""
    from gradio_client.exceptions import AppError

    import app

    monkeypatch.setenv("EDIFICE_MAX_SECONDS", "0.3")
    outs = run(client, model="tiny-mar", seed=0, num_images=4, settings={"num_steps": 64})
    assert outs[-1][INFO].startswith("stopped at step ") and "this app allows 0.3 s per generation" in outs[-1][INFO]
    assert len(steps(outs)) < 64 and outs[-1][GIF] is not None and app.ACTIVE["runs"] == 0
    with pytest.raises(AppError, match=r"would take about .* this app allows 0.3 s per generation"):
        run(client, model="tiny-mar-diffusion", seed=0, settings={"num_steps": 16, "num_sampling_steps": 1000})


def test_disk_stays_bounded(app_url, client):
    """Every file the app writes lives in a run's folder, removed when the session's timeline drops the run;
    Gradio's cached copies expire (delete_cache); uploads are capped at 10 MB."""
    import app

    folders = []
    for seed in range(app.RUNS_PER_SESSION + 1):
        run(client, model="tiny-var", seed=seed)
        folders.append(app.TIMELINES.latest(client.session_hash)[0].folder)
    assert not folders[0].exists() and all(f.exists() for f in folders[1:])
    assert app.build_demo().delete_cache == (600, 3600)
    boundary = "edificeboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + b"0" * (11 * 2 ** 20) + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(app_url + "gradio_api/upload", body,
                                 {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 413


EXAMPLE = sorted((Path(__file__).resolve().parents[1] / "assets" / "examples").glob("*.png"))[0]


def test_edit_streams_with_a_region_or_a_painted_mask(client, tmp_path):
    """/edit takes an image (cropped and resized to the model's size) and a mask image or a named region, and
    streams like /generate; the kept tokens are the image's own (checked per family in test_editing.py)."""
    from gradio_client import handle_file

    import app

    outs = run(client, "/edit", model="tiny-var", class_name="2 · triangle", seed=0, image=handle_file(str(EXAMPLE)),
               region="all but the centre")
    assert [s.split(" · ")[0] for s in steps(outs)] == [f"scale {k}/4" for k in range(1, 5)]
    assert outs[1][INFO].startswith("editing with VAR") and "done in" in outs[-1][INFO]
    wide = Image.new("RGBA", (96, 64), (0, 0, 0, 0))  # not square: cropped to its centre like the image
    wide.paste((255, 0, 0, 255), (40, 20, 56, 44))
    wide.save(tmp_path / "mask.png")
    Image.open(EXAMPLE).convert("RGB").resize((96, 64)).save(tmp_path / "wide.png")
    outs = run(client, "/edit", model="tiny-mar", seed=1, image=handle_file(str(tmp_path / "wide.png")),
               mask=handle_file(str(tmp_path / "mask.png")), settings={"num_steps": 4})
    assert len(steps(outs)) == 4
    pipe = app.MODELS.get("tiny-mar")
    edit = app.edit_inputs(pipe, Image.open(tmp_path / "wide.png"), Image.open(tmp_path / "mask.png"), "painted")
    assert edit["image"].size == (32, 32) and edit["mask"].shape == (32, 32)
    rows, cols = np.nonzero(edit["mask"])  # the 16x24 px square at (40, 20) of 96x64, cropped by 16 and halved
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (10, 21, 12, 19)


@pytest.mark.parametrize("model, region, settings", [
    ("tiny-maskgit", "centre", {"num_steps": 4}),
    ("tiny-llamagen", "bottom half", {"preview_every": 16}),
    ("tiny-fractalgen", "centre", {"num_iter_0": 2, "num_iter_1": 2}),
    ("tiny-mar-diffusion", "all but the centre", {"num_steps": 4, "num_sampling_steps": 3}),
])
def test_every_family_edits_through_the_app(client, model, region, settings):
    from gradio_client import handle_file

    outs = run(client, "/edit", model=model, seed=0, image=handle_file(str(EXAMPLE)), region=region,
               settings=settings)
    assert steps(outs) and "done in" in outs[-1][INFO] and outs[1][INFO].startswith("editing with")


def test_a_family_that_cannot_edit_is_refused(client, monkeypatch):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    import app

    monkeypatch.setattr(type(app.MODELS.get("tiny-var")), "can_edit", False)
    with pytest.raises(AppError, match="VAR cannot edit images yet; pick a model whose family can"):
        run(client, "/edit", model="tiny-var", seed=0, image=handle_file(str(EXAMPLE)), region="centre")


@pytest.mark.parametrize("kw, message", [
    (dict(model="tiny-var", region="painted"), "upload an image to edit"),
    (dict(model="tiny-var", with_image=True, region="painted"), "nothing is painted"),
    (dict(model="tiny-var", with_image=True, region="middle"), "the region must be one of painted, centre"),
    (dict(model="tiny-llamagen", with_image=True, region="centre"),
     "LlamaGen generates tokens in raster order and cannot look ahead"),
])
def test_edit_refuses_before_any_work(client, kw, message):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    image = handle_file(str(EXAMPLE)) if kw.pop("with_image", False) else None
    with pytest.raises(AppError, match=message):
        run(client, "/edit", seed=0, image=image, **kw)


def test_compare_runs_both_on_one_queue(client):
    outs = run(client, "/compare", model_a="tiny-var", settings_a={"scales": [1, 2]}, model_b="tiny-mar",
               settings_b={"num_steps": 6}, class_name="1 · square", seed=3)
    status_a = [o[2] for o in outs if isinstance(o[2], str) and o[2]]
    status_b = [o[5] for o in outs if isinstance(o[5], str) and o[5]]
    assert [s.split(" · ")[0] for s in status_a] == ["scale 1/2", "scale 2/2"]
    assert [s.split(" · ")[0] for s in status_b] == [f"step {k}/6" for k in range(1, 7)]
    assert [r[0] for r in outs[-1][7]["data"]] == [1, 2, "total"] and len(outs[-1][8]["data"]) == 7


def test_compare_fractal_ar_with_mar_levels(client):
    """The seed note made visible: FractalGen with AR levels against MAR levels, same class and seed."""
    outs = run(client, "/compare", model_a="tiny-fractalar", settings_a=None, model_b="tiny-fractalgen",
               settings_b={"num_iter_0": 4, "num_iter_1": 2}, class_name="1 · class 1", seed=0)
    status_a = [o[2] for o in outs if isinstance(o[2], str) and o[2]]
    status_b = [o[5] for o in outs if isinstance(o[5], str) and o[5]]
    assert status_a and status_b and status_b[-1].startswith("L0 4/4")
    assert outs[-1][7] is not None and outs[-1][8] is not None


def test_cancel_stops_the_generator_and_the_next_run_works(client):
    import app

    job = client.submit(model="tiny-mar", seed=0, settings={"num_steps": 64}, api_name="/generate")
    while len(job.outputs()) < 4:
        time.sleep(0.01)
    job.cancel()
    deadline = time.time() + 10
    while app.ACTIVE["runs"] and time.time() < deadline:
        time.sleep(0.02)
    assert app.ACTIVE["runs"] == 0  # the generator's finally ran
    assert len(job.outputs()) < 64
    assert len(steps(run(client, model="tiny-var", seed=0))) == 4


def test_four_clients_at_once_all_finish(app_url):
    from gradio_client import Client

    def one(seed):
        c = Client(app_url, download_files=False, verbose=False)
        try:
            return len(steps(run(c, model="tiny-var" if seed % 2 else "tiny-mar", seed=seed,
                                 settings=None if seed % 2 else {"num_steps": 8})))
        finally:
            c.close()

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert sorted(pool.map(one, range(4))) == [4, 4, 8, 8]


@pytest.mark.parametrize("model, settings, records", [
    ("tiny-maskgit", {"num_steps": 4}, 4),
    ("tiny-llamagen", {"preview_every": 32}, 2),
    ("tiny-fractalgen", {"num_iter_0": 2, "num_iter_1": 2}, 2),
])
def test_every_family_plays_through_the_one_interface(client, model, settings, records):
    """The app names no family: the newer ones get their controls, stream, and fill the timeline like the rest."""
    import app

    shown = client.predict(model, api_name="/select_model")
    pipe = app.MODELS.get(model)
    assert shown[0].startswith(f"**{model}** · {pipe.family}")
    visible = [u["label"] for u in shown[3: 3 + len(app.slot_controls(pipe))] if u.get("visible")]
    defaults = {c.name: c.default for c in pipe.controls()}
    assert visible == [c.label for c in app.slot_controls(pipe) if c and c.shown(defaults)]
    outs = run(client, model=model, class_name="1 · class 1" if pipe.class_names is None else None, seed=0,
               num_images=2, settings=settings)
    assert len(steps(outs)) == records and "done in" in outs[-1][INFO]
    assert png(outs[-1]).shape == (pipe.image_size, 2 * pipe.image_size + 4, 3)


def test_only_the_chosen_samplers_settings_are_shown(client):
    """Halton-MaskGIT's two samplers have settings of their own: the page shows the chosen one's."""
    import app

    client.predict("tiny-maskgit", api_name="/select_model")
    controls = app.slot_controls(app.MODELS.get("tiny-maskgit"))
    values = [c.default if c is not None else None for c in controls]

    def shown(sampler):
        values[[c.name if c else None for c in controls].index("sampler")] = sampler
        return {c.name for c, u in zip(controls, app.slot_visibility("tiny-maskgit", values), strict=True)
                if u["visible"]}

    assert {"sm_temp_min", "temp_warmup"} <= shown("halton") and not {"r_temp", "sched_mode"} & shown("halton")
    assert {"r_temp", "sched_mode", "sm_temp"} <= shown("confidence") and "sm_temp_min" not in shown("confidence")
    assert {"num_steps", "cfg", "temperature"} <= shown("halton") & shown("confidence")


# -- the player, driven through its handlers (a browser session = a request's session_hash) --------------------
def test_timeline_scrub_play_and_stop_handlers(app_url):
    import app

    request = SimpleNamespace(session_hash="handlers")
    outs = list(app.generate_api("tiny-mar", "1 · square", 3, False, 2, {"num_steps": 6}, request, None))
    run_ = app.current_run(request)
    assert run_.done and len(run_.frames) == 6 and len(run_.images) == 6
    live, tokens, unc, status, numbers, timer = app.show_frame(3, request)
    assert status.startswith("step 3/6") and numbers.startswith("**step 3** of 6")
    assert np.array_equal(np.asarray(live), np.asarray(app.upscale(run_.images[2])))
    assert outs[-1][PNG].endswith(".png") and "done in" in outs[-1][INFO]
    *view, slider, _ = app.tick(3, request)  # play advances one step at a time
    assert view[3].startswith("step 4/6") and slider["value"] == 4
    *_, timer = app.tick(6, request)  # the end of a finished run stops the timer
    assert timer.active is False
    slider, timer = app.play(6, "0.5 s per step", request)  # Play at the end replays from the start
    assert slider["value"] == 0 and timer.active is True
    *view, slider, timer = app.tick(6, request)  # a tick sent before Play carries the old step: it must not stop
    assert view[3].startswith("step 1/6") and slider["value"] == 1 and timer == {"__type__": "update"}
    *view, slider, _ = app.tick(1, request)  # the next ticks go on from the timeline
    assert view[3].startswith("step 2/6") and slider["value"] == 2
    # Stop: the status says where, the timeline keeps what was made, the partial animation is offered
    gen = app.generate_api("tiny-mar", "1 · square", 3, False, 1, {"num_steps": 64}, request, None)
    for _ in range(6):
        next(gen)
    info, gif, webp, png_, timer = app.stop_run(request)
    assert info.startswith("stopped at step ") and "/64" in info and timer.active is False
    kept = len(app.current_run(request).frames)
    assert 1 <= kept < 64 and info == f"stopped at step {kept}/64 · the timeline keeps the {kept} made"
    with Image.open(gif) as animation:
        assert animation.n_frames == kept
    assert not any("done in" in str(o[INFO]) for o in gen)  # the run ends without finishing


def test_inspection_names_the_candidates_at_a_clicked_token(app_url):
    import app

    request = SimpleNamespace(session_hash="inspect")
    list(app.generate_api("tiny-var", "2 · triangle", 0, False, 2, None, request, None))
    run_ = app.current_run(request)
    frame = run_.frames[2]  # scale 3: a 3x3 map, 86 px tokens in a 256 px view, two images 4 px apart
    for (x, y), (b, row, col) in {(10, 10): (0, 0, 0), (200, 100): (0, 1, 2), (262 + 90, 180): (1, 2, 1)}.items():
        label, text = app.inspect_token(3, request, SimpleNamespace(index=[x, y]))
        info = frame.stats.inspect(b, row, col)
        assert label["value"] == info["candidates"] and len(info["candidates"]) == 8
        assert f"image {b + 1}, token ({row}, {col})** at scale 3" in text and f"drawn: **{info['drawn']}**" in text
        assert "after CFG and temperature, before top-k/top-p" in text
        probs = list(info["candidates"].values())
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert app.inspect_token(3, request, SimpleNamespace(index=[258, 10]))[1] == "Click inside a token map."


def test_timelines_are_bounded(monkeypatch):
    import app

    monkeypatch.setattr(app, "MAX_SESSIONS", 3)
    store = app.Timelines()
    runs = [store.start(f"s{i}", app.Run("m", "VAR", "scale", i, 1)) for i in range(5)]
    assert list(store.sessions) == ["s2", "s3", "s4"]  # the oldest sessions go first
    for _ in range(5):
        store.start("s4", app.Run("m", "VAR", "scale", 0, 1))
    assert len(store.latest("s4", 10)) == app.RUNS_PER_SESSION
    big = store.latest("s2")[0]
    big.bytes = 2 * 256 * 1024 * 3  # as two stored 256 px images of a 4-image batch
    monkeypatch.setattr(app, "TIMELINE_BYTES", big.nbytes() - 1)
    store.trim()
    assert "s2" not in store.sessions and "s4" in store.sessions and runs[4] not in store.latest("s4", 10)


# -- a real browser -------------------------------------------------------------------------------------------
needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                    reason="Debian chromium is not installed (.ci/run installs it)")


@contextlib.contextmanager
def browser_page(app_url, width: int = 1366, height: int = 768, model: str | None = None):
    """A chromium page on the app, loaded (its default model's controls shown), optionally another model."""
    from playwright.sync_api import sync_playwright

    RESULTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(app_url)
        page.locator("#model-info", has_text="tiny-mar · MAR (discrete)").wait_for()
        if model:
            pick_model(page, model)
            page.locator("#model-info", has_text=f"{model} · ").wait_for()  # the switch is done, its settings shown
        yield page
        browser.close()


def pick_model(page, model: str):
    box = page.get_by_label("Model")
    box.fill(model)
    box.press("Enter")


def status_of(page, elem="#status") -> str:
    return page.locator(f"{elem} textarea").input_value()


def wait_done(page, timeout=60_000):
    page.wait_for_function("() => document.querySelector('#run-info').innerText.includes('done in')",
                           timeout=timeout, polling=20)


@needs_chromium
def test_browser_generate_stop_and_live_fit_a_small_screen(app_url):
    """At 1366x768 Generate, Stop and the live image are all visible without scrolling; a run streams frames;
    Stop says where it stopped, keeps the timeline and offers the partial animation."""
    with browser_page(app_url) as page:
        for name in ("Generate", "Stop"):
            box = page.get_by_role("button", name=name).bounding_box()
            assert box["y"] + box["height"] <= 768, name
        live = page.locator("#live")
        assert live.bounding_box()["y"] + live.bounding_box()["height"] <= 768
        steps_box = page.get_by_label("Steps").first
        steps_box.fill("64")
        steps_box.press("Enter")
        page.get_by_role("button", name="Generate").click()
        frames = set()
        deadline = time.time() + 60
        while "done in" not in page.locator("#run-info").inner_text() and time.time() < deadline:
            if page.locator("#live img").count():
                frames.add(page.locator("#live img").first.get_attribute("src"))
            page.wait_for_timeout(20)
        assert status_of(page).startswith("step 64/64 · 64/64 revealed")
        assert len(frames) >= 3, f"saw {len(frames)} distinct live frames"
        page.screenshot(path=str(RESULTS / "app.png"))

        # a run slow enough to stop on any machine: MAR with diffusion head at 1000 diffusion steps
        pick_model(page, "tiny-mar-diffusion")
        page.locator("#model-info", has_text="tiny-mar-diffusion · ").wait_for()
        for label, value in (("Diffusion steps", "1000"), ("Steps", "16")):
            box = page.get_by_label(label, exact=True).first
            box.fill(value)
            box.press("Enter")
        page.get_by_role("button", name="Generate").click()
        page.wait_for_function("""() => {  // the second run is under way: step 2 or later, not done
            const m = document.querySelector('#status textarea').value.match(/^step (\\d+)\\/16 /);
            return m && +m[1] >= 2 && !document.querySelector('#run-info').innerText.includes('done');
        }""", timeout=60_000, polling=10)
        page.get_by_role("button", name="Stop").click()
        page.get_by_text("stopped at step").wait_for(timeout=10_000)
        info = page.locator("#run-info").inner_text()
        kept = int(info.split("/")[0].rsplit(" ", 1)[-1])
        assert 1 <= kept < 16 and f"keeps the {kept} made" in info
        page.locator("a[href*='-stopped.gif']").first.wait_for(timeout=10_000)  # the partial animation is offered
        page.wait_for_timeout(500)
        assert int(page.locator("#timeline input[type=number]").input_value()) <= kept


@needs_chromium
def test_browser_scrub_click_token_and_gallery(app_url):
    """After a run: the timeline's number box moves the live image, status and token view to that step; a click
    on a token shows the candidates; a click on a filmstrip frame moves the timeline there."""
    import app

    with browser_page(app_url, 1400, 1100) as page:
        page.get_by_role("button", name="Generate").click()
        wait_done(page)
        final_src = page.locator("#live img").get_attribute("src")
        number = page.locator("#timeline input[type=number]")
        number.fill("3")
        number.press("Enter")
        page.wait_for_function("() => document.querySelector('#status textarea').value.startsWith('step 3/8')",
                               timeout=10_000)
        page.wait_for_function(f"() => document.querySelector('#live img').src !== {json.dumps(final_src)}",
                               timeout=10_000)
        shown = np.asarray(Image.open(urllib.request.urlopen(page.locator("#live img").get_attribute("src"))))
        frame3 = [r for rs in app.TIMELINES.sessions.values() for r in rs if len(r.frames) == 8 and r.done]
        assert any(np.array_equal(shown, np.asarray(app.upscale(r.images[2]))) for r in frame3)
        img = page.locator("#tokens img")
        box = img.bounding_box()
        img.click(position={"x": box["width"] * 0.6, "y": box["height"] * 0.3})
        page.get_by_text("drawn: ").first.wait_for(timeout=10_000)
        assert "at step 3" in page.locator("#picked").inner_text()
        assert page.locator("#candidates").get_by_text("code ").count() >= 3
        page.screenshot(path=str(RESULTS / "app-inspect.png"), full_page=True)
        page.locator("#filmstrip .thumbnail-item").nth(5).click()
        page.wait_for_function("() => document.querySelector('#status textarea').value.startsWith('step 6/8')",
                               timeout=10_000)


@needs_chromium
def test_browser_steps_above_the_maximum_get_one_message_and_no_run(app_url):
    with browser_page(app_url, 1366, 900) as page:
        box = page.get_by_label("Steps").first
        box.fill("70")
        box.press("Enter")
        page.get_by_role("button", name="Generate").click()
        page.get_by_text("Steps (num_steps) must be from 1 to 64, got 70").first.wait_for(timeout=15_000)
        page.wait_for_timeout(1000)
        assert status_of(page) == "" and page.locator("#live img").count() == 0
        # the same message inline under the settings (said as soon as it was typed) and in the error; no other
        assert "Steps (num_steps) must be from 1 to 64, got 70" in page.locator("#settings-note").inner_text()
        assert page.get_by_text("must be from 1 to").count() == 2


@needs_chromium
def test_browser_watch_speed_shows_every_step_of_a_fast_run(app_url):
    """tiny-var computes its 4 scales in a fraction of a second; at 0.5 s per step the page shows each one."""
    with browser_page(app_url, 1400, 1000, model="tiny-var") as page:
        speed = page.get_by_label("Watch speed")
        speed.click()
        page.get_by_role("option", name="0.5 s per step").click()
        page.get_by_role("button", name="Generate").click()
        seen, deadline = [], time.time() + 30
        while len(seen) < 4 and time.time() < deadline:
            s = status_of(page).split(" · ")[0]
            if s and (not seen or seen[-1] != s):
                seen.append(s)
            page.wait_for_timeout(30)
        assert seen == ["scale 1/4", "scale 2/4", "scale 3/4", "scale 4/4"]
        page.get_by_role("button", name="Play").click()  # replay from the start
        page.wait_for_function("() => document.querySelector('#status textarea').value.startsWith('scale 1/4')",
                               timeout=10_000, polling=20)


@needs_chromium
def test_browser_generate_during_a_model_switch_says_to_wait(app_url, monkeypatch):
    """Generate pressed while another model loads would send the previous model's settings (tiny-mar's steps as
    tiny-var's scales): the page says to wait instead; once the new settings show, Generate runs."""
    import app

    load = app.load

    def slow_load(spec, *args):
        if spec == "tiny-var":
            time.sleep(2)
        return load(spec, *args)

    monkeypatch.setattr(app, "load", slow_load)
    with browser_page(app_url, 1400, 1000) as page:
        pick_model(page, "tiny-var")
        page.get_by_role("button", name="Generate").click()
        page.get_by_text("The settings shown are still those of tiny-mar, not tiny-var").first.wait_for(timeout=10_000)
        assert status_of(page) == ""
        page.locator("#model-info", has_text="tiny-var · ").wait_for()
        page.get_by_role("button", name="Generate").click()
        wait_done(page)
        assert status_of(page).startswith("scale 4/4")


@needs_chromium
def test_browser_paint_a_mask_and_watch_the_edit(app_url):
    """Edit tab: take an example, paint a stroke with the brush, press Edit: the edit streams in the player."""
    with browser_page(app_url, 1366, 1000, model="tiny-var") as page:
        page.get_by_role("tab", name="Edit").click()
        page.locator("tr", has=page.locator("img")).nth(1).click()  # the first example into the editor
        page.wait_for_timeout(1500)
        box = page.locator("#editor canvas").first.bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.45)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.55, box["y"] + box["height"] * 0.55, steps=10)
        page.mouse.up()
        page.get_by_role("button", name="Edit", exact=True).click()
        wait_done(page)
        assert status_of(page).startswith("scale 4/4") and page.locator("#live img").count() == 1
        assert "editing" not in page.locator("#run-info").inner_text()
        page.screenshot(path=str(RESULTS / "app-edit.png"))


@needs_chromium
def test_browser_compare_two_settings(app_url):
    with browser_page(app_url, 1400, 1100, model="tiny-var") as page:
        page.get_by_role("tab", name="Compare").click()
        page.get_by_role("button", name="Use these settings as run A").click()
        page.get_by_text("scales=[1, 2, 3, 4]").first.wait_for(timeout=10_000)
        page.get_by_role("checkbox", name="3").uncheck()  # run B: scales 1, 2, 4
        page.get_by_role("button", name="Compare", exact=True).click()
        page.wait_for_function("() => document.querySelector('#status-b textarea').value.startsWith('scale 3/3')",
                               timeout=60_000, polling=20)
        assert status_of(page, "#status-a").startswith("scale 4/4")
        # the stream's last message sets the timeline to 100 %; typing before it lands would append to "100"
        page.wait_for_function("() => document.querySelector('#compare-progress input[type=number]').value === '100'",
                               timeout=10_000, polling=20)
        number = page.locator("#compare-progress input[type=number]")
        number.fill("50")
        assert number.input_value() == "50"
        number.press("Enter")
        page.wait_for_function("() => document.querySelector('#status-a textarea').value.startsWith('scale 2/4')",
                               timeout=10_000, polling=20)
        assert status_of(page, "#status-b").startswith("scale 2/3")
        page.screenshot(path=str(RESULTS / "app-compare.png"), full_page=True)
