"""The training losses (SPEC §7) against hand computations and an independent
per-pixel implementation of the reference's formulas."""

import math

import numpy as np
import pytest
import torch

from core.losses import EPS2, alpha_loss, composition_loss, simple_alpha_loss, stage_loss

D = torch.float64  # exact enough to compare with Python floats


def t(values):
    return torch.tensor(values, dtype=D)


def c(x):
    """Charbonnier term sqrt(x² + ε²) in Python floats."""
    return math.sqrt(x * x + 1e-12)


# 1×1×2×2: unknown at (0,0) and (1,0); the known pixels have large errors that must not count.
PRED = t([[[[0.2, 0.9], [0.7, 0.0]]]])
ALPHA = t([[[[0.0, 0.0], [1.0, 1.0]]]])
TRIMAP = t([[[[128, 0], [128, 255]]]])


def test_alpha_loss_by_hand():
    want = (c(0.2) + c(0.3)) / (2 + 1)
    assert alpha_loss(PRED, ALPHA, TRIMAP).item() == pytest.approx(want, rel=1e-12)


def test_denominator_offset_and_eps_are_explicit():
    assert alpha_loss(PRED, ALPHA, TRIMAP, denom_offset=0).item() == pytest.approx((c(0.2) + c(0.3)) / 2, rel=1e-12)
    no_eps = alpha_loss(PRED, ALPHA, TRIMAP, eps2=0.0).item()
    assert no_eps == pytest.approx((0.2 + 0.3) / 3, rel=1e-14)
    # No unknown pixel: the + 1 keeps the loss finite (0), not 0/0.
    known = t([[[[0, 255], [255, 0]]]])
    assert alpha_loss(PRED, ALPHA, known).item() == 0.0
    assert composition_loss(PRED, torch.zeros(1, 3, 2, 2, dtype=D), torch.zeros(1, 3, 2, 2, dtype=D),
                            torch.zeros(1, 3, 2, 2, dtype=D), known).item() == 0.0


def test_unknown_is_exactly_128():
    trimap = t([[[[127, 129], [128, 255]]]])  # only (1,0) is unknown
    assert alpha_loss(PRED, ALPHA, trimap).item() == pytest.approx(c(0.3) / 2, rel=1e-12)
    # uint8 trimaps work the same
    assert alpha_loss(PRED, ALPHA, trimap.to(torch.uint8)).item() == pytest.approx(c(0.3) / 2, rel=1e-12)


def test_unknown_count_is_the_whole_batch():
    pred = torch.cat([PRED, PRED.flip(-1)])
    alpha = torch.cat([ALPHA, ALPHA])
    trimap = torch.cat([TRIMAP, t([[[[128, 128], [128, 0]]]])])  # 2 + 3 unknown pixels
    errs = [c(0.2), c(0.3), c(0.0 - 0.9), c(0.2 - 0.0), c(0.0 - 1.0)]
    want = sum(errs) / (5 + 1)
    assert alpha_loss(pred, alpha, trimap).item() == pytest.approx(want, rel=1e-12)
    # not the mean of per-sample losses
    per_sample = [alpha_loss(pred[i:i + 1], alpha[i:i + 1], trimap[i:i + 1]).item() for i in range(2)]
    assert abs(np.mean(per_sample) - want) > 1e-3


def test_composition_loss_by_hand():
    # one unknown pixel (0,0) and one known (0,1); BGR 0..255
    pred = t([[[[0.25, 0.5]]]])
    fg = t([[[[200, 0]], [[100, 0]], [[40, 0]]]])
    bg = t([[[[0, 9]], [[20, 9]], [[240, 9]]]])
    image = t([[[[60, 0]], [[50, 0]], [[180, 0]]]])
    trimap = t([[[[128, 255]]]])
    comp = [0.25 * f + 0.75 * b for f, b in ((200, 0), (100, 20), (40, 240))]  # 50, 40, 190
    want = sum(c(cv - iv) / 255 for cv, iv in zip(comp, (60, 50, 180))) / (1 + 1) / 3
    assert composition_loss(pred, fg, bg, image, trimap).item() == pytest.approx(want, rel=1e-12)
    assert want == pytest.approx(30 / 255 / 6, rel=1e-9)


def test_simple_alpha_loss_counts_eps_for_known_pixels():
    n_known = 2
    want = (c(0.2) + c(0.3) + n_known * 1e-6) / (2 + 1)
    assert simple_alpha_loss(PRED, ALPHA, TRIMAP).item() == pytest.approx(want, rel=1e-12)
    gap = simple_alpha_loss(PRED, ALPHA, TRIMAP) - alpha_loss(PRED, ALPHA, TRIMAP)
    assert gap.item() == pytest.approx(n_known * math.sqrt(EPS2) / 3, rel=1e-6)
    # all known: every pixel adds ε and the denominator is 0 + 1
    pred = torch.rand(2, 1, 4, 5, dtype=D)
    val = simple_alpha_loss(pred, torch.rand(2, 1, 4, 5, dtype=D), torch.full((2, 1, 4, 5), 255.0, dtype=D))
    assert val.item() == pytest.approx(40 * 1e-6, rel=1e-9)


