"""The inference path (core/inference.py) and the folder loop of core/test.py.

Geometry, tiling, forcing and the stage choice are checked with stub models
whose outputs are known; fidelity is checked against ``tests/reference_impl.py``,
a plain transcription of the reference pipeline (SPEC §2, §9), for every
architecture variant with random weights.
"""

import os
import sys

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from reference_impl import (assert_same_matte, init_unsaturated, reference_forward,  # noqa: E402
                            reference_from_state_dict, reference_input, reference_predict)

from core.inference import force_known, predict, predict_matte, truncate_to_uint8, whole_size  # noqa: E402
from core.network import DIMNet  # noqa: E402
from core.folder import Pair, predict_folder  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


class EchoTrimap(nn.Module):
    """Stub network: alpha = the input's trimap channel (trimap/255); refined = 1 − alpha.

    Records every input it sees.
    """

    def __init__(self, refine=False):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # forward_once reads the device from a parameter
        self.refine = refine
        self.inputs = []

    def walk(self, x, ops):  # inference calls walk with its operations; a stub ignores them
        return self(x)

    def forward(self, x):
        self.inputs.append(x.clone())
        alpha = x[:, 3:4].clone()
        return alpha, (1 - alpha) if self.refine else None


class Constant(nn.Module):
    """Stub network: alpha = ``values[k]`` everywhere on its k-th call (refined = ``refined``)."""

    def __init__(self, values, refined=None):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.values, self.refined, self.calls = list(values), refined, 0
        self.refine = refined is not None

    def walk(self, x, ops):  # inference calls walk with its operations; a stub ignores them
        return self(x)

    def forward(self, x):
        n, _, h, w = x.shape
        alpha = torch.full((n, 1, h, w), self.values[self.calls])
        self.calls += 1
        refined = None if self.refined is None else torch.full((n, 1, h, w), self.refined)
        return alpha, refined


def random_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def lin(img, w, h):
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)


# --------------------------------------------------------------------------- #
# Geometry of the three modes
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("h, w, max_size, expected", [
    (100, 130, 1600, (96, 128)),     # rounded down to /32
    (96, 128, 1600, (96, 128)),      # already /32
    (1080, 1920, 1600, (1056, 1600)),  # width capped, aspect ratio not kept
    (2000, 70, 640, (640, 64)),
    (63, 200, 1600, (32, 192)),
])
def test_whole_size(h, w, max_size, expected):
    assert whole_size(h, w, max_size) == expected


def test_whole_size_too_small():
    with pytest.raises(ValueError):
        whole_size(31, 100, 1600)


def test_whole_mode_resizes_to_multiple_of_32_and_back():
    image = random_image(100, 130)
    trimap = np.random.default_rng(1).choice(np.uint8([0, 128, 255]), (100, 130))
    net = EchoTrimap()
    alpha = predict(net, image, trimap, mode="whole", max_size=1600)

    (x,) = net.inputs
    assert tuple(x.shape) == (1, 4, 96, 128)
    small_img, small_tri = lin(image, 128, 96), lin(trimap, 128, 96)
    # The input is built exactly like the reference (ToTensor + Normalize, trimap/255).
    assert torch.equal(x, reference_input(small_img, small_tri))
    expected = lin(small_tri.astype(np.float32) / np.float32(255), 130, 100)
    assert alpha.shape == (100, 130) and alpha.dtype == np.float32
    np.testing.assert_allclose(alpha, expected, atol=1e-6)


def test_whole_mode_caps_each_side_without_keeping_aspect():
    image, trimap = random_image(70, 700), np.full((70, 700), 128, np.uint8)
    net = EchoTrimap()
    alpha = predict(net, image, trimap, mode="whole", max_size=320)
    assert tuple(net.inputs[0].shape) == (1, 4, 64, 320)
    assert alpha.shape == (70, 700)


def test_resize_mode_uses_the_fixed_size():
    image = random_image(100, 130)
    trimap = np.zeros((100, 130), np.uint8)
    trimap[20:80, 30:100] = 128
    net = EchoTrimap()
    alpha = predict(net, image, trimap, mode="resize", size=(64, 96))
    assert tuple(net.inputs[0].shape) == (1, 4, 64, 96)
    expected = lin(lin(trimap, 96, 64).astype(np.float32) / np.float32(255), 130, 100)
    np.testing.assert_allclose(alpha, expected, atol=1e-6)


