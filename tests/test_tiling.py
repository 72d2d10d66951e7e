"""core/tiling.py: window layout, blending weights, skipping, and agreement with
whole-image prediction.

Tolerances: with one window covering the image, tile mode runs the very same
forward pass as whole mode, so the results are equal bit for bit. With a
pixel-local model (1×1 convolutions) every window predicts the same value for
a pixel, so the blended result equals the whole-image one up to float32
rounding of the weighted mean (1e-6); that checks the layout, not the weights.
The weights themselves are pinned by the window formula (sin², computed here)
and by a stub predicting a different constant in each window, whose blend must
equal the raised-cosine weighted mean to 1e-6 (a plain average is 0.1 off). With the real network, windows see less
context than the whole image, so there is no exact answer: for 64-px windows
overlapping 32 px on a 96×128 image, random calibrated weights (three seeds)
give a mean |Δα| over the unknown region of 0.018–0.022 and a max of 0.12–0.14;
the bounds below (0.04 and 0.25) leave about twice that, while misplaced
windows (a 1-px shift: 0.17–0.22 mean) or abutting windows without blending
(max 0.47–0.70) fail them.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from bench.tile_memory import random_model, synthetic_scene
from core.inference import force_known, predict
from core.tiling import axis_windows, plan_tiles, predict_tiles, ramp, tile_starts


class LocalModel(nn.Module):
    """A stand-in for DIMNet whose output at a pixel depends on that pixel only; counts its calls."""

    refine = False

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.mix = nn.Conv2d(4, 1, 1)
        self.calls = []

    def walk(self, x, ops):  # inference calls walk with its operations; a stub ignores them
        return self(x)

    def forward(self, x):
        self.calls.append(tuple(x.shape[2:]))
        return torch.sigmoid(2 * self.mix(x)), None


def test_tile_starts_known_answers():
    assert tile_starts(512, 512, 64) == ([0], 512)
    assert tile_starts(1000, 512, 64) == ([0, 244, 488], 512)  # 3 windows spread evenly, overlaps 268
    assert tile_starts(960, 512, 64) == ([0, 448], 512)  # exactly the minimum overlap
    assert tile_starts(100, 512, 64) == ([0, 4], 96)  # image smaller than the tile: 96-px windows, no resizing
    assert tile_starts(40, 512, 64) == ([0, 8], 32)
    with pytest.raises(ValueError, match="too small"):
        tile_starts(31, 512, 64)


@pytest.mark.parametrize("side,tile,overlap", [(1000, 512, 64), (4000, 512, 64), (333, 128, 40), (100, 64, 0)])
def test_windows_cover_the_axis_with_the_overlap(side, tile, overlap):
    starts, length = tile_starts(side, tile, overlap)
    assert starts[0] == 0 and starts[-1] + length == side and length % 32 == 0
    gaps = np.diff(starts)
    assert np.all(gaps > 0) and np.all(length - gaps >= overlap - 1)  # ±1 px from rounding the starts
    if len(starts) > 2:  # no fewer windows would do
        assert np.ceil((side - length) / (length - overlap)) + 1 == len(starts)


def test_ramp_is_a_partition_of_unity_across_an_overlap():
    n = 37
    up, down = ramp(100, n, 0), ramp(100, 0, n)
    np.testing.assert_allclose(up[:n] + down[100 - n:], 1, atol=1e-6)
    assert np.all(up[n:] == 1) and np.all(down[:100 - n] == 1) and up[0] > 0
    assert np.all(np.diff(up[:n]) > 0)
    # two windows along an axis: their weights sum to 1 everywhere
    (s0, w0), (s1, w1) = axis_windows(900, 512, 64)
    total = np.zeros(900)
    total[s0:s0 + 512] += w0
    total[s1:s1 + 512] += w1
    np.testing.assert_allclose(total, 1, atol=1e-6)


def sin2_up(n):
    """The rising half of the raised-cosine window over n pixels, from its formula: sin²(π/2 · (i + ½)/n)."""
    return np.array([math.sin(math.pi / 2 * (i + 0.5) / n) ** 2 for i in range(n)])


def test_ramp_follows_the_raised_cosine_formula():
    w = ramp(100, 30, 17)
    expected = np.ones(100)
    expected[:30] = sin2_up(30)
    expected[100 - 17:] = sin2_up(17)[::-1]
    assert w.dtype == np.float32
    np.testing.assert_array_equal(w, expected.astype(np.float32))
    # along an axis: 1000 px in 512-px windows at 0, 244, 488 overlap by 268 px, so the middle
    # window's two ramps meet over its central 24 px and multiply there
    (_, w0), (_, w1), (_, w2) = axis_windows(1000, 512, 64)
    up = sin2_up(268)
    middle = np.ones(512)
    middle[:268] *= up
    middle[512 - 268:] *= up[::-1]
    np.testing.assert_array_equal(w1, middle.astype(np.float32))
    np.testing.assert_array_equal(w0, np.r_[np.ones(244), up[::-1]].astype(np.float32))
    np.testing.assert_array_equal(w2, np.r_[up, np.ones(244)].astype(np.float32))


class ConstantPerWindow(nn.Module):
    """Stub whose k-th call predicts the constant ``values[k]``: blending is all that shapes the result."""

    refine = False

    def __init__(self, values):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.values, self.calls = values, 0

    def walk(self, x, ops):  # inference calls walk with its operations; a stub ignores them
        return self(x)

    def forward(self, x):
        value = self.values[self.calls]
        self.calls += 1
        return torch.full((x.shape[0], 1, *x.shape[2:]), value), None


def test_blend_is_the_raised_cosine_weighted_mean():
    # 96×150 in 64-px windows, overlap ≥ 32: rows at 0, 32; columns at 0, 29, 57, 86 (overlaps 35, 36, 35)
    h, w = 96, 150
    rows, cols = [0, 32], [0, 29, 57, 86]
    values = [0.1, 0.9, 0.3, 0.7, 0.6, 0.0, 1.0, 0.2]
    model = ConstantPerWindow(values)
    image = np.zeros((h, w, 3), np.uint8)
    out = predict_tiles(model, image, np.full((h, w), 128, np.uint8), tile=64, overlap=32)
    assert model.calls == 8

    def axis_weight(starts, k):  # sin² up across the overlap with the previous window, down with the next
        wk = np.ones(64)
        if k > 0:
            n = starts[k - 1] + 64 - starts[k]
            wk[:n] *= sin2_up(n)
        if k + 1 < len(starts):
            n = starts[k] + 64 - starts[k + 1]
            wk[64 - n:] *= sin2_up(n)[::-1]
        return wk

    num, den = np.zeros((h, w)), np.zeros((h, w))
    for i, y in enumerate(rows):
        for j, x in enumerate(cols):
            win = np.outer(axis_weight(rows, i), axis_weight(cols, j))
            num[y:y + 64, x:x + 64] += win * values[i * len(cols) + j]
            den[y:y + 64, x:x + 64] += win
    np.testing.assert_allclose(out, num / den, atol=1e-6, rtol=0)
    # a plain average of the overlapping windows would differ by far more than that
    count = np.zeros((h, w))
    total = np.zeros((h, w))
    for i, y in enumerate(rows):
        for j, x in enumerate(cols):
            total[y:y + 64, x:x + 64] += values[i * len(cols) + j]
            count[y:y + 64, x:x + 64] += 1
    assert np.abs(total / count - num / den).max() > 0.1


@pytest.mark.parametrize("h,w,tile,overlap", [(100, 150, 64, 16), (96, 128, 32, 0), (70, 300, 64, 48)])
def test_local_model_gives_the_whole_image_result(h, w, tile, overlap):
    image, _ = synthetic_scene(h, w, seed=3)
    trimap = np.full((h, w), 128, np.uint8)
    model = LocalModel()
    out = predict_tiles(model, image, trimap, tile=tile, overlap=overlap)
    from core.preprocess import make_input
    with torch.no_grad():
        expected = model(torch.from_numpy(make_input(image, trimap))[None])[0][0, 0].numpy()
    np.testing.assert_allclose(out, expected, atol=1e-6, rtol=0)
    assert out.dtype == np.float32 and out.shape == (h, w)
    assert all(shape[0] % 32 == 0 and shape[1] % 32 == 0 for shape in model.calls[:-1])


def test_windows_without_unknown_are_skipped():
    h, w = 200, 260
    image, _ = synthetic_scene(h, w, seed=4)
    trimap = np.zeros((h, w), np.uint8)
    trimap[:, 200:] = 255
    trimap[150:160, 10:20] = 128  # one small unknown patch near the bottom-left corner
    model = LocalModel()
    out = predict_tiles(model, image, trimap, tile=64, overlap=16)
    rows, cols = tile_starts(h, 64, 16), tile_starts(w, 64, 16)
    hit = [(y, x) for y in rows[0] for x in cols[0]
           if y <= 159 and y + 64 > 150 and x <= 19 and x + 64 > 10]
    assert len(model.calls) == len(hit) < len(rows[0]) * len(cols[0])
    plan, skipped = plan_tiles(trimap, 64, 16)
    assert [(y, x) for y, x, _, _ in plan] == hit and skipped == len(rows[0]) * len(cols[0]) - len(hit)
    covered = np.zeros((h, w), bool)
    for y, x in hit:
        covered[y:y + 64, x:x + 64] = True
    # outside the predicted windows: trimap/255 (what forcing gives); inside: the model
    assert np.array_equal(out[~covered], trimap[~covered] / np.float32(255))
    assert np.all((out[covered] > 0) & (out[covered] < 1))
    np.testing.assert_array_equal(force_known(out, trimap)[~covered], out[~covered])
    # no unknown pixel at all: nothing is predicted
    model.calls.clear()
    known = np.where(trimap == 128, 255, trimap).astype(np.uint8)
    assert np.array_equal(predict_tiles(model, image, known, tile=64, overlap=16), known / np.float32(255))
    assert model.calls == []


def test_single_window_equals_whole_mode_exactly():
    model = random_model(seed=1)
    image, trimap = synthetic_scene(96, 128, seed=2)
    whole = predict(model, image, trimap, mode="whole")
    assert np.array_equal(predict_tiles(model, image, trimap, tile=128, overlap=32), whole)
    assert 0.05 < whole.std()  # the random model's alpha is not flat


def test_tiles_close_to_whole_mode_with_the_network():
    model = random_model(seed=0)
    image, trimap = synthetic_scene(96, 128, seed=5)
    whole = predict(model, image, trimap, mode="whole")
    tiled = predict_tiles(model, image, trimap, tile=64, overlap=32)
    unknown = trimap == 128
    diff = np.abs(tiled - whole)[unknown]
    assert diff.mean() < 0.04 and diff.max() < 0.25
    # the bounds have teeth: a 1-px shift, or windows that abut without blending, break them
    assert np.abs(np.roll(whole, 1, axis=1) - whole)[unknown].mean() > 0.04
    abutting = predict_tiles(model, image, trimap, tile=64, overlap=0)  # windows at 0 and 64 along x: a seam
    assert np.abs(abutting - whole)[unknown].max() > 0.25


@pytest.mark.parametrize("tile,overlap", [(100, 10), (0, 0), (64, 64), (64, -1)])
def test_bad_tile_arguments(tile, overlap):
    with pytest.raises(ValueError):
        plan_tiles(np.full((64, 64), 128, np.uint8), tile, overlap)


def test_tiling_does_not_import_inference():
    # core.inference builds on core.tiling (tile mode), so the reverse import would be a circle
    import os
    import subprocess
    import sys

    code = "import sys, core.tiling; print('core.inference' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.strip() == "False"
