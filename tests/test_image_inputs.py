"""Odd and broken image files through every entry point (docs/own-images.md: *Image files: conventions*).

16-bit, grey, RGBA and palette files and RGB trimaps are read by the shared
reader's rule (core/imageio.py); empty, non-image, decompression-bomb and
(where the network needs 32 pixels) tiny files are refused with one line
naming the file, and nothing is written or damaged. Entry points run as real
commands; the images are tiny and the model is a random one written once.
"""

import json
import os
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from core.checkpoint import load_model, save_checkpoint
from core.imageio import MAX_PIXELS, decode, read_gray, read_image, read_unchanged
from core.metrics import compute_metrics, read_alpha, read_trimap
from core.network import DIMNet
from core.folder import find_pairs, predict_folder
from core.utils import UserError
from tests.conftest import ROOT

H, W = 64, 64
BROKEN = ("zero", "text", "bomb")


def bomb_png(width=100_000, height=100_000):
    """A valid PNG header claiming width×height grey pixels, followed by a little data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
            + chunk(b"IEND", b""))


def write_broken(folder, kind, name):
    path = folder / name
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "zero":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not an image\n")
    else:
        path.write_bytes(bomb_png())
    return path


def disc_trimap(h=H, w=W):
    yy, xx = np.mgrid[:h, :w]
    d = np.hypot(yy - h / 2, xx - w / 2)
    return np.where(d < h / 5, 255, np.where(d < h / 3, 128, 0)).astype(np.uint8)


def grey_palette_png(path, grey):
    """``grey`` (uint8 H×W) stored as a palette PNG whose entry i is grey level i: decodes to the same values."""
    im = Image.fromarray(grey, mode="L").convert("P")  # index i
    im.putpalette([v for i in range(256) for v in (i, i, i)])
    im.save(path)


def palette_png(path, rgb):
    Image.fromarray(rgb).quantize(16).save(path)
    return cv2.imread(str(path))  # its colours, BGR


def run(args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1")  # small images: one thread is fastest on shared cores
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def assert_one_line(proc, *words):
    """Exit status 2 and one ``error:`` line, the last on stderr (above it only progress bars)."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert lines[-1].startswith("error: ") and sum(line.startswith("error") for line in lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for word in words:
        assert str(word) in lines[-1], (word, proc.stderr)


@pytest.fixture(scope="module")
def photo():
    return np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)


# ---------------------------------------------------------------- the shared reader