def crop_case():
    """100×130 image, 32×64 tiles: rows start at 0/32/64/96 (last 4 px), columns at 0/64/128 (last 2 px).

    Unknown pixels in tiles (0, 0), (1, 1) and the bottom-right edge tile (3, 2);
    tile (2, 0) is all foreground and every other tile background: those are skipped.
    """
    trimap = np.zeros((100, 130), np.uint8)
    trimap[5:20, 10:40] = 128
    trimap[40:60, 70:100] = 128
    trimap[64:96, 0:64] = 255
    trimap[97:100, 128:130] = 128
    return random_image(100, 130, seed=3), trimap, [(0, 0), (32, 64), (96, 128)]


def test_crop_mode_visits_only_tiles_with_unknown_pixels_in_raster_order():
    image, trimap, tiles = crop_case()
    net = EchoTrimap()
    alpha = predict(net, image, trimap, mode="crop", size=(32, 64))

    assert len(net.inputs) == len(tiles)
    for x, (y0, x0) in zip(net.inputs, tiles):
        assert tuple(x.shape) == (1, 4, 32, 64)
        img, tri = image[y0:y0 + 32, x0:x0 + 64], trimap[y0:y0 + 32, x0:x0 + 64]
        if tri.shape != (32, 64):  # the edge tile is resized up to the tile size
            img, tri = lin(img, 64, 32), lin(tri, 64, 32)
        assert torch.equal(x, reference_input(img, tri))

    expected = np.zeros((100, 130), np.float32)
    for y0, x0 in tiles[:2]:
        expected[y0:y0 + 32, x0:x0 + 64] = trimap[y0:y0 + 32, x0:x0 + 64] / np.float32(255)
    # Edge tile 4×2: resized to 32×64, echoed, resized back.
    edge = lin(trimap[96:100, 128:130], 64, 32).astype(np.float32) / np.float32(255)
    expected[96:100, 128:130] = lin(edge, 2, 4)
    np.testing.assert_allclose(alpha, expected, atol=1e-6)


def test_crop_mode_stitches_each_tile_in_place():
    image, trimap, tiles = crop_case()
    net = Constant([0.1, 0.2, 0.3])
    alpha = predict(net, image, trimap, mode="crop", size=(32, 64))
    expected = np.zeros((100, 130), np.float32)
    for value, (y0, x0) in zip([0.1, 0.2, 0.3], tiles):
        expected[y0:y0 + 32, x0:x0 + 64] = value
    np.testing.assert_allclose(alpha, expected, atol=1e-6)


# --------------------------------------------------------------------------- #
# Forcing, truncation, stage choice
# --------------------------------------------------------------------------- #
def test_truncate_to_uint8_truncates():
    alpha = np.float32([0.0, 0.0039, 0.00393, 0.5, 0.9999, 0.99999, 1.0])
    assert truncate_to_uint8(alpha).tolist() == [0, 0, 1, 127, 254, 254, 255]


def test_force_known():
    trimap = np.uint8([[0, 128, 255, 64]])
    alpha = np.float32([[0.3, 0.3, 0.3, 0.3]])
    np.testing.assert_array_equal(force_known(alpha, trimap), np.float32([[0, 0.3, 1, 0.3]]))
    assert alpha[0, 0] == np.float32(0.3)  # the input is left alone


def test_predict_matte_forces_known_regions_and_truncates():
    trimap = np.zeros((64, 96), np.uint8)
    trimap[:, 32:64] = 128
    trimap[:, 64:] = 255
    matte = predict_matte(Constant([0.9999]), random_image(64, 96), trimap, mode="whole")
    assert matte.dtype == np.uint8
    assert (matte[:, :32] == 0).all() and (matte[:, 32:64] == 254).all() and (matte[:, 64:] == 255).all()


