"""core.metrics against hand-computed values and an independent slow implementation
written here straight from METRICS.md (explicit loops, BFS in column-major order)."""

import json
import math
from collections import deque

import cv2
import numpy as np
import pytest

from core import metrics as M
from core.metrics import (compute_metrics, connectivity_error, format_table, gauss_gradient_kernel,
                          gradient_error, mean_metrics, mse, read_triplet, sad, write_metrics_csv,
                          write_metrics_json)
from core.utils import UserError


# --------------------------------------------------------------------------- #
# Independent slow oracle (float64, pure Python loops, uint8 inputs)
# --------------------------------------------------------------------------- #
def oracle_kernel(sigma=1.4, eps=0.01):
    half = math.ceil(sigma * math.sqrt(-2 * math.log(math.sqrt(2 * math.pi) * sigma * eps)))
    size = 2 * half + 1

    def gauss(x):
        return math.exp(-x * x / (2 * sigma * sigma)) / (sigma * math.sqrt(2 * math.pi))

    hx = [[gauss(i - half) * (-(j - half) * gauss(j - half) / sigma ** 2) for j in range(size)]
          for i in range(size)]
    norm = math.sqrt(sum(v * v for row in hx for v in row))
    return [[v / norm for v in row] for row in hx]


def oracle_conv(img, k):
    """True 2-D convolution, replicate borders, same size."""
    H, W, h = len(img), len(img[0]), len(k) // 2
    out = [[0.0] * W for _ in range(H)]
    for y in range(H):
        for x in range(W):
            s = 0.0
            for i in range(len(k)):
                for j in range(len(k)):
                    yy = min(max(y - (i - h), 0), H - 1)
                    xx = min(max(x - (j - h), 0), W - 1)
                    s += img[yy][xx] * k[i][j]
            out[y][x] = s
    return out


def oracle_magnitude(a):
    H, W = len(a), len(a[0])
    lo, hi = min(map(min, a)), max(map(max, a))
    if lo == hi:
        return [[0.0] * W for _ in range(H)]
    img = [[(v - lo) / (hi - lo) for v in row] for row in a]
    hx = oracle_kernel()
    hy = [list(r) for r in zip(*hx, strict=True)]
    gx, gy = oracle_conv(img, hx), oracle_conv(img, hy)
    return [[math.hypot(gx[y][x], gy[y][x]) for x in range(W)] for y in range(H)]


def oracle_largest(B):
    """Largest 4-connected component; components found in column-major scan order and
    a later one must be strictly larger to win, so ties keep the column-major first."""
    H, W = len(B), len(B[0])
    seen = [[False] * W for _ in range(H)]
    best = set()
    for x in range(W):
        for y in range(H):
            if B[y][x] and not seen[y][x]:
                comp, queue = set(), deque([(y, x)])
                seen[y][x] = True
                while queue:
                    cy, cx = queue.popleft()
                    comp.add((cy, cx))
                    for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                        if 0 <= ny < H and 0 <= nx < W and B[ny][nx] and not seen[ny][nx]:
                            seen[ny][nx] = True
                            queue.append((ny, nx))
                if len(comp) > len(best):
                    best = comp
    return best


def oracle(pred, gt, trimap):
    """All four metrics for uint8 H×W inputs, straight from METRICS.md, in float64."""
    P, G, T = pred.astype(int).tolist(), gt.astype(int).tolist(), trimap.tolist()
    H, W = len(P), len(P[0])
    U = [(y, x) for x in range(W) for y in range(H) if T[y][x] == 128]
    p = [[v / 255 for v in row] for row in P]
    g = [[v / 255 for v in row] for row in G]
    sad_v = sum(abs(p[y][x] - g[y][x]) for y, x in U) / 1000
    mse_v = sum((p[y][x] - g[y][x]) ** 2 for y, x in U) / len(U) if U else float("nan")
    mp, mg = oracle_magnitude(P), oracle_magnitude(G)
    grad_v = sum((mp[y][x] - mg[y][x]) ** 2 for y, x in U) / 1000
    # Exact thresholds: P/255 >= k/10  <=>  10·P >= 255·k in integers (METRICS.md §4.4 step 2).
    L = [[None] * W for _ in range(H)]
    for k in range(1, 11):
        omega = oracle_largest([[10 * P[y][x] >= 255 * k and 10 * G[y][x] >= 255 * k for x in range(W)]
                                for y in range(H)])
        for y in range(H):
            for x in range(W):
                if L[y][x] is None and (y, x) not in omega:
                    L[y][x] = (k - 1) / 10
    conn_v = 0.0
    for y, x in U:
        level = 1.0 if L[y][x] is None else L[y][x]
        dp, dg = p[y][x] - level, g[y][x] - level
        conn_v += abs((1 - dp * (dp >= 0.15)) - (1 - dg * (dg >= 0.15)))
    return {"sad": sad_v, "mse": mse_v, "grad": grad_v, "conn": conn_v / 1000}


