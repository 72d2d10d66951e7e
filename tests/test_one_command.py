"""core/demo.py without a trimap: alpha channel, --mask/--maskDir and segmenter routes, and each refusal.

The segmenter is torchvision's lraspp_mobilenet_v3_large with deterministic
weights written here into a temporary TORCH_HOME, under the file name its
weights expect: a seeded random backbone and a classifier whose "person"
logit is a linear function of the backbone's low-level features, fitted so it
is positive inside the test photo's disc and negative outside; every other
class but the background is never chosen. No network is used.
"""

import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torchvision.models.segmentation import LRASPP_MobileNet_V3_Large_Weights, lraspp_mobilenet_v3_large

from core import demo as demo_mod
from core.checkpoint import save_checkpoint
from core.network import DIMNet
from core.trimap import trimap_from_mask
from core.utils import run_cli

REPO = Path(__file__).resolve().parents[1]
SEG = "lraspp_mobilenet_v3_large"
SIZE, RADIUS = 96, 28  # the photo: a light disc of radius 28 centred in a dark 96×96 square
PERSON = 15

pytestmark = pytest.mark.usefixtures("one_thread")


def disc_distance():
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return np.hypot(yy - SIZE / 2, xx - SIZE / 2)


def disc_photo():
    inside = (disc_distance() <= RADIUS)[..., None]
    return np.where(inside, np.uint8([160, 180, 200]), np.uint8([50, 40, 30])).astype(np.uint8)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """photo.png, a DIM checkpoint and a TORCH_HOME holding the segmenter's weights."""
    root = tmp_path_factory.mktemp("one_command")
    photo = disc_photo()
    cv2.imwrite(str(root / "photo.png"), photo)
    torch.manual_seed(0)
    save_checkpoint(root / "dim.pth", DIMNet(refine=False, skip=True, conv6_kernel=3), epoch=1, best_sad=None)
    weights = LRASPP_MobileNet_V3_Large_Weights.DEFAULT
    net = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21).eval()
    rgb = torch.from_numpy(photo[:, :, ::-1].copy()).permute(2, 0, 1)
    with torch.no_grad():
        low = net.backbone(weights.transforms()(rgb).unsqueeze(0))["low"][0]  # C×h×w
    dist = torch.from_numpy(cv2.resize(disc_distance().astype(np.float32), low.shape[:0:-1]))
    f_in, f_out = low[:, dist < RADIUS * 0.8].mean(1), low[:, dist > RADIUS * 1.2].mean(1)
    direction = f_in - f_out
    offset = -(direction @ (f_in + f_out)) / 2
    gain = 10 / (torch.einsum("c,chw->hw", direction, low) + offset).abs().median()
    state = net.state_dict()
    state["classifier.high_classifier.weight"].zero_()
    state["classifier.high_classifier.bias"].zero_()
    state["classifier.low_classifier.weight"].zero_()
    state["classifier.low_classifier.weight"][PERSON, :, 0, 0] = direction * gain
    state["classifier.low_classifier.bias"].fill_(-20.0)  # never any other class …
    state["classifier.low_classifier.bias"][0] = 0.0  # … but the background (logit 0)
    state["classifier.low_classifier.bias"][PERSON] = offset * gain
    home = root / "torch_home"
    cache = home / "hub" / "checkpoints" / os.path.basename(weights.url)  # where torch.hub looks for it
    cache.parent.mkdir(parents=True)
    torch.save(state, cache)
    return root, home, cache