@pytest.mark.parametrize("stage, expected", [(0, 0.25), (1, 0.25), (2, 0.75), (3, 0.75), (None, 0.75)])
def test_stage_picks_the_alpha(stage, expected):
    trimap = np.full((64, 64), 128, np.uint8)
    alpha = predict(Constant([0.25], refined=0.75), random_image(64, 64), trimap, stage=stage)
    np.testing.assert_allclose(alpha, expected, atol=1e-6)


def test_no_refinement_head_gives_the_encoder_decoder_alpha():
    trimap = np.full((64, 64), 128, np.uint8)
    np.testing.assert_allclose(predict(Constant([0.25]), random_image(64, 64), trimap), 0.25, atol=1e-6)
    with pytest.raises(ValueError):
        predict(Constant([0.25]), random_image(64, 64), trimap, stage=2)


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="crop"):
        predict(Constant([0.5]), random_image(64, 64), np.zeros((64, 64), np.uint8), mode="pad")


# --------------------------------------------------------------------------- #
# Fidelity: core/test.py's loop vs the plain reference pipeline
# --------------------------------------------------------------------------- #
def fidelity_images():
    """(name, image, trimap): 64×64 (no resize in whole mode) and 70×80 (whole → 64×64)
    whose unknown pixels fall in two of the four 64×64 crop tiles (one of them the
    6×16 corner tile) and whose foreground reaches into a skipped tile."""
    rng = np.random.default_rng(7)
    out = []
    for name, (h, w) in (("exact.png", (64, 64)), ("odd.png", (70, 80))):
        yy, xx = np.mgrid[:h, :w]
        smooth = np.stack([(yy * 3 + xx * 2) % 256, (xx * 4) % 256, (yy * 5) % 256], axis=-1)
        image = np.clip(smooth + rng.integers(-40, 41, (h, w, 3)), 0, 255).astype(np.uint8)
        trimap = np.zeros((h, w), np.uint8)
        trimap[10:50, 8:40] = 128
        trimap[20:40, 16:32] = 255
        trimap[60:, 66:] = 255
        trimap[66:, 70:] = 128
        out.append((name, image, trimap))
    return out


def unfilled_dimnet(**arch):
    """A DIMNet with uninitialised weights (init_unsaturated fills them; skips the default init)."""
    with torch.device("meta"):
        model = DIMNet(**arch)
    return model.to_empty(device="cpu")


ARCHS = [(skip, k, refine) for skip in (True, False) for k in (3, 1) for refine in (False, True)]


@pytest.mark.parametrize("skip, conv6_kernel, refine", ARCHS)
def test_written_mattes_match_the_reference_pipeline(tmp_path, skip, conv6_kernel, refine):
    model = init_unsaturated(unfilled_dimnet(refine=refine, skip=skip, conv6_kernel=conv6_kernel),
                             seed=ARCHS.index((skip, conv6_kernel, refine)))
    stages = (2, 3) if refine else (0, 1)
    ref = reference_from_state_dict(model.state_dict(), stages[0], skip, conv6_kernel)

    images = fidelity_images()
    pairs = []
    for name, image, trimap in images:
        for kind, arr in (("image", image), ("trimap", trimap)):
            os.makedirs(tmp_path / kind, exist_ok=True)
            cv2.imwrite(str(tmp_path / kind / name), arr)
        pairs.append(Pair(name, str(tmp_path / "image" / name), str(tmp_path / "trimap" / name), None))
    _, odd_image, odd_trimap = images[1]
    # Every image in whole mode; the odd-sized one in crop (edge tiles) and resize too.
    runs = [("whole", pairs, stages[0]), ("crop", pairs[1:], stages[1]), ("resize", pairs[1:], stages[1])]
    for mode, run_pairs, stage in runs:
        ref.stage = stage
        out = tmp_path / mode
        predict_folder(model, run_pairs, str(out), mode=mode, max_size=1600, size=(64, 64), stage=stage,
                       progress=False)
        for pair in run_pairs:
            image = cv2.imread(pair.image)
            trimap = cv2.imread(pair.trimap)[:, :, 0]
            expected = reference_predict(ref, image, trimap, mode=mode, max_size=1600, size_h=64, size_w=64,
                                         stage=stage)
            written = cv2.imread(str(out / pair.name), cv2.IMREAD_UNCHANGED)
            assert_same_matte(written, expected, (mode, pair.name))
            # The test could fail: the unknown region holds many distinct, unsaturated levels.
            unknown = written[trimap == 128]
            assert ((unknown > 0) & (unknown < 255)).mean() > 0.5
            assert len(np.unique(unknown)) >= 20, mode