def random_case(rng, h, w):
    """Smooth random gt with saturated 0/255 areas, a noisy prediction, a random trimap."""
    field = cv2.resize(rng.random((4, 5)), (w, h), interpolation=cv2.INTER_LINEAR)
    gt = np.clip((field - 0.25) * 1.8 * 255, 0, 255).astype(np.uint8)
    pred = np.clip(gt.astype(int) + rng.integers(-60, 61, (h, w)), 0, 255).astype(np.uint8)
    pred[rng.random((h, w)) < 0.1] = 255
    trimap = rng.choice(np.array([0, 128, 128, 128, 255], np.uint8), (h, w))
    return pred, gt, trimap


def assert_close(got, want, rel=1e-5):
    for key in M.METRIC_KEYS:
        assert got[key] == pytest.approx(want[key], rel=rel, abs=1e-12), key


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_slow_oracle_on_random_maps(seed):
    rng = np.random.default_rng(seed)
    pred, gt, trimap = random_case(rng, 17 + seed, 23)
    want = oracle(pred, gt, trimap)
    assert want["conn"] > 0 and want["grad"] > 0
    assert_close(compute_metrics(pred, gt, trimap), want)


def test_each_function_matches_compute_metrics():
    pred, gt, trimap = random_case(np.random.default_rng(7), 16, 16)
    got = compute_metrics(pred, gt, trimap)
    assert got == {"sad": sad(pred, gt, trimap), "mse": mse(pred, gt, trimap),
                   "grad": gradient_error(pred, gt, trimap), "conn": connectivity_error(pred, gt, trimap)}


# --------------------------------------------------------------------------- #
# Hand-computed values
# --------------------------------------------------------------------------- #
def test_sad_mse_only_unknown_and_no_uint8_wraparound():
    # (0,1): gt 0 although the trimap says 255; (1,1): gt 200 although it says 0. Neither counts.
    pred = np.array([[10, 255], [100, 0]], np.uint8)
    gt = np.array([[20, 0], [50, 200]], np.uint8)
    trimap = np.array([[128, 255], [128, 0]], np.uint8)
    # 10 − 20 would wrap to 246 in uint8.
    assert sad(pred, gt, trimap) == pytest.approx((10 + 50) / 255 / 1000, rel=1e-6)
    assert mse(pred, gt, trimap) == pytest.approx(((10 / 255) ** 2 + (50 / 255) ** 2) / 2, rel=1e-6)


def test_no_unknown_pixel_gives_nan_mse_and_zero_sums():
    pred, gt, _ = random_case(np.random.default_rng(1), 12, 12)
    trimap = np.where(gt > 127, 255, 0).astype(np.uint8)
    got = compute_metrics(pred, gt, trimap)
    assert math.isnan(got["mse"])
    assert got["sad"] == got["grad"] == got["conn"] == 0.0


def test_trimap_values_other_than_128_are_not_unknown():
    pred = np.full((4, 4), 255, np.uint8)
    gt = np.zeros((4, 4), np.uint8)
    trimap = np.full((4, 4), 127, np.uint8)  # e.g. after an interpolated resize
    trimap[0, 0] = 128
    assert sad(pred, gt, trimap) == pytest.approx(1 / 1000)


def test_kernel_matches_metrics_md():
    k = gauss_gradient_kernel()
    assert k.shape == (9, 9)
    np.testing.assert_allclose(
        k[4], [0.027487, 0.122946, 0.293474, 0.315434, 0, -0.315434, -0.293474, -0.122946, -0.027487],
        atol=1e-6)
    assert np.sqrt((k ** 2).sum()) == pytest.approx(1.0)
    assert abs(k.sum()) < 1e-12
    assert M._gauss_1d(1.4, 0.01)[2] == pytest.approx(0.1017678, abs=1e-7)  # norm before scaling
    np.testing.assert_allclose(k, np.array(oracle_kernel()), rtol=1e-12, atol=1e-15)


