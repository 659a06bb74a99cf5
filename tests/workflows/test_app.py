"""The web app (``simzss-app``): its requests on bad input, and the page driven in a real browser.

The browser test starts the app on a free local port with the demo's quick model (trained once per test
session, cached in pytest's temporary folder) and drives Debian's headless Chromium with Playwright; nothing is
downloaded. It saves a screenshot under its temporary folder (docs/app.png is one of those).
"""
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from open_clip_simzss.workflows import app as web
from open_clip_simzss.workflows import synthetic
from open_clip_simzss.cli.app import main

pytestmark = pytest.mark.slow  # processes, training or installs (make test-fast leaves it out)

CHROMIUM = "/usr/bin/chromium"
ENABLE = ("apt-get install -y chromium && pip install 'open_clip_simzss[app]' playwright")


@pytest.fixture(scope="session")
def demo_model(quick_demo) -> web.EmbeddedModel:
    """The demo's quick SimZSS model (the session's quick demo, tests/conftest.py), found through the app's own
    default path: without a demo output folder, the model cached in the user's cache folder."""
    cache = quick_demo.parent  # $XDG_CACHE_HOME/open_clip_simzss
    return web.embedded_model(demo_output=cache / "no-demo-here", cache_dir=cache, log=lambda line: None)


@pytest.fixture(scope="module")
def segment_app(demo_model, tmp_path_factory):
    from open_clip_simzss.weights.load import load_model, load_tokenizer
    model, _ = load_model(demo_model.model, str(demo_model.checkpoint), device="cpu")
    return web.SegmentApp(model, load_tokenizer(model), tmp_path_factory.mktemp("app-out"), demo_model.description,
                          demo_model.protocol, examples=web.example_scenes(demo_model.scenes))


def scene(path: Path, index: int = 3, size: int = 224):
    """A held-out synthetic scene (the demo's evaluation seed) as a PNG: (labels text, ground truth)."""
    image, truth, _, _ = synthetic.make_scene(index, seed=20_000, size=size)
    Image.fromarray(image).save(path)
    names = [synthetic.CATEGORIES[i].name for i in np.unique(truth)]
    return ", ".join(names), truth


# --- requests, without a browser ---------------------------------------------------------------------------------
def test_request_writes_its_files_under_the_output_folder_only(segment_app, tmp_path):
    labels, truth = scene(tmp_path / "scene.png")
    before = set(tmp_path.iterdir())
    result = segment_app.segment(str(tmp_path / "scene.png"), labels)
    assert set(tmp_path.iterdir()) == before
    assert result.folder.parent == segment_app.requests_dir
    for path in (result.overlay, result.label_map, result.report, result.similarity, result.pca):
        assert path.parent == result.folder and path.stat().st_size > 0
    label_map = np.asarray(Image.open(result.label_map))
    assert label_map.shape == truth.shape
    assert result.labels == labels.split(", ")
    assert abs(sum(result.shares) - 1) < 1e-4
    assert [int((label_map == i).sum()) for i in range(len(result.labels))] == result.pixels
    # better than guessing: the quick model's pixel accuracy on a scene clearly above 1 / number of labels
    category = np.array([[c.name for c in synthetic.CATEGORIES].index(n) for n in result.labels])
    predicted = category[label_map]
    assert (predicted == truth).mean() > 1.2 / len(result.labels)


@pytest.mark.parametrize("image, labels, message", [
    (None, "cat", "Upload an image first"),
    ("scene", "", "Type at least one label"),
    ("scene", " , ,", "Type at least one label"),
    ("scene", ", ".join(f"thing {i}" for i in range(500)), "500 labels given; the app takes at most 64"),
    ("scene", "cat, Cat", "given twice"),
    ("text", "cat", "not an image this app can read"),
    ("truncated", "cat", "damaged or truncated"),
])
def test_bad_input_is_one_sentence_and_writes_nothing(segment_app, tmp_path, image, labels, message):
    scene(tmp_path / "scene.png")
    (tmp_path / "text.png").write_text("not an image\n")
    (tmp_path / "truncated.png").write_bytes((tmp_path / "scene.png").read_bytes()[:300])
    requests = set(segment_app.requests_dir.iterdir())
    with pytest.raises(web.InputError, match=message) as error:
        segment_app.segment(str(tmp_path / f"{image}.png") if image else None, labels)
    assert "\n" not in str(error.value) and str(error.value).endswith(".")
    assert set(segment_app.requests_dir.iterdir()) == requests