def test_shared_reader_conventions(tmp_path, photo):
    low = np.random.default_rng(1).integers(0, 256, photo.shape).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "p16.png"), photo.astype(np.uint16) * 256 + low)
    assert np.array_equal(read_image(tmp_path / "p16.png"), photo)  # the high byte
    assert np.array_equal(read_unchanged(tmp_path / "p16.png"), photo)
    cv2.imwrite(str(tmp_path / "grey.png"), photo[:, :, 1])
    assert np.array_equal(read_image(tmp_path / "grey.png"), cv2.merge([photo[:, :, 1]] * 3))
    assert read_unchanged(tmp_path / "grey.png").shape == (H, W)
    cv2.imwrite(str(tmp_path / "rgba.png"), cv2.merge([*cv2.split(photo), photo[:, :, 0] // 2]))
    assert np.array_equal(read_image(tmp_path / "rgba.png"), photo)  # alpha dropped, colours as stored
    assert read_unchanged(tmp_path / "rgba.png").shape == (H, W, 4)
    colours = palette_png(tmp_path / "pal.png", photo)
    assert Image.open(tmp_path / "pal.png").mode == "P"
    assert np.array_equal(read_image(tmp_path / "pal.png"), colours)
    tri = disc_trimap()
    cv2.imwrite(str(tmp_path / "rgb_tri.png"), cv2.merge([tri, 255 - tri, np.zeros_like(tri)]))
    assert np.array_equal(read_gray(tmp_path / "rgb_tri.png"), tri)  # channel 0 (B), as the reference
    assert np.array_equal(read_trimap(str(tmp_path / "rgb_tri.png")), np.zeros_like(tri))  # R, as evaluate.m
    cv2.imwrite(str(tmp_path / "tiny.png"), photo[:3, :2])
    assert np.array_equal(read_image(tmp_path / "tiny.png"), photo[:3, :2])
    for kind, words in (("zero", "empty file (0 bytes), not an image"),
                        ("text", "not a readable image (corrupt or unsupported format)"),
                        ("bomb", f"the header claims 100000×100000 pixels, over the limit of {MAX_PIXELS:,}")):
        path = write_broken(tmp_path, kind, f"{kind}.png")
        for reader in (read_image, read_gray, read_unchanged, decode, lambda p: read_alpha(str(p))):
            with pytest.raises(UserError) as err:
                reader(path)
            assert str(err.value) == f"{path}: {words}" + (" (a decompression bomb or a corrupt file); "
                                                           "not decoding it" if kind == "bomb" else "")
    cv2.imwrite(str(tmp_path / "a16.png"), (tri.astype(np.uint16) * 257))
    with pytest.raises(UserError, match="a16.png has uint16 samples; expected an 8-bit image"):
        read_alpha(str(tmp_path / "a16.png"))  # evaluation refuses what evaluate.m would misread


def test_bomb_under_opencv_limit_is_refused_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(bomb_png(20_000, 20_000))  # 4e8 pixels: under OpenCV's 2^30, over ours
    with pytest.raises(UserError, match="claims 20000×20000 pixels"):
        read_image(path)


# ---------------------------------------------------------------- core/test.py and core/demo.py

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    import torch

    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("ckpt") / "random.pth"
    save_checkpoint(path, DIMNet(), epoch=1, best_sad=None)
    return path


def subfolders(root, *names):
    paths = [root / n for n in names]
    for path in paths:
        path.mkdir()
    return paths


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory, photo):
    """Readable odd files, each with an 8-bit twin that must give the same matte."""
    root = tmp_path_factory.mktemp("odd")
    img, tri, twin = subfolders(root, "image", "trimap", "twin")
    trimap = disc_trimap()
    low = np.random.default_rng(1).integers(0, 256, photo.shape).astype(np.uint16)
    cv2.imwrite(str(img / "p16.png"), photo.astype(np.uint16) * 256 + low)
    cv2.imwrite(str(twin / "p16.png"), photo)
    cv2.imwrite(str(img / "grey.png"), photo[:, :, 2])
    cv2.imwrite(str(twin / "grey.png"), cv2.merge([photo[:, :, 2]] * 3))
    cv2.imwrite(str(img / "rgba.png"), cv2.merge([*cv2.split(photo), photo[:, :, 0]]))
    cv2.imwrite(str(twin / "rgba.png"), photo)
    cv2.imwrite(str(twin / "pal.png"), palette_png(img / "pal.png", photo))
    for name in ("p16", "grey", "rgba", "pal"):
        cv2.imwrite(str(tri / f"{name}.png"), trimap)
    cv2.imwrite(str(img / "rgbtri.png"), photo)  # RGB trimap: channel 0 (B) is the trimap
    cv2.imwrite(str(tri / "rgbtri.png"), cv2.merge([trimap, np.full_like(trimap, 128), 255 - trimap]))
    cv2.imwrite(str(twin / "rgbtri.png"), photo)
    return root


def test_test_py_reads_odd_files_by_the_convention(odd_folder, ckpt, tmp_path):
    out, twin_out = tmp_path / "out", tmp_path / "twin_out"
    proc = run(["core/test.py", "--imgDir", str(odd_folder / "image"), "--trimapDir", str(odd_folder / "trimap"),
                "--saveDir", str(out), "--resume", str(ckpt)])
    assert proc.returncode == 0, proc.stderr
    twin_tri = tmp_path / "twin_tri"
    twin_tri.mkdir()
    for name in os.listdir(odd_folder / "trimap"):
        cv2.imwrite(str(twin_tri / name), read_gray(odd_folder / "trimap" / name))
    model, _ = load_model(ckpt)  # the twins in-process: the same loop test.py runs
    predict_folder(model, find_pairs(str(odd_folder / "twin"), str(twin_tri)), str(twin_out), progress=False)
    assert sorted(os.listdir(out)) == ["grey.png", "made_by.json", "p16.png", "pal.png", "rgba.png", "rgbtri.png"]
    names = ["grey.png", "p16.png", "pal.png", "rgba.png", "rgbtri.png"]
    for name in names:
        assert np.array_equal(cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED),
                              cv2.imread(str(twin_out / name), cv2.IMREAD_UNCHANGED)), name


@pytest.fixture(scope="module")
def broken_folder(tmp_path_factory, photo):
    """The three broken images, a 3×2 image, and good images with a 16-bit ground truth or trimap."""
    root = tmp_path_factory.mktemp("broken")
    img, tri, alpha = subfolders(root, "image", "trimap", "alpha")
    trimap = disc_trimap()
    for name in ("t16", "a16"):
        cv2.imwrite(str(img / f"{name}.png"), photo)
    for kind in BROKEN:
        write_broken(img, kind, f"{kind}.png")
    cv2.imwrite(str(img / "tiny.png"), photo[:3, :2])
    for name in ("t16", "a16", *BROKEN):
        cv2.imwrite(str(tri / f"{name}.png"), trimap)
        cv2.imwrite(str(alpha / f"{name}.png"), trimap)
    cv2.imwrite(str(tri / "tiny.png"), trimap[:3, :2])
    cv2.imwrite(str(alpha / "tiny.png"), trimap[:3, :2])
    cv2.imwrite(str(alpha / "a16.png"), trimap.astype(np.uint16) * 257)
    cv2.imwrite(str(tri / "t16.png"), trimap.astype(np.uint16) * 257)
    return root


def broken_words(root):
    img = root / "image"
    return ("6 of 6 pairs are unusable", f"{root / 'alpha' / 'a16.png'} has uint16 samples",
            f"trimap {root / 'trimap' / 't16.png'} has uint16 samples",
            f"{img / 'bomb.png'}: the header claims 100000×100000 pixels", f"{img / 'text.png'}: not a readable image",
            f"{img / 'tiny.png'}: image of 2×3 pixels is too small", f"{img / 'zero.png'}: empty file (0 bytes)")


def test_test_py_refuses_broken_files_in_one_line_and_writes_nothing(broken_folder, ckpt, tmp_path):
    out = tmp_path / "out"
    proc = run(["core/test.py", "--imgDir", str(broken_folder / "image"), "--trimapDir", str(broken_folder / "trimap"),
                "--alphaDir", str(broken_folder / "alpha"), "--saveDir", str(out), "--resume", str(ckpt)])
    assert_one_line(proc, *broken_words(broken_folder))
    assert not out.exists()


def test_demo_py_odd_and_broken_files(odd_folder, broken_folder, ckpt, tmp_path):
    out = tmp_path / "demo"
    proc = run(["core/demo.py", "--image", str(odd_folder / "image" / "p16.png"), "--trimap",
                str(odd_folder / "trimap" / "rgbtri.png"), "--saveDir", str(out), "--resume", str(ckpt)])
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(out)) == ["made_by.json", "p16.png", "side_by_side"]
    before = (out / "p16.png").read_bytes()
    record = (out / "made_by.json").read_bytes()
    proc = run(["core/demo.py", "--imgDir", str(broken_folder / "image"), "--trimapDir",
                str(broken_folder / "trimap"), "--alphaDir", str(broken_folder / "alpha"), "--saveDir", str(out),
                "--resume", str(ckpt)])
    assert_one_line(proc, *broken_words(broken_folder))
    assert sorted(os.listdir(out)) == ["made_by.json", "p16.png", "side_by_side"]
    assert (out / "p16.png").read_bytes() == before and (out / "made_by.json").read_bytes() == record