def step_magnitude(width, edge):
    """|Gx| of a 0→1 vertical step at column ``edge`` (constant down the columns), by hand:
    Gx(x) = ΣG(u)·Σ_{v ≤ x−edge} G'(v) / norm; Gy = 0 since ΣG'(u) = 0."""
    g, dg, norm = M._gauss_1d(1.4, 0.01)
    h = len(g) // 2
    return np.array([abs(g.sum() * sum(dg[v + h] for v in range(-h, h + 1) if x - v >= edge) / norm)
                     for x in range(width)])


def step_case(low, high, h=6, w=14, edge=7):
    pred = np.full((h, w), low, np.uint8)
    pred[:, edge:] = high
    gt = np.full((h, w), 37, np.uint8)
    trimap = np.full((h, w), 128, np.uint8)
    trimap[:, :2] = 0
    return pred, gt, trimap


@pytest.mark.parametrize("low, high", [(0, 255), (50, 150), (0, 100)])
def test_gradient_uses_mat2gray_per_map(low, high):
    # Any two-level step becomes the same 0/1 step after mat2gray; the constant gt has
    # zero gradient. /255 instead of mat2gray would scale the answer by ((high-low)/255)².
    h, w, edge = 6, 14, 7
    pred, gt, trimap = step_case(low, high, h, w, edge)
    mag = step_magnitude(w, edge)
    want = h * float(np.sum(mag[2:] ** 2)) / 1000
    assert want > 0
    assert gradient_error(pred, gt, trimap) == pytest.approx(want, rel=1e-6)
    assert gradient_error(gt, pred, trimap) == pytest.approx(want, rel=1e-6)
    # Same step transposed: Hy = Hxᵀ.
    assert gradient_error(pred.T.copy(), gt.T.copy(), trimap.T.copy()) == pytest.approx(want, rel=1e-6)


def test_gradient_of_constant_maps_is_zero():
    trimap = np.full((8, 8), 128, np.uint8)
    assert gradient_error(np.full((8, 8), 77, np.uint8), np.full((8, 8), 200, np.uint8), trimap) == 0.0


def conn_tie_case():
    """Two 3-pixel components at every threshold up to 0.9: A (column 4, rows 0–2) comes
    first in row-major order, B (row 4, columns 0–2) first in column-major order."""
    pred = np.zeros((5, 6), np.uint8)
    gt = np.zeros((5, 6), np.uint8)
    pred[0:3, 4], gt[0:3, 4] = 255, 230  # A
    pred[4, 0:3], gt[4, 0:3] = 230, 255  # B
    trimap = np.zeros((5, 6), np.uint8)
    trimap[0:3, 4] = 128  # only A is evaluated
    return pred, gt, trimap


def test_conn_tie_goes_to_first_component_in_column_major_order():
    pred, gt, trimap = conn_tie_case()
    # Column-major: B wins, so A's pixels leave at t=0.1 and get L = 0:
    # φ_p = 1 − 1 = 0, φ_g = 1 − 230/255, |Δ| = 25/255 each. (Row-major would keep A → 0.)
    # B meets an empty intersection at t = 1.0 and gets L = 0.9 (not evaluated here).
    assert connectivity_error(pred, gt, trimap) == pytest.approx(3 * (25 / 255) / 1000, rel=1e-6)
    assert oracle(pred, gt, trimap)["conn"] == pytest.approx(3 * (25 / 255) / 1000)
    # The transposed case swaps the orders: A is now first in column-major order and survives,
    # reaching L = 0.9 via the empty intersection at 1.0: d < 0.15 for both maps → 0.
    assert connectivity_error(pred.T.copy(), gt.T.copy(), trimap.T.copy()) == 0.0


def test_conn_excludes_background_label():
    # One 3-pixel component inside a larger background: the background (label 0) must not
    # be taken as the largest component, otherwise the component gets L = 0 (Δ = 25/255 each).
    pred, gt, trimap = conn_tie_case()
    pred[4, 0:3] = gt[4, 0:3] = 0
    assert connectivity_error(pred, gt, trimap) == 0.0


