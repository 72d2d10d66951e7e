"""core/cutout.py: foreground estimation against a composite with a known
foreground, the per-pixel solve against numpy.linalg, RGBA/composite values,
colour parsing and the command-line glue."""

import argparse
import os

import cv2
import numpy as np
import pytest

from core import cutout
from core.cutout import (add_cutout_args, as_alpha, composite_on, cover, cutout_options, estimate_fb_numpy,
                         estimate_foreground, make_rgba, parse_background, parse_colour, write_cutouts)
from core.inference import truncate_to_uint8
from core.utils import UserError


def known_composite(h=64, w=128):
    """Red-ish textured foreground over a green/blue background through a soft
    alpha ramp (0 → 1 over 64 px): (image uint8 BGR, alpha, fg, bg) with fg, bg float [0, 1]."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    alpha = np.clip((xx - 32) / 64, 0, 1)
    fg = np.dstack([np.full((h, w), 0.15), 0.1 + 0.1 * np.sin(yy / 7), np.full((h, w), 0.85)]).astype(np.float32)
    bg = np.dstack([0.6 + 0.3 * np.cos(yy / 9), 0.7 + 0.2 * np.sin(xx / 5), np.full((h, w), 0.05)]).astype(np.float32)
    image = alpha[..., None] * fg + (1 - alpha[..., None]) * bg
    return np.rint(image * 255).astype(np.uint8), alpha, fg, bg


def check_against_truth(fg_est):
    image, alpha, fg, _ = known_composite()
    semi = (alpha > 0.05) & (alpha < 0.95)
    err = np.abs(fg_est - fg)[semi].mean()
    naive = np.abs(image / 255.0 - fg)[semi].mean()  # the photo's colours: old background in the edge
    assert err < 0.05 and err < naive / 5
    # over a new white background the estimate beats image × alpha (what a naive cut-out shows)
    truth = alpha[..., None] * fg + (1 - alpha[..., None])
    ours = composite_on(fg_est, alpha, (255, 255, 255)) / 255.0
    naive_comp = alpha[..., None] * image / 255.0 + (1 - alpha[..., None])
    assert np.abs(ours - truth)[semi].mean() < np.abs(naive_comp - truth)[semi].mean() / 3


def test_numpy_estimate_recovers_the_known_foreground():
    image, alpha, _, _ = known_composite()
    fg_est = estimate_foreground(image, alpha, backend="numpy")
    assert fg_est.dtype == np.float32 and fg_est.shape == image.shape
    assert fg_est.min() >= 0 and fg_est.max() <= 1
    check_against_truth(fg_est)


def test_pymatting_estimate_recovers_the_known_foreground():
    pytest.importorskip("pymatting")
    image, alpha, _, _ = known_composite()
    fg_py = estimate_foreground(image, alpha, backend="pymatting")
    check_against_truth(fg_py)
    # the two implementations of the method agree where the foreground is visible
    fg_np = estimate_foreground(image, alpha, backend="numpy")
    visible = alpha > 0.2
    assert np.abs(fg_py - fg_np)[visible].mean() < 4 / 255


def test_missing_pymatting_is_a_user_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pymatting(name, *args, **kwargs):
        if name == "pymatting":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pymatting)
    image, alpha, _, _ = known_composite(8, 8)
    with pytest.raises(UserError, match="pip install pymatting"):
        estimate_foreground(image, alpha, backend="pymatting")
    monkeypatch.setattr(cutout, "pymatting_available", lambda: False)
    assert estimate_foreground(image, alpha, backend="auto").shape == (8, 8, 3)  # falls back to NumPy


def test_sweep_solves_the_per_pixel_normal_equations():
    rng = np.random.default_rng(0)
    h, w = 4, 5
    image = rng.random((h, w, 3), dtype=np.float32) * 0.5 + 0.25
    alpha = rng.random((h, w), dtype=np.float32)
    fg0, bg0 = rng.random((h, w, 3), dtype=np.float32), rng.random((h, w, 3), dtype=np.float32)
    reg, gw = 1e-2, 1.0
    weights = [np.float32(reg) + np.float32(gw) * np.abs(alpha - n) for n in cutout._shifted(alpha)]
    fg, bg = fg0.copy(), bg0.copy()
    cutout._sweep(image, alpha, fg, bg, weights, np.ones((h, w), bool))
    for y in range(h):
        for x in range(w):
            nbrs = [(max(y - 1, 0), x), (min(y + 1, h - 1), x), (y, max(x - 1, 0)), (y, min(x + 1, w - 1))]
            a = float(alpha[y, x])
            wj = [reg + gw * abs(a - float(alpha[n])) for n in nbrs]
            for c in range(3):
                m = np.array([[a * a + sum(wj), a * (1 - a)], [a * (1 - a), (1 - a) ** 2 + sum(wj)]])
                rhs = np.array([a * image[y, x, c] + sum(wi * fg0[n][c] for wi, n in zip(wj, nbrs)),
                                (1 - a) * image[y, x, c] + sum(wi * bg0[n][c] for wi, n in zip(wj, nbrs))])
                f, b = np.clip(np.linalg.solve(m, rhs), 0, 1)
                assert fg[y, x, c] == pytest.approx(f, abs=1e-5) and bg[y, x, c] == pytest.approx(b, abs=1e-5)


def test_opaque_alpha_gives_the_image():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    fg, bg = estimate_fb_numpy(image / np.float32(255), np.ones((20, 30), np.float32))
    np.testing.assert_allclose(fg, image / 255.0, atol=1e-3)


def test_make_rgba_alpha_channel_is_the_saved_matte():
    alpha = np.array([[0.0, 0.5, 0.999, 1.0]], np.float32)
    fg = np.array([[[0, 0, 1], [0.5, 0.5, 0.5], [1, 0, 0], [0.2, 0.4, 0.6]]], np.float32)
    rgba = make_rgba(fg, alpha)
    assert rgba.dtype == np.uint8 and rgba.shape == (1, 4, 4)
    assert rgba[0, :, 3].tolist() == [0, 127, 254, 255] == truncate_to_uint8(alpha)[0].tolist()
    assert rgba[0, 1, :3].tolist() == [128, 128, 128] and rgba[0, 3, :3].tolist() == [51, 102, 153]
    assert np.array_equal(make_rgba(fg, truncate_to_uint8(alpha)), rgba)


def test_colours_and_backgrounds(tmp_path):
    assert parse_colour("#FF8000") == (0, 128, 255)  # RGB in, BGR out
    assert parse_colour("10, 20 ,30") == (30, 20, 10)
    assert parse_colour("White") == (255, 255, 255) and parse_colour("green") == (0, 255, 0)
    for bad in ("#12345", "#GG0000", "1,2", "300,0,0", "chartreuse-ish"):
        assert parse_colour(bad) is None
    with pytest.raises(UserError, match="not a colour"):
        parse_background(str(tmp_path / "missing.jpg"))
    path = tmp_path / "bg.png"
    cv2.imwrite(str(path), np.full((5, 6, 3), 7, np.uint8))
    assert parse_background(str(path)).shape == (5, 6, 3)


def test_composite_on_colour_and_image():
    fg = np.zeros((2, 2, 3), np.float32)
    fg[..., 2] = 1.0  # pure red (BGR)
    alpha = np.array([[0.0, 0.25], [0.5, 1.0]], np.float32)
    out = composite_on(fg, alpha, (255, 0, 0))  # onto blue
    assert out[:, :, 0].tolist() == [[255, 191], [128, 0]]  # round(255·0.75) = 191, round(127.5) = 128
    assert out[:, :, 2].tolist() == [[0, 64], [128, 255]]
    # an image background is scaled to cover and centre-cropped: a 10×40 strip with a black left
    # half and a white right half becomes 20×80, cropped to the middle 20×20 → black | white
    strip = np.zeros((10, 40, 3), np.uint8)
    strip[:, 20:] = 255
    covered = cover(strip, 20, 20)
    assert covered.shape == (20, 20, 3)
    assert covered[:, :9].max() == 0 and covered[:, 11:].min() == 255
    assert composite_on(np.zeros((20, 20, 3), np.float32), np.zeros((20, 20)), strip)[5, 15, 0] == 255


def test_cover_downscales_by_area_averaging():
    # A background 4× larger than the cut-out: each output pixel is the mean of a 4×4 block
    # (INTER_AREA). Columns repeat 0, 100, 100, 0, so block means are 50 plus the row/column
    # offsets, while bilinear sampling (the upscaling interpolation) would read the 100s only.
    yy, xx = np.mgrid[0:80, 0:320]
    bg = (np.array([0, 100, 100, 0])[xx % 4] + 2 * (yy // 4) + (xx // 4) % 7).astype(np.uint8)
    bg = np.dstack([bg, bg, 255 - bg])
    blocks = bg.reshape(20, 4, 80, 4, 3).astype(np.float64).mean(axis=(1, 3))  # 20×80, exact
    covered = cover(bg, 20, 20)
    assert covered.shape == (20, 20, 3)
    np.testing.assert_array_equal(covered, blocks[:, 30:50].astype(np.uint8))  # centre crop of the 20×80


def test_cli_glue_writes_cutouts(tmp_path):
    parser = argparse.ArgumentParser()
    add_cutout_args(parser)
    assert cutout_options(parser.parse_args([])) is None
    with pytest.raises(UserError):
        cutout_options(parser.parse_args(["--background", "nope"]))
    opts = cutout_options(parser.parse_args(["--rgba", "--background", "#00FF00", "--fg_backend", "numpy"]))
    assert opts == {"rgba": True, "backgrounds": [("00ff00", (0, 255, 0))], "backend": "numpy"}
    image, alpha, _, _ = known_composite(32, 128)
    matte = truncate_to_uint8(alpha)
    paths = write_cutouts(str(tmp_path), "photo.jpg", image, matte, **opts)
    assert [p.split("/")[-2:] for p in paths] == [["cutout", "photo_rgba.png"], ["cutout", "photo_bg_00ff00.png"]]
    rgba = cv2.imread(paths[0], cv2.IMREAD_UNCHANGED)
    assert rgba.shape == (32, 128, 4) and np.array_equal(rgba[..., 3], matte)
    on_green = cv2.imread(paths[1])
    assert on_green.shape == (32, 128, 3) and on_green[0, 0].tolist() == [0, 255, 0]
    # several backgrounds in one run, each file named after its background; same-named images numbered
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "beach.png"), np.full((4, 4, 3), 9, np.uint8))
    opts = cutout_options(parser.parse_args(["--background", "white", "--background", "32,128,255", "--background",
                                             str(tmp_path / "a" / "beach.png"), "--background",
                                             str(tmp_path / "b" / "beach.png"), "--fg_backend", "numpy"]))
    assert [label for label, _ in opts["backgrounds"]] == ["white", "2080ff", "beach", "beach_2"]
    paths = write_cutouts(str(tmp_path), "photo.jpg", image, matte, **opts)
    assert [os.path.basename(p) for p in paths] == ["photo_bg_white.png", "photo_bg_2080ff.png", "photo_bg_beach.png",
                                                   "photo_bg_beach_2.png"]
    assert cv2.imread(paths[2])[0, 0].tolist() == [9, 9, 9]
    assert write_cutouts(str(tmp_path), "x.png", image, matte) == []


def test_as_alpha():
    out = as_alpha(np.array([[0, 255, 51]], np.uint8))
    assert out.dtype == np.float32 and out.tolist() == [[0.0, 1.0, np.float32(0.2)]]
    assert as_alpha(np.array([[-0.5, 1.5]])).tolist() == [[0.0, 1.0]]