def test_huge_image_and_background_label_are_refused(segment_app, tmp_path, monkeypatch):
    labels, _ = scene(tmp_path / "scene.png")
    monkeypatch.setattr(web, "MAX_PIXELS", 200 * 200)
    with pytest.raises(web.InputError, match="224x224 pixels; the app takes up to"):
        segment_app.segment(str(tmp_path / "scene.png"), labels)
    monkeypatch.undo()
    with pytest.raises(web.InputError, match="remove the label \"background\""):
        segment_app.segment(str(tmp_path / "scene.png"), labels + ", background", background=True)
    result = segment_app.segment(str(tmp_path / "scene.png"), labels, background=True, threshold=0.0)
    assert result.labels[0] == "background" and result.pixels[0] == 0  # threshold 0: nothing is background
    requests = set(segment_app.requests_dir.iterdir())
    for options, message in ((dict(threshold=1.5), "The background threshold must be a finite number >= 0 and <= 1"),
                             (dict(threshold=float("nan")), "The background threshold must be a finite number"),
                             (dict(background_score="logit"), "The background score must be one of sigmoid")):
        with pytest.raises(web.InputError, match=message) as error:
            segment_app.segment(str(tmp_path / "scene.png"), labels, background=True, **options)
        assert "\n" not in str(error.value) and str(error.value).endswith(".")
    assert set(segment_app.requests_dir.iterdir()) == requests  # refused before any work


def test_labels_file_is_read_with_comments(segment_app, tmp_path):
    labels, _ = scene(tmp_path / "scene.png")
    first, *rest = labels.split(", ")
    (tmp_path / "labels.txt").write_text("# labels\n" + "\n".join(rest) + "  # the rest\n")
    result = segment_app.segment(str(tmp_path / "scene.png"), first, str(tmp_path / "labels.txt"))
    assert result.labels == [first, *rest]


def test_command_line_bad_input_is_one_line(capsys, tmp_path):
    pytest.importorskip("gradio", reason=f"simzss-app needs the [app] extra: {ENABLE}")
    assert main(["--checkpoint", str(tmp_path / "missing.pt"), "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: checkpoint not found") and "\n" not in err
    assert main(["--port", "0"]) == 2
    assert "--port must be positive" in capsys.readouterr().err


# --- the page in a real browser ----------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(demo_model, tmp_path_factory):
    if not (importlib.util.find_spec("playwright") and importlib.util.find_spec("gradio") and Path(CHROMIUM).exists()):
        pytest.skip(f"the browser test needs Chromium, Gradio and Playwright: {ENABLE}")
    root = tmp_path_factory.mktemp("app-server")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADIO_")}
    env.update(HF_HUB_OFFLINE="1", XDG_CACHE_HOME=str(root / "xdg"), MPLCONFIGDIR=str(root / "mpl"))
    log = open(root / "server.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "open_clip_simzss", "app", "--demo-output", str(demo_model.checkpoint.parents[3]),
         "--port", str(port), "--output-dir", str(root / "out"), "--device", "cpu"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                pytest.fail("the app did not start:\n" + (root / "server.log").read_text()[-2000:])
            time.sleep(0.5)
    yield url, root / "out"
    process.terminate()
    process.wait(timeout=30)
    log.close()


def _segment(page, labels: str, outcome: str):
    page.fill("#labels textarea", labels)
    page.click("#segment")
    page.wait_for_selector(f"#status #{outcome}", timeout=120_000)


def test_browser_segments_a_scene_and_recovers_from_an_error(server, tmp_path, request):
    from playwright.sync_api import sync_playwright

    url, out = server
    labels, truth = scene(tmp_path / "scene.png")
    names = labels.split(", ")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.wait_for_selector("#segment")
            assert "the demo's quick SimZSS" in page.inner_text("body")  # the page says which model is used
            page.set_input_files("#input-image input[type=file]", str(tmp_path / "scene.png"))
            page.wait_for_selector("#input-image img")
            _segment(page, labels, "status-ok")
            page.wait_for_selector("#overlay img")
            # the overlay is the picture the request wrote (image + legend panel), shown at its own size
            overlays = sorted(out.glob("requests/*/segmentation_overlay.png"))
            assert len(overlays) == 1
            natural = page.eval_on_selector("#overlay img", "img => [img.naturalWidth, img.naturalHeight]")
            assert tuple(natural) == Image.open(overlays[0]).size
            assert natural[1] == truth.shape[0] and natural[0] > truth.shape[1]
            assert list(out.glob("uploads/**/scene.png"))  # the upload stayed under the output folder
            legend = page.locator("#legend .legend-label").all_inner_texts()
            assert sorted(legend) == sorted(names)
            shares = [float(re.sub(r"[^\d.]", "", s)) for s in page.locator("#legend .legend-share").all_inner_texts()]
            assert abs(sum(shares) - 100) < 0.5, shares
            assert page.locator("#similarity img").count() == 1 and page.locator("#pca img").count() == 1
            screenshot = tmp_path / "app.png"
            page.screenshot(path=str(screenshot), full_page=True)
            print(f"screenshot: {screenshot}")

            _segment(page, "", "status-error")
            assert "Type at least one label" in page.inner_text("#status")
            assert page.locator("#legend .legend-label").count() == 0

            _segment(page, labels, "status-ok")  # the app is still responsive
            assert sorted(page.locator("#legend .legend-label").all_inner_texts()) == sorted(names)
            assert len(list(out.glob("requests/*/segmentation_overlay.png"))) == 2
        finally:
            browser.close()
    if os.environ.get("SIMZSS_UPDATE_SCREENSHOT"):
        shutil.copy(screenshot, Path(__file__).parents[2] / "docs" / "app.png")
