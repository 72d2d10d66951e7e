"""tools/app.py: trimap sources and brush strokes (no Gradio needed), then the real server driven by
a headless Chromium (Playwright) and by gradio_client, checked against core/test.py's mattes.

``DIM_APP_SCREENSHOT=result/figures/app.png pytest tests/test_app.py`` also refreshes the
screenshot of the page in docs/app.md.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from reference_impl import init_unsaturated  # noqa: E402

from core import test as test_mod  # noqa: E402
from core.checkpoint import save_checkpoint  # noqa: E402
from core.network import DIMNet  # noqa: E402
from core.utils import UserError, run_cli  # noqa: E402
from tools import app  # noqa: E402
from core.trimap import trimap_from_mask  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "result" / "example"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
MAX_SIZE = 160  # the app's and core/test.py's --max_size: whole mode runs the network at 160×160


# --------------------------------------------------------------------------- #
# Trimaps, strokes, modes (pure functions)
# --------------------------------------------------------------------------- #
def disc_mask(h=60, w=80, r=20):
    yy, xx = np.mgrid[:h, :w]
    return np.where(np.hypot(yy - h / 2, xx - w / 2) < r, 255, 0).astype(np.uint8)


def test_automatic_trimap_sources():
    mask = disc_mask()
    rgb = np.full((60, 80, 3), 90, np.uint8)
    rgba = np.dstack([rgb, mask])
    band = trimap_from_mask(mask, 3)
    # auto: the photo's alpha channel; width 0 = 1 % of the diagonal (100 px → 1 px)
    trimap, note = app.automatic_trimap(rgba, None, app.AUTO, width=3)
    np.testing.assert_array_equal(trimap, band)
    assert note == "the photo's alpha channel, band 3 px"
    np.testing.assert_array_equal(app.automatic_trimap(rgba, None, app.ALPHA, 0)[0], trimap_from_mask(mask, 1))
    # an uploaded trimap is used as it is (auto prefers it to the alpha channel); a mask gets the band
    np.testing.assert_array_equal(app.automatic_trimap(rgba, band, app.AUTO, 9)[0], band)
    assert app.automatic_trimap(rgb, band, app.UPLOAD, 9)[1] == "the uploaded trimap"
    np.testing.assert_array_equal(app.automatic_trimap(rgb, mask, app.AUTO, 3)[0], band)
    with pytest.raises(UserError, match=r"^photo a.png has no alpha channel: upload a mask or trimap"):
        app.automatic_trimap(rgb, None, app.ALPHA, name="photo a.png")
    with pytest.raises(UserError, match=r"^the mask or trimap is 40×60 but photo is 80×60$"):
        app.automatic_trimap(rgb, band[:, :40], app.UPLOAD)
    with pytest.raises(UserError, match="the mask is empty"):
        app.automatic_trimap(rgb, np.zeros((60, 80), np.uint8), app.UPLOAD)
    with pytest.raises(UserError, match=r"^no segmenter on this server: upload a mask or trimap$"):
        app.automatic_trimap(rgb, None, app.AUTO)  # no alpha, no upload: the segmenter, and there is none


def test_automatic_trimap_from_the_segmenter():
    """Auto falls back to the segmenter for a photo without alpha or upload."""
    mask, seen = disc_mask(), []

    class FakeSegmenter:
        name = "fake"

        def __call__(self, bgr):
            seen.append(bgr.shape)
            return mask

    trimap, note = app.automatic_trimap(np.full((60, 80), 90, np.uint8), None, app.AUTO, width=3,
                                        segmenter=FakeSegmenter())
    np.testing.assert_array_equal(trimap, trimap_from_mask(mask, 3))
    assert note == "the segmenter (fake), band 3 px" and seen == [(60, 80, 3)]  # a grey photo is given as BGR
    assert app.SEGMENTER in app.trimap_sources()


def test_apply_strokes_paints_the_nearest_brush_value():
    trimap = np.full((4, 6), 128, np.uint8)
    layer = np.zeros((4, 6, 4), np.uint8)
    layer[0, :2] = (255, 255, 255, 255)  # foreground brush
    layer[1, :2] = (128, 128, 128, 255)  # unknown brush, over a background pixel below
    layer[2, :2] = (10, 0, 0, 200)       # background brush (anti-aliased colour)
    layer[3, :2] = (255, 255, 255, 100)  # a faint stroke edge: not painted
    base = trimap.copy()
    base[1, :2] = 0
    out = app.apply_strokes(base, [layer])
    expected = base.copy()
    expected[0, :2], expected[1, :2], expected[2, :2] = 255, 128, 0
    np.testing.assert_array_equal(out, expected)
    assert (base[1, :2] == 0).all()  # the input is not changed
    big = cv2.resize(layer, (12, 8), interpolation=cv2.INTER_NEAREST)  # a canvas twice the size
    np.testing.assert_array_equal(app.apply_strokes(base, [big, None]), expected)
    np.testing.assert_array_equal(app.apply_strokes(base, None), base)


def test_modes_and_request_checks():
    assert app.choose_mode("auto", 160, 100, 160) == "whole"
    assert app.choose_mode("auto", 161, 100, 160) == "tile"
    assert app.choose_mode("whole", 4000, 3000, 160) == "whole"
    image, trimap = np.zeros((40, 50, 3), np.uint8), np.full((40, 50), 128, np.uint8)
    app.check_request(image, trimap, "whole", 10_000)
    for args, message in (
            ((image, trimap[:, :30], "whole", 10_000), r"^the trimap is 30×40 but the photo is 50×40$"),
            ((image, trimap, "tile", 1_000), r"^the photo is 50×40 \(0.0 MP\); this server takes at most 0.0 MP "
                                             r"in tile mode \(--max_megapixels\)$"),
            ((image[:31], trimap[:31], "whole", 10_000), "^the photo is too small for whole mode: image of 50×31"),
            ((image, np.where(trimap == 128, 0, 255).astype(np.uint8), "whole", 10_000),
             r"^the trimap has no unknown \(128\) pixels")):
        with pytest.raises(UserError, match=message):
            app.check_request(*args)


def test_page_colour_from_background_flag():
    assert app.page_colour(None) is None
    assert app.page_colour(["green"]) == "#00ff00"
    assert app.page_colour("32,128,255") == "#2080ff"
    with pytest.raises(UserError, match=r"^--background 'beach.jpg': the page takes a colour"):
        app.page_colour(["beach.jpg"])
    with pytest.raises(UserError, match="^the page takes one --background colour$"):
        app.page_colour(["white", "black"])


def test_without_gradio_one_line_install_hint(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ImportError
    monkeypatch.setenv("GRADIO_TEMP_DIR", "unchanged")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(SystemExit) as exc:
        run_cli(app.main, ["--resume", "missing.pth"])
    assert exc.value.code == 2
    assert capsys.readouterr().err == f"error: {app.INSTALL_HINT}\n"
    assert os.listdir(tmp_path) == []  # its temporary folder is gone again


# --------------------------------------------------------------------------- #
# The server, a browser and gradio_client
# --------------------------------------------------------------------------- #
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """tools/app.py on a free loopback port with a small deterministic checkpoint: (url, checkpoint)."""
    pytest.importorskip("gradio", reason="gradio is not installed (pip install -r requirements-optional.txt)")
    root = tmp_path_factory.mktemp("app")
    ckpt = root / "random_stage1.pth"
    save_checkpoint(ckpt, init_unsaturated(DIMNet(refine=False, skip=True, conv6_kernel=3), seed=5), epoch=3,
                    best_sad=None)
    port = free_port()
    log = open(root / "app.log", "w+")
    proc = subprocess.Popen([sys.executable, str(REPO / "tools" / "app.py"), "--resume", str(ckpt), "--port",
                             str(port), "--max_size", str(MAX_SIZE), "--fg_backend", "numpy"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                log.seek(0)
                pytest.fail(f"the app did not start:\n{log.read()}")
            time.sleep(0.3)
    yield url, ckpt, root
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    log.seek(0)
    text = log.read()
    # every rejected upload and request was one log line, none a traceback; the banner names --share
    assert "Traceback" not in text and "share=True" not in text, text
    assert "for a public link, start it with --share" in text
    temp = text.split("temporary files in ")[1].split(" ")[0]
    assert not os.path.exists(temp), text  # uploads and results were removed on exit
    log.close()


def core_test_matte(tmp_path, ckpt, image, trimap, mode="whole"):
    """The matte file core/test.py writes for one photo/trimap pair (bytes)."""
    for kind, src in (("image", image), ("trimap", trimap)):
        (tmp_path / kind).mkdir(parents=True)
        shutil.copy(src, tmp_path / kind / Path(image).name)
    with pytest.raises(SystemExit) as exc:
        run_cli(test_mod.main, ["--imgDir", str(tmp_path / "image"), "--trimapDir", str(tmp_path / "trimap"),
                                "--saveDir", str(tmp_path / "out"), "--resume", str(ckpt), "--crop_or_resize", mode,
                                "--max_size", str(MAX_SIZE)])
    assert exc.value.code == 0
    return (tmp_path / "out" / (Path(image).stem + ".png")).read_bytes()


def test_page_in_a_headless_browser(server, tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (apt-get install -y chromium)")
    sync_playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright").sync_playwright
    url, ckpt, _ = server
    photo, trimap = EXAMPLE / "image" / "synthetic_01.png", EXAMPLE / "trimap" / "synthetic_01.png"
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")
    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900}, accept_downloads=True)
        try:
            page = browser.new_page()
            page.goto(url)
            message = page.locator("#message")
            # a bad file: a message in the page, no server path in it
            page.locator("#photo input[type=file]").set_input_files(str(not_an_image))
            page.get_by_text("not a readable image").wait_for(timeout=20_000)
            assert message.inner_text() == "⚠ photo notes.png: not a readable image (corrupt or unsupported format)"
            # the example trimap, then its photo: one trimap under the brush (a second would drop strokes)
            page.locator("#photo button[aria-label='Clear']").click()
            page.locator("#upload input[type=file]").set_input_files(str(trimap))
            page.locator("#photo input[type=file]").set_input_files(str(photo))
            page.get_by_text("Trimap from the uploaded trimap.").wait_for(timeout=20_000)
            canvas = page.locator("#editor canvas").first
            wait_for_canvas(canvas, lambda img: img.std() > 20)  # the photo is drawn: strokes stay
            box = canvas.bounding_box()
            x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            page.mouse.move(x - 60, y)  # a foreground (white) stroke across the middle
            page.mouse.down()
            page.mouse.move(x + 60, y, steps=8)
            page.mouse.up()
            h, w = int(box["height"]) // 2, int(box["width"]) // 2
            wait_for_canvas(canvas, lambda img: (img[h - 1:h + 2, w - 50:w + 50] >= 245).all())
            page.locator("#mode").get_by_text("whole").click()
            page.locator("#predict").click()
            page.get_by_text("Predicted in whole mode.").wait_for(timeout=60_000)
            downloads = {}
            for name in ("matte", "trimap", "rgba"):
                with page.expect_download() as info:
                    page.locator(f"#{name}-file a").first.click()
                downloads[name] = tmp_path / f"{name}.png"
                info.value.save_as(downloads[name])
            shot = tmp_path / "page.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    painted = cv2.imread(str(downloads["trimap"]), cv2.IMREAD_UNCHANGED)
    uploaded = cv2.imread(str(trimap), cv2.IMREAD_UNCHANGED)
    changed = painted != uploaded
    assert changed.sum() > 100 and (painted[changed] == 255).all()  # the stroke, in foreground
    ys, xs = np.nonzero(changed)
    assert abs(ys.min() + ys.max() - 240) < 30 and abs(xs.min() + xs.max() - 320) < 30  # in the middle
    assert np.ptp(xs) > 2 * np.ptp(ys)  # a horizontal stroke
    expected = core_test_matte(tmp_path / "test_py", ckpt, photo, downloads["trimap"])
    assert downloads["matte"].read_bytes() == expected
    rgba = cv2.imread(str(downloads["rgba"]), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(rgba[:, :, 3], cv2.imread(str(downloads["matte"]), cv2.IMREAD_UNCHANGED))
    save_screenshot(shot)


def wait_for_canvas(canvas, shows, timeout=60):
    """Wait until ``shows(BGR screenshot of canvas)`` holds on two screenshots in a row."""
    deadline, before = time.monotonic() + timeout, False
    while True:
        img = cv2.imdecode(np.frombuffer(canvas.screenshot(), np.uint8), cv2.IMREAD_COLOR)
        now = bool(shows(img))
        if now and before:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"the image editor did not show what was expected (canvas {img.shape[1]}×{img.shape[0]}, "
                        f"std {img.std():.1f}, {np.count_nonzero((img >= 245).all(axis=2))} white pixels)")
        before = now
        time.sleep(0.2)


def save_screenshot(shot):
    """With DIM_APP_SCREENSHOT=path: the page at 800 px wide, a small PNG for docs/app.md."""
    target = os.environ.get("DIM_APP_SCREENSHOT")
    if target:
        img = cv2.imread(str(shot))
        scale = 800 / img.shape[1]
        small = cv2.resize(img, (800, round(img.shape[0] * scale)), interpolation=cv2.INTER_AREA)
        cv2.imwrite(target, small, [cv2.IMWRITE_PNG_COMPRESSION, 9])


def test_predict_endpoint_with_gradio_client(server, tmp_path):
    gradio_client = pytest.importorskip("gradio_client", reason="pip install gradio_client")
    url, ckpt, _ = server
    photo, trimap = EXAMPLE / "image" / "synthetic_02.png", EXAMPLE / "trimap" / "synthetic_02.png"
    client = gradio_client.Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), cv2.imread(str(trimap))[:48, :64])
    with pytest.raises(gradio_client.exceptions.AppError, match=r"^the trimap is 64×48 but the photo is 320×240$"):
        client.predict(gradio_client.handle_file(str(photo)), gradio_client.handle_file(str(small)), "whole",
                       api_name="/predict")
    # a 0/255 mask passed as the trimap: told what it is and where it goes (an API caller has no brush)
    mask = tmp_path / "mask.png"
    cv2.imwrite(str(mask), np.where(cv2.imread(str(trimap), cv2.IMREAD_GRAYSCALE) > 0, 255, 0).astype(np.uint8))
    with pytest.raises(gradio_client.exceptions.AppError, match=r"^the trimap holds only 0 and 255: that is a mask, "
                       r"not a trimap; make a trimap of it with `python tools/gen_trimap.py"):
        client.predict(gradio_client.handle_file(str(photo)), gradio_client.handle_file(str(mask)), "whole",
                       api_name="/predict")
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")
    with pytest.raises(gradio_client.exceptions.AppError, match=r"^photo notes.png: not a readable image"):
        client.predict(gradio_client.handle_file(str(not_an_image)), gradio_client.handle_file(str(trimap)), "whole",
                       api_name="/predict")
    log = (server[2] / "app.log").read_text()
    assert log.count("refused: ") >= 3 and "refused: photo notes.png: not a readable image" in log
    # the server is still serving: the matte, byte for byte core/test.py's
    result = client.predict(gradio_client.handle_file(str(photo)), gradio_client.handle_file(str(trimap)), "whole",
                            api_name="/predict")
    assert Path(result).name == "synthetic_02.png"
    assert Path(result).read_bytes() == core_test_matte(tmp_path / "test_py", ckpt, photo, trimap)


def test_client_cannot_name_a_server_path(server):
    url = server[0] + "gradio_api/call/predict"
    secret = {"path": str(server[1]), "meta": {"_type": "gradio.FileData"}}  # the checkpoint, on the server
    request = urllib.request.Request(url, json.dumps({"data": [secret, secret, "whole"]}).encode(),
                                     {"Content-Type": "application/json"})
    event = json.load(urllib.request.urlopen(request, timeout=30))["event_id"]
    reply = urllib.request.urlopen(f"{url}/{event}", timeout=30).read().decode()
    assert reply.startswith("event: error") and "not uploaded by a user" in reply
