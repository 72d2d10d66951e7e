"""tools/gen_trimap.py: band geometry against distances computed here, thresholds,
the training-time generator, file/folder handling and refusals."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from core.data import sample_rng
from core.trimap import draw_trimap_params, trimap_from_alpha
from core.utils import UserError, run_cli
from tools import gen_trimap
from tools.gen_trimap import thresholds, trimap_from_mask, width_from_frac

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def disc_mask(h, w, cy, cx, radius):
    yy, xx = np.mgrid[0:h, 0:w]
    dist = np.hypot(yy - cy, xx - cx)
    return np.where(dist <= radius, 255, 0).astype(np.uint8), dist


def run(argv, capsys):
    """(exit status, stderr) of the command line run as users run it."""
    with pytest.raises(SystemExit) as exc:
        run_cli(gen_trimap.main, argv)
    return exc.value.code, capsys.readouterr().err


@pytest.mark.parametrize("radius,width", [(30, 5), (40, 12), (25, 1)])
def test_disc_band_is_an_annulus(radius, width):
    mask, dist = disc_mask(120, 140, 60.0, 70.0, radius)
    trimap = trimap_from_mask(mask, width)
    assert set(np.unique(trimap)) == {0, 128, 255}
    unknown = dist[trimap == 128]
    # unknown exactly where R − w < d ≤ R + w, up to one pixel of discretisation
    assert unknown.min() >= radius - width - 1 and unknown.max() <= radius + width + 1
    assert np.all(trimap[(dist > radius - width + 1) & (dist < radius + width - 1)] == 128)
    assert np.all(trimap[dist < radius - width - 1] == 255)
    assert np.all(trimap[dist > radius + width + 1] == 0)


def test_soft_values_are_unknown_and_thresholds_are_exact():
    assert thresholds(0.02) == (250, 5)  # ceil(255·0.98), floor(255·0.02)
    assert thresholds(0.0) == (255, 0)
    assert thresholds(0.3, binary=True) == (128, 127)
    mask = np.zeros((60, 200), np.uint8)
    mask[:, 100:] = 255
    mask[:, 40:45] = 100  # a soft strip far (55 px) from the hard edge
    mask[:, 95:100] = 250  # counts as foreground with tol 0.02 …
    mask[:, 90:95] = 249  # … this does not
    tri = trimap_from_mask(mask, 3)
    assert np.all(tri[:, 37:48] == 128) and np.all(tri[:, 36] == 0) and np.all(tri[:, 48] == 0)
    assert np.all(tri[:, 87:98] == 128) and np.all(tri[:, 86] == 0) and np.all(tri[:, 98] == 255)
    binary = trimap_from_mask(mask, 3, binary=True)  # > 127: the soft strip at 100 is background
    assert np.all(binary[:, 30:60] == 0)
    assert np.all(binary[:, 87:93] == 128) and np.all(binary[:, 86] == 0) and np.all(binary[:, 93] == 255)


def test_subject_cut_by_the_border_stays_foreground_there():
    mask = np.zeros((50, 80), np.uint8)
    mask[:, :30] = 255  # touches the left, top and bottom borders
    tri = trimap_from_mask(mask, 4)
    assert np.all(tri[:, :26] == 255) and np.all(tri[:, 26:34] == 128) and np.all(tri[:, 34:] == 0)


def test_width_from_frac():
    assert width_from_frac((300, 400), 0.01) == 5  # diagonal 500
    assert width_from_frac((30, 40), 0.001) == 1  # at least one pixel
    assert width_from_frac((300, 400), 0.0198) == 10  # 9.9 rounds up, not down
    assert width_from_frac((300, 400), 0.0188) == 9  # 9.4 rounds down


@pytest.mark.parametrize("value,word", [(0, "empty"), (255, "all foreground")])
def test_empty_or_full_masks_refused(tmp_path, capsys, value, word):
    path = tmp_path / "m.png"
    cv2.imwrite(str(path), np.full((40, 40), value, np.uint8))
    code, err = run(["--input", str(path), "--output", str(tmp_path / "t.png")], capsys)
    assert code == 2 and word in err and str(path) in err and "Traceback" not in err
    assert not (tmp_path / "t.png").exists()
    code, err = run(["--input", str(path), "--output", str(tmp_path / "t.png"), "--mode", "train"], capsys)
    assert code == 2 and word in err
    with pytest.raises(UserError, match=word):
        trimap_from_mask(np.full((8, 8), value, np.uint8), 2, name="x.png")


def test_file_and_folder_cli(tmp_path, capsys):
    masks = tmp_path / "masks"
    masks.mkdir()
    mask, dist = disc_mask(64, 80, 32, 40, 20)
    cv2.imwrite(str(masks / "a.png"), mask)
    cv2.imwrite(str(masks / "b.jpg"), np.dstack([mask] * 3), [cv2.IMWRITE_JPEG_QUALITY, 100])
    rgba = np.zeros((64, 80, 4), np.uint8)
    rgba[..., 3] = mask  # an RGBA cut-out: the alpha channel is the mask
    cv2.imwrite(str(masks / "c.png"), rgba)
    code, _ = run(["--input", str(masks), "--output", str(tmp_path / "out"), "--width", "4"], capsys)
    assert code == 0
    expected = trimap_from_mask(mask, 4)
    for stem in "abc":
        tri = cv2.imread(str(tmp_path / "out" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert tri.dtype == np.uint8 and tri.ndim == 2 and set(np.unique(tri)) <= {0, 128, 255}
        if stem != "b":  # the JPEG's edge differs by compression
            assert np.array_equal(tri, expected)
    # one file into an existing folder; --width_frac (0.057 × diagonal 102.45 = 5.84 → 6 px, rounded)
    code, _ = run(["--input", str(masks / "a.png"), "--output", str(tmp_path / "out"), "--width_frac", "0.057"],
                  capsys)
    assert code == 0
    assert np.array_equal(cv2.imread(str(tmp_path / "out" / "a.png"), 0), trimap_from_mask(mask, 6))
    assert not np.array_equal(trimap_from_mask(mask, 6), trimap_from_mask(mask, 5))


def test_folder_with_a_refused_mask_writes_the_others(tmp_path, capsys):
    masks = tmp_path / "masks"
    masks.mkdir()
    cv2.imwrite(str(masks / "good.png"), disc_mask(40, 40, 20, 20, 10)[0])
    cv2.imwrite(str(masks / "empty.png"), np.zeros((40, 40), np.uint8))
    code, err = run(["--input", str(masks), "--output", str(tmp_path / "out")], capsys)
    assert code == 2 and "1 of 2 masks refused" in err and "empty.png" in err
    assert (tmp_path / "out" / "good.png").exists() and not (tmp_path / "out" / "empty.png").exists()


def test_train_mode_is_the_training_generator_and_reproducible(tmp_path, capsys):
    alphas = tmp_path / "alphas"
    alphas.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        alpha = cv2.GaussianBlur(disc_mask(64, 64, 32 + i, 30, 18)[0], (0, 0), 3)
        alpha[rng.random(alpha.shape) < 0.01] = 0
        cv2.imwrite(str(alphas / f"a{i}.png"), alpha)
    outs = {}
    for seed, folder in ((7, "s7"), (7, "s7b"), (8, "s8")):
        code, _ = run(["--input", str(alphas), "--output", str(tmp_path / folder), "--mode", "train",
                       "--seed", str(seed)], capsys)
        assert code == 0
        outs[folder] = [cv2.imread(str(tmp_path / folder / f"a{i}.png"), 0) for i in range(4)]
    for i in range(4):
        alpha = cv2.imread(str(alphas / f"a{i}.png"), 0)
        for seed, folder in ((7, "s7"), (8, "s8")):
            params = draw_trimap_params(sample_rng(seed, 0, f"a{i}.png"))
            assert np.array_equal(outs[folder][i], trimap_from_alpha(alpha, *params))
        assert np.array_equal(outs["s7"][i], outs["s7b"][i])
    assert any(not np.array_equal(a, b) for a, b in zip(outs["s7"], outs["s8"]))
    # fixed draws
    code, _ = run(["--input", str(alphas / "a0.png"), "--output", str(tmp_path / "f.png"), "--mode", "train",
                   "--kernel_size", "3", "--iterations", "5"], capsys)
    assert code == 0
    assert np.array_equal(cv2.imread(str(tmp_path / "f.png"), 0),
                          trimap_from_alpha(cv2.imread(str(alphas / "a0.png"), 0), 3, 5))


def test_bad_flags(tmp_path, capsys):
    path = tmp_path / "m.png"
    cv2.imwrite(str(path), disc_mask(40, 40, 20, 20, 10)[0])
    assert run(["--input", str(path), "--output", str(path)], capsys)[0] == 2
    assert "no such file" in run(["--input", str(tmp_path / "nope.png"), "--output", "x.png"], capsys)[1]
    assert "--width" in run(["--input", str(path), "--output", str(tmp_path / "t.png"), "--width", "0"], capsys)[1]
    assert "--tol" in run(["--input", str(path), "--output", str(tmp_path / "t.png"), "--tol", "0.6"], capsys)[1]


@pytest.mark.parametrize("how", [["tools/gen_trimap.py"], ["-m", "tools.gen_trimap"]])
def test_runs_as_script_and_module(tmp_path, how):
    path = tmp_path / "m.png"
    cv2.imwrite(str(path), disc_mask(40, 40, 20, 20, 10)[0])
    done = subprocess.run([sys.executable, *how, "--input", str(path), "--output", str(tmp_path / "t.png"),
                           "--width", "3"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert np.array_equal(cv2.imread(str(tmp_path / "t.png"), 0), trimap_from_mask(cv2.imread(str(path), 0), 3))