# ---------------------------------------------------------------- tools/gen_trimap.py

def test_gen_trimap_folder_of_odd_and_broken_masks(tmp_path):
    from tools.gen_trimap import trimap_from_mask

    masks, out = tmp_path / "masks", tmp_path / "out"
    masks.mkdir()
    mask = np.where(disc_trimap() == 0, 0, 255).astype(np.uint8)
    cv2.imwrite(str(masks / "m16.png"), mask.astype(np.uint16) * 257)
    cv2.imwrite(str(masks / "rgba.png"), cv2.merge([255 - mask, 255 - mask, 255 - mask, mask]))  # alpha channel
    cv2.imwrite(str(masks / "rgb.png"), cv2.merge([mask, 255 - mask, 255 - mask]))  # channel 0
    Image.fromarray(mask).convert("P").save(masks / "pal.png")
    cv2.imwrite(str(masks / "grey.png"), mask)
    tiny = np.zeros((4, 5), np.uint8)
    tiny[1:3, 1:3] = 255
    cv2.imwrite(str(masks / "tiny.png"), tiny)
    for kind in BROKEN:
        write_broken(masks, kind, f"{kind}.png")
    out.mkdir()
    (out / "zero.png").write_bytes(b"kept")  # an earlier output for a now-broken input stays as it was
    proc = run(["tools/gen_trimap.py", "--input", str(masks), "--output", str(out), "--width", "2"])
    assert_one_line(proc, "3 of 9 masks refused (6 trimaps written)", f"{masks / 'bomb.png'}: the header claims",
                    f"{masks / 'text.png'}: not a readable image", f"{masks / 'zero.png'}: empty file")
    expected = trimap_from_mask(mask, 2)
    for name in ("m16", "rgba", "rgb", "pal", "grey"):
        assert np.array_equal(cv2.imread(str(out / f"{name}.png"), cv2.IMREAD_UNCHANGED), expected), name
    assert np.array_equal(cv2.imread(str(out / "tiny.png"), cv2.IMREAD_UNCHANGED), trimap_from_mask(tiny, 2))
    assert (out / "zero.png").read_bytes() == b"kept" and sorted(os.listdir(out)) == sorted(
        ["m16.png", "rgba.png", "rgb.png", "pal.png", "grey.png", "tiny.png", "zero.png"])