def test_reference_oracle_tells_variants_apart():
    """Getting skip, the stage's alpha or the trimap scaling wrong moves mattes by more than one level."""
    model = init_unsaturated(unfilled_dimnet(refine=True, skip=True, conv6_kernel=3), seed=11)
    _, image, trimap = fidelity_images()[0]
    state = model.state_dict()
    x = reference_input(image, trimap)
    alpha, refined = reference_forward(state, x, 2, True, 3)
    good = truncate_to_uint8(force_known(refined[0, 0].numpy(), trimap))
    assert_same_matte(predict_matte(model, image, trimap, mode="whole", stage=2), good)

    ref = reference_from_state_dict(state, 2, False, 3)
    with torch.no_grad():
        no_skip = ref(x)[1]
        ref.skip = True
        wrong_trimap = ref(torch.cat([x[:, :3], x[:, 3:] * 255 / 256], 1))[1]  # unknown ≈ 0.5, not 128/255
        bgr_input = ref(x[:, [2, 1, 0, 3]])[1]
    for wrong in (no_skip, alpha, wrong_trimap, bgr_input):
        with pytest.raises(AssertionError):
            assert_same_matte(truncate_to_uint8(force_known(wrong[0, 0].numpy(), trimap)), good)
    # The bounds also catch rounding where the reference truncates.
    rounded = np.round(force_known(refined[0, 0].numpy(), trimap) * 255).astype(np.uint8)
    with pytest.raises(AssertionError):
        assert_same_matte(rounded, good)


# --------------------------------------------------------------------------- #
# Backend details: the NNPACK fallback, autocast

def test_an_nnpack_failure_falls_back_to_the_exact_kernel_for_good(monkeypatch):
    import core.ops.lean as network
    from core.ops.lean import conv_lean

    calls = []

    def rejecting(*args):
        calls.append(args[0].shape)
        raise RuntimeError("NNPACK rejected this shape")

    monkeypatch.setattr(network, "_nnpack_failed", False)
    monkeypatch.setattr(torch.backends.nnpack, "is_available", lambda: True)
    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", rejecting)
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 16, 3, padding=1)
    x = torch.randn(1, 16, 40, 40)
    with torch.inference_mode():
        expected = conv(x)
        assert torch.equal(conv_lean(conv, x, relu=False, exact=False), expected)  # NNPACK tried, oneDNN used
        assert calls == [(1, 16, 40, 40)] and network._nnpack_failed
        assert torch.equal(conv_lean(conv, x, relu=False, exact=False), expected)
    assert len(calls) == 1  # not tried again


def autocast_recorder(monkeypatch):
    entered = []
    real = torch.autocast

    class Recorder(real):
        def __init__(self, device_type, dtype=None, enabled=True, **kw):
            entered.append((device_type, dtype, enabled))
            super().__init__(device_type, dtype=dtype, enabled=enabled, **kw)

    monkeypatch.setattr(torch, "autocast", Recorder)
    return entered


def test_forward_once_autocasts_on_cuda_only(monkeypatch):
    from core.inference import forward_once
    from tests.tiny_model import TinyDIM

    entered = autocast_recorder(monkeypatch)
    image = np.zeros((32, 64, 3), np.uint8)
    trimap = np.full((32, 64), 128, np.uint8)
    model = TinyDIM().eval()
    plain = forward_once(model, image, trimap)
    assert np.array_equal(forward_once(model, image, trimap, amp=True), plain)  # --amp: nothing on the CPU
    assert entered == [("cpu", torch.float16, False)] * 2
    if torch.cuda.is_available():
        entered.clear()
        got = forward_once(model.cuda(), image, trimap, amp=True)
        assert entered == [("cuda", torch.float16, True)]
        assert np.abs(got - plain).max() < 2e-3  # float16 rounding