def run_demo(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli(demo_mod.main, argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err.strip().splitlines()


def demo_argv(root, out, *extra):
    return ["--image", str(root / "photo.png"), "--resume", str(root / "dim.pth"), "--saveDir", str(out), *extra]


def test_segmenter_route_end_to_end(files, tmp_path):
    """The real command: trimap from the cached weights (no network), matte, cut-out."""
    root, home, cache = files
    out = tmp_path / "out"
    dead = "http://127.0.0.1:9"  # any download attempt would fail at once
    env = dict(os.environ, TORCH_HOME=str(home), http_proxy=dead, https_proxy=dead, HTTP_PROXY=dead,
               HTTPS_PROXY=dead, no_proxy="", NO_PROXY="")
    proc = subprocess.run([sys.executable, "core/demo.py", *demo_argv(root, out, "--segmenter", SEG, "--classes",
                                                                     "Person")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"{out / 'trimap' / 'photo.png'}: trimap from {SEG} (person)" in proc.stdout
    trimap = cv2.imread(str(out / "trimap" / "photo.png"), cv2.IMREAD_UNCHANGED)
    dist = disc_distance()
    assert set(np.unique(trimap)) == {0, 128, 255}
    # The disc's edge is unknown (the segmentation ran at 520×520 and was resized: up to a few pixels off by a
    # fraction of a pixel); 255 only inside, 0 only outside; surely inside is 255, surely outside 0 (but for a
    # frame of 4 pixels, where the random backbone's zero padding shows).
    assert (trimap[np.abs(dist - RADIUS) < 1] == 128).mean() > 0.95
    assert np.all(dist[trimap == 255] < RADIUS) and np.all(dist[trimap == 0] > RADIUS)
    assert np.all(trimap[dist < RADIUS - 6] == 255) and np.all(trimap[4:-4, 4:-4][dist[4:-4, 4:-4] > RADIUS + 6] == 0)
    for path in ("photo.png", "side_by_side/photo.png"):
        assert (out / path).is_file(), path
    assert os.listdir(cache.parent) == [cache.name]  # nothing downloaded next to it


def test_alpha_channel_route_needs_no_segmenter(files, tmp_path, capsys, monkeypatch):
    root, _, _ = files
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))  # the segmenter's weights are not there
    alpha = np.clip((RADIUS - disc_distance()) * 60 + 128, 0, 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "cut.png"), np.dstack([disc_photo(), alpha]))
    argv = ["--image", str(tmp_path / "cut.png"), "--resume", str(root / "dim.pth"), "--saveDir", str(tmp_path / "o"),
            "--width", "3", "--no_download"]
    status, out, err = run_demo(argv, capsys)
    assert status == 0 and err == []
    assert "trimap from its alpha channel" in out
    trimap = cv2.imread(str(tmp_path / "o" / "trimap" / "cut.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(trimap, trimap_from_mask(alpha, 3))
    assert (tmp_path / "o" / "cut.png").is_file()


def test_mask_folder_route_goes_on_past_a_bad_photo(files, tmp_path, capsys):
    """--maskDir: a soft mask's trimap is the band of tools/gen_trimap.py; an empty mask is reported, the rest written."""
    root, _, _ = files
    (tmp_path / "img").mkdir()
    (tmp_path / "masks").mkdir()
    soft = np.clip((RADIUS - disc_distance()) * 40 + 128, 0, 255).astype(np.uint8)
    for name, mask in (("a", soft), ("b", np.zeros_like(soft))):
        cv2.imwrite(str(tmp_path / "img" / f"{name}.jpg"), disc_photo())
        cv2.imwrite(str(tmp_path / "masks" / f"{name}.png"), mask)
    out = tmp_path / "out"
    argv = ["--imgDir", str(tmp_path / "img"), "--maskDir", str(tmp_path / "masks"), "--resume", str(root / "dim.pth"),
            "--saveDir", str(out), "--width_frac", "0.05"]
    status, _, err = run_demo(argv, capsys)
    assert status == 2
    assert err == [f"error: 1 of 2 photos refused (1 mattes written): {tmp_path / 'img' / 'b.jpg'} (subject from "
                   f"mask {tmp_path / 'masks' / 'b.png'}): the mask is empty (no pixel above 5): there is no subject "
                   "to matte"]
    width = round(0.05 * np.hypot(SIZE, SIZE))
    assert np.array_equal(cv2.imread(str(out / "trimap" / "a.png"), cv2.IMREAD_UNCHANGED), trimap_from_mask(soft, width))
    assert sorted(os.listdir(out)) == ["a.png", "made_by.json", "side_by_side", "trimap"]
    assert os.listdir(out / "trimap") == ["a.png"]


def test_refusals(files, tmp_path, capsys, monkeypatch):
    root, home, cache = files
    photo, out = root / "photo.png", tmp_path / "out"
    monkeypatch.setenv("TORCH_HOME", str(home))
    seg = ["--segmenter", SEG]

    status, _, err = run_demo(demo_argv(root, out, *seg, "--classes", "dog"), capsys)
    assert status == 2 and err == [f"error: {photo}: {SEG} found no subject in the photo (no pixel more likely one of "
                                   "its classes than not; searched: dog); give --classes, --mask or --trimap"]
    cv2.imwrite(str(tmp_path / "all.png"), np.full((SIZE, SIZE), 255, np.uint8))
    status, _, err = run_demo(demo_argv(root, out, "--mask", str(tmp_path / "all.png")), capsys)
    assert status == 2 and err == [f"error: {photo} (subject from mask {tmp_path / 'all.png'}): the mask is all "
                                   "foreground (every pixel ≥ 250): there is no edge to matte"]
    assert not out.exists()  # nothing written for a refused photo

    status, _, err = run_demo(demo_argv(root, out, "--segmenter", "unet"), capsys)
    assert status == 2 and err == ["error: --segmenter unet: not a torchvision segmentation model; valid: "
                                   "deeplabv3_mobilenet_v3_large, deeplabv3_resnet101, deeplabv3_resnet50, "
                                   "fcn_resnet101, fcn_resnet50, lraspp_mobilenet_v3_large"]
    status, _, err = run_demo(demo_argv(root, out, *seg, "--classes", "person,unicorn"), capsys)
    assert status == 2 and err == [f"error: --classes: unicorn not among {SEG}'s classes; valid: aeroplane, bicycle, "
                                   "bird, boat, bottle, bus, car, cat, chair, cow, diningtable, dog, horse, motorbike, "
                                   "person, pottedplant, sheep, sofa, train, tvmonitor"]

    empty = tmp_path / "empty_home"
    monkeypatch.setenv("TORCH_HOME", str(empty))
    folder = empty / "hub" / "checkpoints"
    url = LRASPP_MobileNet_V3_Large_Weights.DEFAULT.url
    status, _, err = run_demo(demo_argv(root, out, *seg, "--no_download"), capsys)
    assert status == 2 and err == [f"error: {cache.name}: the {SEG} weights are not in the cache {folder} "
                                   f"(--no_download); download {url} into that folder"]

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    status, _, err = run_demo(demo_argv(root, out, *seg), capsys)
    assert status == 2 and err == [f"error: {cache.name}: the {SEG} weights are not in the cache {folder} and could "
                                   f"not be downloaded from {url} ([Errno -3] Temporary failure in name resolution); "
                                   "download that file into that folder"]
    assert not out.exists()