def empty_intersection_case():
    pred = np.full((3, 4), 64, np.uint8)
    gt = np.full((3, 4), 191, np.uint8)
    trimap = np.full((3, 4), 128, np.uint8)
    trimap[0, 0] = 255
    return pred, gt, trimap


def test_conn_empty_intersection_assigns_previous_threshold():
    # pred 64 (0.251), gt 191 (0.749): the intersection is the whole map up to t = 0.2 and
    # empty from t = 0.3, so every pixel gets L = 0.2. φ_p = 1 (d = 0.051),
    # φ_g = 1 − (191/255 − 0.2). (Skipping empty thresholds would give L = 1 and 0.)
    pred, gt, trimap = empty_intersection_case()
    assert connectivity_error(pred, gt, trimap) == pytest.approx(11 * (191 / 255 - 0.2) / 1000, rel=1e-6)


def case_153():
    return np.full((2, 3), 153, np.uint8), np.full((2, 3), 200, np.uint8), np.full((2, 3), 128, np.uint8)


def test_conn_153_counts_as_at_least_0_6():
    # 153/255 = 0.6 must pass t_6 = 0.6000000000000001, so L = 0.6 and Δ = 200/255 − 0.6;
    # dropping it at 0.6 (float64 alphas vs arange thresholds) gives L = 0.5 and Δ = 200/255 − 0.5.
    pred, gt, trimap = case_153()
    assert connectivity_error(pred, gt, trimap) == pytest.approx(6 * (200 / 255 - 0.6) / 1000, rel=1e-6)
    assert M.conn_thresholds()[6] == 0.6000000000000001
    assert M.conn_thresholds()[3] == 0.30000000000000004


# The official MATLAB functions run under GNU Octave 7.3 + octave-image 2.14 on exactly these
# inputs (saved as PNGs, read like evaluate.m; Grad and Conn /1000 as evaluate.m; the
# empty-intersection guard of the GCA copy), printed with 9 significant digits, which
# identifies a float32 exactly. Order: SAD, MSE, Grad, Conn.
OCTAVE = {
    "tie": (conn_tie_case, (0.000294117664, 0.00961168855, 9.28315148e-06, 0.000294117635)),
    "tie_transposed": (lambda: tuple(a.T.copy() for a in conn_tie_case()),
                       (0.000294117664, 0.00961168855, 9.28315148e-06, 0.0)),
    "empty": (empty_intersection_case, (0.00547843101, 0.24804306, 0.0, 0.00603921618)),
    "153": (case_153, (0.00110588246, 0.0339715518, 0.0, 0.00110588234)),
    "step0_255": (lambda: step_case(0, 255), (0.0402588211, 0.435105681, 0.117544293, 0.0378000028)),
    "step50_150": (lambda: step_case(50, 150), (0.020141175, 0.115632445, 0.117544293, 0.0205058884)),
    "step0_100": (lambda: step_case(0, 100), (0.0147294132, 0.0443778038, 0.117544293, 0.0122705884)),
    "random": (lambda: random_case(np.random.default_rng(0), 17, 23),
               (0.0290705878, 0.042083513, 0.0186883751, 0.0298607834)),
}


@pytest.mark.parametrize("name", list(OCTAVE))
def test_bit_exact_with_official_code_under_octave(name):
    build, want = OCTAVE[name]
    got = compute_metrics(*build())
    assert [np.float32(got[k]) for k in M.METRIC_KEYS] == [np.float32(v) for v in want]


def test_float_inputs_equal_uint8_inputs():
    pred, gt, trimap = random_case(np.random.default_rng(5), 20, 20)
    want = compute_metrics(pred, gt, trimap)
    for dtype in (np.float32, np.float64):
        got = compute_metrics(pred.astype(dtype) / dtype(255), gt.astype(dtype) / dtype(255), trimap)
        assert got["sad"] == want["sad"] and got["mse"] == want["mse"] and got["conn"] == want["conn"]
        assert got["grad"] == pytest.approx(want["grad"], rel=1e-6)


def test_non_contiguous_inputs():
    pred, gt, trimap = random_case(np.random.default_rng(4), 30, 26)
    want = compute_metrics(pred.T.copy(), gt.T.copy(), trimap.T.copy())
    assert compute_metrics(pred.T, gt.T, trimap.T) == want
    assert compute_metrics(pred[::2, 1:], gt[::2, 1:], trimap[::2, 1:]) == \
        compute_metrics(*(np.ascontiguousarray(a[::2, 1:]) for a in (pred, gt, trimap)))