# ---------------------------------------------------------------- tools/evaluate.py

def score_folders(root, names):
    for d in ("pred", "alpha", "trimap"):
        (root / d).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    for name, (h, w) in names.items():
        tri = disc_trimap(h, w)
        gt = np.where(tri == 128, rng.integers(0, 256, (h, w)), tri).astype(np.uint8)
        pred = np.where(tri == 128, rng.integers(0, 256, (h, w)), tri).astype(np.uint8)
        cv2.imwrite(str(root / "pred" / name), pred)
        cv2.imwrite(str(root / "alpha" / name), gt)
        cv2.imwrite(str(root / "trimap" / name), tri)
    return root


def evaluate(root, *extra):
    return run(["tools/evaluate.py", "--predDir", str(root / "pred"), "--alphaDir", str(root / "alpha"),
                "--trimapDir", str(root / "trimap"), *extra])


def test_evaluate_odd_files(tmp_path):
    root = score_folders(tmp_path, {"rgb.png": (H, W), "pal.png": (H, W), "tiny.png": (4, 6)})
    gt = cv2.imread(str(root / "alpha" / "rgb.png"), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(root / "alpha" / "rgb.png"), cv2.merge([255 - gt, 255 - gt, gt]))  # RGB: R counts, as evaluate.m
    tri = cv2.imread(str(root / "trimap" / "rgb.png"), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(root / "trimap" / "rgb.png"), cv2.merge([255 - tri, tri, tri]))
    Image.fromarray(cv2.imread(str(root / "alpha" / "pal.png"), cv2.IMREAD_UNCHANGED)).convert("P").save(
        root / "alpha" / "pal.png")
    proc = evaluate(root, "--json", str(tmp_path / "m.json"))
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((tmp_path / "m.json").read_text())
    rows = rows.get("images", rows)
    for name in ("rgb.png", "pal.png", "tiny.png"):
        pred = cv2.imread(str(root / "pred" / name), cv2.IMREAD_UNCHANGED)
        want = compute_metrics(pred, read_alpha(str(root / "alpha" / name)), read_trimap(str(root / "trimap" / name)))
        assert name in json.dumps(rows) and f"{want['sad']:.3f}" in proc.stdout, name
    assert np.array_equal(read_alpha(str(root / "alpha" / "rgb.png")), gt)