def reference_losses(pred, refined, alpha, trimap, fg, bg, image, wl):
    """The reference's formulas, pixel by pixel in Python floats (N×H×W loops)."""
    n, _, h, w = pred.shape
    u = a_sum = c_sum = r_sum = s_sum = 0.0
    for i in range(n):
        for y in range(h):
            for x in range(w):
                unknown = trimap[i, 0, y, x] == 128
                p, a = pred[i, 0, y, x], alpha[i, 0, y, x]
                s_sum += c((p - a) if unknown else 0.0)
                if not unknown:
                    continue
                u += 1
                a_sum += c(p - a)
                r_sum += c(refined[i, 0, y, x] - a)
                for ch in range(3):
                    comp = p * fg[i, ch, y, x] + (1 - p) * bg[i, ch, y, x]
                    c_sum += c(comp - image[i, ch, y, x]) / 255
    al, cl, rl = a_sum / (u + 1), c_sum / (u + 1) / 3, r_sum / (u + 1)
    s1 = wl * al + (1 - wl) * cl
    return {0: s_sum / (u + 1), 1: s1, 2: rl, 3: s1 + rl, "alpha": al, "comp": cl}


def test_stage_losses_match_the_reference_formulas():
    g = torch.Generator().manual_seed(0)
    n, h, w = 2, 5, 6
    pred = torch.rand(n, 1, h, w, generator=g, dtype=D)
    refined = torch.rand(n, 1, h, w, generator=g, dtype=D)
    alpha = torch.rand(n, 1, h, w, generator=g, dtype=D)
    trimap = torch.tensor([0.0, 128.0, 255.0], dtype=D)[torch.randint(0, 3, (n, 1, h, w), generator=g)]
    fg, bg, image = (torch.rand(n, 3, h, w, generator=g, dtype=D) * 255 for _ in range(3))
    batch = {"alpha": alpha, "trimap": trimap, "fg": fg, "bg": bg, "image": image}
    wl = 0.3
    ref = reference_losses(pred.numpy(), refined.numpy(), alpha.numpy(), trimap.numpy(), fg.numpy(), bg.numpy(),
                           image.numpy(), wl)
    for stage in range(4):
        out = stage_loss(stage, pred, refined, batch, wl_weight=wl)
        assert out["loss"].item() == pytest.approx(ref[stage], rel=1e-6), stage
    s1 = stage_loss(1, pred, None, batch, wl_weight=wl)
    assert set(s1) == {"loss", "alpha", "comp"}
    assert s1["alpha"].item() == pytest.approx(ref["alpha"], rel=1e-6)
    assert s1["comp"].item() == pytest.approx(ref["comp"], rel=1e-6)
    assert s1["loss"].item() == pytest.approx(wl * s1["alpha"].item() + (1 - wl) * s1["comp"].item(), rel=1e-6)
    s3 = stage_loss(3, pred, refined, batch, wl_weight=wl)
    assert set(s3) == {"loss", "stage1", "stage2", "alpha", "comp"}
    assert s3["loss"].item() == pytest.approx(s1["loss"].item() + stage_loss(2, pred, refined, batch)["loss"].item(),
                                              rel=1e-6)
    assert set(stage_loss(2, pred, refined, batch)) == {"loss"}
    # the default weight is the reference's 0.5
    half = stage_loss(1, pred, None, batch)["loss"].item()
    assert half == pytest.approx(0.5 * ref["alpha"] + 0.5 * ref["comp"], rel=1e-6)


def test_stage_loss_errors_and_float16_predictions():
    batch = {"alpha": ALPHA.float(), "trimap": TRIMAP.float()}
    with pytest.raises(ValueError, match="refined"):
        stage_loss(2, PRED.float(), None, batch)
    with pytest.raises(ValueError, match="stage"):
        stage_loss(4, PRED.float(), None, batch)
    # AMP predictions come as float16: the loss is computed in float32 (ε² = 1e-12 would vanish in float16)
    out = stage_loss(0, ALPHA.half(), None, batch)["loss"]
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(4 * 1e-6 / 3, rel=1e-3)


def test_gradient_is_finite_at_zero_error():
    pred = ALPHA.clone().requires_grad_(True)
    alpha_loss(pred, ALPHA, TRIMAP).backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().max().item() == 0.0
    pred = PRED.clone().requires_grad_(True)
    alpha_loss(pred, ALPHA, TRIMAP).backward()
    # d/dp sqrt((p-a)^2+ε²) = (p-a)/sqrt(...) ≈ sign(p-a), divided by |U| + 1 = 3; known pixels get 0
    want = t([[[[1 / 3, 0.0], [-1 / 3, 0.0]]]])
    assert torch.allclose(pred.grad, want, atol=1e-9)