def test_sums_are_sequential_float32_column_then_row():
    x = np.random.default_rng(3).random((300, 40)).astype(np.float32) * 1000
    want = np.float32(0)
    for j in range(x.shape[1]):
        col = np.float32(0)
        for i in range(x.shape[0]):
            col = np.float32(col + x[i, j])
        want = np.float32(want + col)
    assert M._sum_f32(x) == want


@pytest.mark.parametrize("args, match", [
    ((np.zeros((2, 2, 1), np.uint8), np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8)), "pred must be a 2-D"),
    ((np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8), np.zeros((2, 2), np.uint8)), "shapes differ"),
    ((np.zeros((2, 2), np.int16), np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8)), "dtype int16"),
    ((np.full((2, 2), 1.5), np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8)), r"must lie in \[0, 1\]"),
    ((np.zeros((2, 2)), np.full((2, 2), np.nan), np.zeros((2, 2), np.uint8)), "gt is float"),
    ((np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8), np.zeros((2, 2))), "trimap has dtype float64"),
    ((np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8), np.zeros((2,), np.uint8)), "trimap must be a 2-D"),
    ((np.zeros((0, 3), np.uint8), np.zeros((0, 3), np.uint8), np.zeros((0, 3), np.uint8)), "empty"),
])
def test_invalid_inputs_raise(args, match):
    for fn in (sad, mse, gradient_error, connectivity_error, compute_metrics):
        with pytest.raises(ValueError, match=match):
            fn(*args)


# --------------------------------------------------------------------------- #
# Reading and reporting
# --------------------------------------------------------------------------- #
def write_triplet(tmp_path, pred, gt, trimap):
    paths = [str(tmp_path / f"{what}.png") for what in ("pred", "alpha", "trimap")]
    for path, img in zip(paths, (pred, gt, trimap), strict=True):
        assert cv2.imwrite(path, img)
    return paths


def test_read_triplet_keeps_matlab_channel_one_of_rgb_alpha(tmp_path):
    pred = np.full((4, 5), 9, np.uint8)
    gt_bgr = np.zeros((4, 5, 3), np.uint8)
    gt_bgr[..., 0], gt_bgr[..., 1], gt_bgr[..., 2] = 1, 2, 3  # R = 3
    trimap = np.full((4, 5), 128, np.uint8)
    p, g, t = read_triplet(*write_triplet(tmp_path, pred, gt_bgr, trimap))
    assert p.shape == g.shape == t.shape == (4, 5)
    assert (g == 3).all() and (p == 9).all() and (t == 128).all()


def test_read_triplet_errors_name_the_file(tmp_path):
    ok = (np.zeros((4, 5), np.uint8), np.zeros((4, 5), np.uint8), np.full((4, 5), 128, np.uint8))
    pred_path, alpha_path, trimap_path = write_triplet(tmp_path, *ok)
    cases = {
        "missing": (str(tmp_path / "nope.png"), "prediction not found"),
        "rgb": (np.zeros((4, 5, 3), np.uint8), "3 channels"),
        "16bit": (np.zeros((4, 5), np.uint16), "8-bit"),
        "size": (np.zeros((5, 5), np.uint8), "is 5×5 but the ground truth"),
        "corrupt": (b"not a png", "not a readable image"),
    }
    for name, (content, match) in cases.items():
        path = str(tmp_path / f"{name}.png")
        if isinstance(content, str):
            path = content
        elif isinstance(content, bytes):
            (tmp_path / f"{name}.png").write_bytes(content)
        else:
            assert cv2.imwrite(path, content)
        with pytest.raises(UserError, match=match) as info:
            read_triplet(path, alpha_path, trimap_path)
        assert path in str(info.value) and "\n" not in str(info.value)