@pytest.mark.parametrize("case", ["pred16", "alpha16", "zero", "text", "bomb"])
def test_evaluate_refuses_in_one_line(tmp_path, case):
    root = score_folders(tmp_path / "d", {"a.png": (H, W), "b.png": (H, W)})
    if case == "pred16":
        target = root / "pred" / "b.png"
        cv2.imwrite(str(target), cv2.imread(str(target), cv2.IMREAD_UNCHANGED).astype(np.uint16) * 257)
        words = (str(target), "not a single-channel 8-bit PNG")
    elif case == "alpha16":
        target = root / "alpha" / "b.png"
        cv2.imwrite(str(target), cv2.imread(str(target), cv2.IMREAD_UNCHANGED).astype(np.uint16) * 257)
        words = (f"ground-truth alpha {target} has uint16 samples; expected an 8-bit image",)
    else:
        target = write_broken(root / ("trimap" if case == "text" else "alpha"), case, "b.png")
        # a bomb's header is caught before decoding, as sizes that do not fit the ground truth
        words = ("ground truth 100000×100000",) if case == "bomb" else (f"{target}: ",)
    proc = evaluate(root, "--json", str(tmp_path / "m.json"))
    assert_one_line(proc, *words)
    assert not (tmp_path / "m.json").exists()


# ---------------------------------------------------------------- tools/composite.py

def composite_set(tmp_path, name):
    from tools.make_synthetic import make_dataset

    return make_dataset(str(tmp_path / name), num_fg=1, num_test_fg=2, size=32, seed=4, test_bg_per_fg=1)


def composite(paths):
    return run(["tools/composite.py", "--root_dir", paths["root_dir"], "--test_bg_dir", paths["test_bg_dir"],
                "--only", "test", "--test_bg_per_fg", "1", "--workers", "1"])


def test_composite_odd_and_broken_foregrounds(tmp_path):
    odd, twin, broken = (composite_set(tmp_path, n) for n in ("odd", "twin", "broken"))
    src = "Test_set/Adobe-licensed images"
    fg_png, fg_jpg = (n for n in odd["test_fg_names"])  # synth-test-000.png, synth-test-001.jpg
    # 16-bit foreground and a palette alpha against their 8-bit twins
    fg = cv2.imread(os.path.join(twin["root_dir"], src, "fg", fg_png))
    cv2.imwrite(os.path.join(odd["root_dir"], src, "fg", fg_png), fg.astype(np.uint16) * 256 + 77)
    alpha = cv2.imread(os.path.join(twin["root_dir"], src, "alpha", fg_png))
    grey_palette_png(os.path.join(odd["root_dir"], src, "alpha", fg_png), alpha[:, :, 0])
    assert composite(odd).returncode == 0 and composite(twin).returncode == 0
    for kind in ("image", "fg", "alpha"):
        a = os.path.join(odd["root_dir"], "Test_set", "comp", kind, fg_png[:-4] + "_0.png")
        b = os.path.join(twin["root_dir"], "Test_set", "comp", kind, fg_png[:-4] + "_0.png")
        assert open(a, "rb").read() == open(b, "rb").read(), kind
    # broken foreground and alpha: one line naming both, nothing written
    fg_path = write_broken(tmp_path / "broken" / "Combined_Dataset" / src / "fg", "bomb", fg_png)
    alpha_path = write_broken(tmp_path / "broken" / "Combined_Dataset" / src / "alpha", "zero", fg_jpg)
    proc = composite(broken)
    assert_one_line(proc, "2 foreground/alpha pairs are unusable", f"{fg_path}: the header claims 100000×100000",
                    f"{alpha_path}: empty file (0 bytes)")
    assert not os.path.exists(os.path.join(broken["root_dir"], "Test_set", "comp"))
