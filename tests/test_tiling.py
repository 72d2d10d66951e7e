"""core/tiling.py: window layout, blending weights, skipping, and agreement with
whole-image prediction.

Tolerances: with one window covering the image, tile mode runs the very same
forward pass as whole mode, so the results are equal bit for bit. With a
pixel-local model (1×1 convolutions) every window predicts the same value for
a pixel, so the blended result equals the whole-image one up to float32
rounding of the weighted mean (1e-6). With the real network, windows see less
context than the whole image, so there is no exact answer: for 64-px windows
overlapping 32 px on a 96×128 image, random calibrated weights (three seeds)
give a mean |Δα| over the unknown region of 0.018–0.022 and a max of 0.12–0.14;
the bounds below (0.04 and 0.25) leave about twice that, while misplaced
windows (a 1-px shift: 0.17–0.22 mean) or abutting windows without blending
(max 0.47–0.70) fail them.
"""

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