def test_check_folders_reads_png_headers(tmp_path):
    for d in ("pred", "alpha", "trimap"):
        (tmp_path / d).mkdir()
    names = ["a.png", "b.png", "c.png"]
    for n in names:
        cv2.imwrite(str(tmp_path / "alpha" / n), np.zeros((4, 5), np.uint8))
        cv2.imwrite(str(tmp_path / "trimap" / n), np.full((4, 5), 128, np.uint8))
    cv2.imwrite(str(tmp_path / "pred" / "a.png"), np.zeros((4, 5), np.uint8))
    cv2.imwrite(str(tmp_path / "pred" / "b.png"), np.zeros((4, 5), np.uint16))  # 16-bit
    cv2.imwrite(str(tmp_path / "pred" / "c.png"), np.zeros((4, 6), np.uint8))  # another size
    folders = [str(tmp_path / d) for d in ("pred", "alpha", "trimap")]
    with pytest.raises(UserError) as err:
        M.check_folders(names, *folders)
    msg = str(err.value)
    assert msg.startswith("2 files do not fit the ground truth: ") and "\n" not in msg
    assert f"{tmp_path / 'pred' / 'b.png'} (not a single-channel 8-bit PNG)" in msg
    assert f"{tmp_path / 'pred' / 'c.png'} (6×4, ground truth 5×4)" in msg
    cv2.imwrite(str(tmp_path / "pred" / "b.png"), np.zeros((4, 5), np.uint8))
    cv2.imwrite(str(tmp_path / "pred" / "c.png"), np.zeros((4, 5), np.uint8))
    M.check_folders(names, *folders)  # all fit: no error


def test_read_trimap_warns_on_interpolated_values(tmp_path):
    trimap = np.full((4, 5), 128, np.uint8)
    trimap[0, :3] = 127
    path = str(tmp_path / "t.png")
    cv2.imwrite(path, trimap)
    with pytest.warns(UserWarning, match="3 pixels are not 0/128/255"):
        M.read_trimap(path)


def rows_with_nan():
    return {"a.png": {"sad": 10.0, "mse": 0.02, "grad": 5.0, "conn": 11.0},
            "b.png": {"sad": 20.0, "mse": float("nan"), "grad": 7.0, "conn": 13.0},
            "c.png": {"sad": 33.0, "mse": 0.04, "grad": 9.0, "conn": 15.0}}


def test_mean_metrics_leaves_nan_mse_out():
    means = mean_metrics(rows_with_nan())
    assert means == {"sad": 21.0, "mse": pytest.approx(0.03), "grad": 7.0, "conn": 13.0, "n": 3, "mse_count": 2}
    empty = mean_metrics({})
    assert empty["n"] == 0 and math.isnan(empty["sad"])


def test_format_table_lists_images_mean_and_nan_note():
    rows = rows_with_nan()
    text = format_table(rows, mean_metrics(rows))
    lines = text.splitlines()
    assert lines[0].split() == ["image", "SAD", "MSE", "Grad", "Conn"]
    assert lines[1].split() == ["a.png", "10.000", "0.020000", "5.000", "11.000"]
    assert lines[2].split()[2] == "nan"
    assert lines[4].split() == ["mean", "(3)", "21.000", "0.030000", "7.000", "13.000"]
    assert "MSE mean over 2 of 3 images" in lines[5]


def test_json_and_csv_round_trip_atomically(tmp_path):
    rows = rows_with_nan()
    means = mean_metrics(rows)
    js, cs = tmp_path / "out" / "m.json", tmp_path / "m.csv"
    cs.write_text("old content")
    write_metrics_json(str(js), rows, means)
    write_metrics_csv(str(cs), rows, means)
    doc = json.loads(js.read_text())
    assert doc["images"]["b.png"]["mse"] is None and doc["images"]["c.png"]["sad"] == 33.0
    assert doc["mean"]["mse_count"] == 2 and doc["mean"]["sad"] == 21.0
    lines = cs.read_text().splitlines()
    assert lines[0] == "image,sad,mse,grad,conn"
    assert lines[2] == "b.png,20.0,nan,7.0,13.0"
    assert lines[-1].startswith("mean,21.0,")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["m.csv", "m.json", "out"]  # no temp files left


def test_float32_thresholds_equal_double_comparisons():
    rng = np.random.default_rng(0)
    for t in [*M.conn_thresholds(), M.CONN_THETA]:
        t32 = M._f32_at_least(t)
        x = np.concatenate([np.arange(256, dtype=np.float32) / np.float32(255),
                            np.nextafter(np.float32(t), np.float32([-1, 2])), np.float32([t]),
                            rng.random(1000).astype(np.float32)])
        np.testing.assert_array_equal(x >= t32, x.astype(np.float64) >= t)
