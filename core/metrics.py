"""Composition-1k metrics (SAD, MSE, Gradient, Connectivity), faithful to the
DIM authors' official MATLAB evaluation code, plus the one place that reads,
scores and reports predictions (``tools/evaluate.py``, ``core/test.py`` and
training-time validation all use it).

What the official code computes is specified in ``METRICS.md`` (section numbers
below refer to it). The essentials, all mirrored here:

* Inputs are the saved uint8 0..255 maps; every metric sums only over the
  pixels whose trimap value is exactly 128 (§3). Known regions never count,
  even where the ground truth disagrees with the trimap.
* Reported scales (§3): SAD /1000, MSE unscaled, Grad /1000, Conn /1000.
* Arithmetic is float32 where the official code is single precision, and sums
  are accumulated in float32 sequentially, first down each column and then along
  the row of column sums, like Octave's ``sum(sum(x))``. Checked against the
  official .m files run under GNU Octave 7.3: all four metrics equal bit for bit
  (float32) on the five real examples, 600 random small maps (ties, empty
  intersections, constant maps, odd trimap values) and the unit-test cases. Grad
  filters in double in another order (separably), so a last-bit difference on a
  rare pixel stays possible. A float64 port of the same formulas agrees within
  ~4e-6 relative (METRICS.md pitfall 11); MATLAB's own summation order may differ
  from Octave's in the last bits.
* Grad: ``mat2gray`` per map, a 9×9 unit-L2-norm Gaussian-derivative kernel
  (σ = 1.4), replicate borders (§4.3).
* Conn: thresholds k·0.1 in double against float32 alphas (153/255 counts as
  ≥ 0.6), largest 4-connected foreground component with ties going to the first
  component in column-major order, no λ weighting and no distance maps (their
  result is unused by the official code) (§4.4).

Choices where the official copies differ or fail (METRICS.md, last section):

* An empty intersection at a threshold means an empty largest component: every
  pixel not yet assigned gets the previous threshold (the GCA/HOP/FGI copy).
* A trimap without any 128 pixel gives MSE = NaN for that image; the mean MSE
  leaves such images out and says how many it used (``mse_count``).
* A constant map (``mat2gray`` has no range) has a zero gradient magnitude, as
  in Octave, whose ``mat2gray`` returns the clipped uint8 input there.

Input rule for the metric functions: ``pred`` and ``gt`` are 2-D H×W arrays,
each either uint8 0..255 (what the official code receives and what is saved on
disk) or float32/float64 alpha in [0, 1], which is used as if it were the
0..255 map ``255·x`` (so ``k/255`` behaves exactly like the uint8 value ``k``);
``trimap`` is uint8 H×W, 0/128/255. Anything else raises ``ValueError``.
"""

import csv
import io
import json
import math
import multiprocessing
import os
import warnings

import cv2
import numpy as np

from core.imageio import decode, write_bytes_atomic
from core.imageio import png_header as _png_header
from core.utils import UserError, preview

GRAD_SIGMA = 1.4  # gaussgradient's σ as called by compute_gradient_loss
GRAD_EPSILON = 0.01  # gaussgradient's truncation threshold → 9×9 kernel
CONN_STEP = 0.1  # evaluate.m's threshold step
CONN_THETA = 0.15  # φ's cut-off: differences below it count as connected
METRIC_KEYS = ("sad", "mse", "grad", "conn")
UNKNOWN = 128


# --------------------------------------------------------------------------- #
# Input handling
# --------------------------------------------------------------------------- #
def _as_255(x, name):
    """Validated alpha map → float64 H×W on the 0..255 scale (exact for uint8)."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D H×W array, got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name} is empty (shape {x.shape})")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x, dtype=np.float64)  # C order: cv2 and the column sums rely on it
    if x.dtype in (np.float32, np.float64):
        lo, hi = float(x.min()), float(x.max())  # NaN propagates and fails below
        if not (0.0 <= lo and hi <= 1.0):
            raise ValueError(f"{name} is float with values in [{lo}, {hi}]; float alphas must lie in [0, 1] "
                             "(pass uint8 for 0..255 maps)")
        return np.ascontiguousarray(x, dtype=np.float64) * 255.0
    raise ValueError(f"{name} has dtype {x.dtype}; expected uint8 (0..255) or float32/float64 alpha in [0, 1]")


def _prepare(pred, gt, trimap):
    """Validate the three inputs; return (P, G) float64 0..255 and the float32 unknown mask."""
    P = _as_255(pred, "pred")
    G = _as_255(gt, "gt")
    trimap = np.asarray(trimap)
    if trimap.ndim != 2:
        raise ValueError(f"trimap must be a 2-D H×W array, got shape {trimap.shape}")
    if trimap.dtype != np.uint8:
        raise ValueError(f"trimap has dtype {trimap.dtype}; expected uint8 with 0/128/255 "
                         "(unknown = exactly 128)")
    if not (P.shape == G.shape == trimap.shape):
        raise ValueError(f"shapes differ: pred {P.shape}, gt {G.shape}, trimap {trimap.shape}")
    mask = (trimap == UNKNOWN).astype(np.float32)
    return P, G, mask


def _sum_f32(x):
    """Octave's ``sum(sum(x))`` for a single H×W array: float32, sequential,
    down each column first, then along the row of column sums.

    NumPy reduces a C-contiguous array over axis 0 row by row, i.e.
    sequentially per column; ``accumulate`` is sequential by definition
    (``np.sum`` of a 1-D array is pairwise and would differ in the last bits).
    """
    cols = np.ascontiguousarray(x, dtype=np.float32).sum(axis=0, dtype=np.float32)
    return np.add.accumulate(cols, dtype=np.float32)[-1]


# --------------------------------------------------------------------------- #
# The four metrics
# --------------------------------------------------------------------------- #
def _sad(P, G, mask):
    err = np.abs(P.astype(np.float32) - G.astype(np.float32)) / np.float32(255)
    return float(_sum_f32(err * mask) / np.float32(1000))


def _mse(P, G, mask):
    err = (P.astype(np.float32) - G.astype(np.float32)) / np.float32(255)
    with np.errstate(invalid="ignore", divide="ignore"):  # no unknown pixel: 0/0 = NaN, as official
        return float(_sum_f32(err * err * mask) / _sum_f32(mask))


def gauss_gradient_kernel(sigma=GRAD_SIGMA, epsilon=GRAD_EPSILON):
    """The official ``gaussgradient`` x-kernel Hx, float64 (2h+1)×(2h+1), h = 4 for the defaults.

    Hx(u, v) = G(u)·G'(v) for row offset u and column offset v (smooths down the
    columns, differentiates along the row), divided by its Frobenius norm; Hy = Hxᵀ.
    """
    g, dg, norm = _gauss_1d(sigma, epsilon)
    return np.outer(g, dg) / norm


def _gauss_1d(sigma, epsilon):
    half = math.ceil(sigma * math.sqrt(-2.0 * math.log(math.sqrt(2.0 * math.pi) * sigma * epsilon)))
    x = np.arange(-half, half + 1, dtype=np.float64)
    g = np.exp(-x ** 2 / (2.0 * sigma ** 2)) / (sigma * math.sqrt(2.0 * math.pi))
    dg = -x * g / sigma ** 2
    norm = math.sqrt(float(np.sum(np.outer(g, dg) ** 2)))
    return g, dg, norm


def mat2gray(x):
    """Octave's ``mat2gray`` on a float64 map: (x − min)·(1/(max − min)), with the
    minimum and maximum set to exactly 0 and 1. Returns None for a constant map."""
    lo, hi = x.min(), x.max()
    if lo == hi:
        return None
    out = (x - lo) * (1.0 / (hi - lo))
    out[x <= lo] = 0.0
    out[x >= hi] = 1.0
    return out


def gradient_magnitude(x):
    """sqrt(Gx² + Gy²) of ``mat2gray(x)``, float64 H×W (``x`` float64 H×W, any scale).

    Gx/Gy are true convolutions (kernel flipped) with Hx/Hy and replicate
    borders, done separably: Hx = outer(G, G')/‖·‖ is rank one. A constant map
    gives zeros (Octave filters the clipped uint8 ``mat2gray`` result there,
    which rounds to exactly 0).
    """
    img = mat2gray(x)
    if img is None:
        return np.zeros(x.shape, np.float64)
    g, dg, norm = _gauss_1d(GRAD_SIGMA, GRAD_EPSILON)
    # cv2 filters by correlation: flip the antisymmetric derivative taps for a convolution.
    d = -dg / norm
    gx = cv2.sepFilter2D(img, cv2.CV_64F, d, g, borderType=cv2.BORDER_REPLICATE)
    gy = cv2.sepFilter2D(img, cv2.CV_64F, g, d, borderType=cv2.BORDER_REPLICATE)
    return np.sqrt(gx * gx + gy * gy)


def _grad(P, G, mask):
    diff = gradient_magnitude(P).astype(np.float32) - gradient_magnitude(G).astype(np.float32)
    return float(_sum_f32(diff * diff * mask) / np.float32(1000))


def conn_thresholds(step=CONN_STEP):
    """Octave's ``0:step:1`` as base + k·step in double (t_3 = 0.30000000000000004)."""
    if not (0.0 < step <= 1.0):
        raise ValueError(f"step must be in (0, 1], got {step}")
    n = int(math.floor(1.0 / step + 1e-10)) + 1
    return np.minimum(np.arange(n, dtype=np.float64) * step, 1.0)


def _f32_at_least(t):
    """Smallest float32 ≥ the double ``t``: for float32 x, x ≥ t in double ⇔ x ≥ this in float32."""
    t32 = np.float32(t)
    return t32 if float(t32) >= t else np.nextafter(t32, np.float32(np.inf))


def largest_component(mask):
    """Largest 4-connected component of a bool H×W mask, as bool H×W (None if empty).

    Ties go to the component whose first pixel comes first in column-major
    order, the order of MATLAB/Octave's ``bwconncomp``.
    """
    n, labels = cv2.connectedComponents(mask.view(np.uint8), connectivity=4, ltype=cv2.CV_32S)
    if n < 2:
        return None
    areas = np.bincount(labels[mask], minlength=n)  # cheaper than cv2's stats
    areas[0] = 0
    tied = np.flatnonzero(areas == areas.max())
    # Column-major rank of a label = index of its first pixel in labels.T's raster order.
    best = tied[0] if len(tied) == 1 else min(tied, key=lambda lab: int(np.argmax((labels.T == lab).ravel())))
    return labels == best


def level_map(p, g, step=CONN_STEP):
    """The official level map L, float32 H×W, from float32 alphas ``p`` and ``g`` in [0, 1].

    A pixel gets t_{k-1} where it first leaves the largest component of
    (p ≥ t_k) & (g ≥ t_k), and 1 if it never does; an empty intersection
    drops every pixel still unassigned (project choice, see module doc).
    Alphas are compared with the double thresholds exactly (via the smallest float32 ≥ t_k).
    """
    t = conn_thresholds(step)
    L = np.ones(p.shape, np.float32)
    alive = np.ones(p.shape, bool)
    for k in range(1, len(t)):
        tk = _f32_at_least(t[k])
        omega = largest_component((p >= tk) & (g >= tk))
        if omega is None:  # all higher thresholds are empty too
            L[alive] = t[k - 1]
            break
        L[alive & ~omega] = t[k - 1]
        alive &= omega
    return L


def _conn(P, G, mask, step=CONN_STEP):
    p = P.astype(np.float32) / np.float32(255)
    g = G.astype(np.float32) / np.float32(255)
    L = level_map(p, g, step)
    theta = _f32_at_least(CONN_THETA)

    def phi(a):
        d = a - L
        return np.where(d >= theta, np.float32(1) - d, np.float32(1))

    return float(_sum_f32(np.abs(phi(p) - phi(g)) * mask) / np.float32(1000))


def sad(pred, gt, trimap):
    """Sum of absolute differences over trimap == 128, /1000 (the paper's SAD)."""
    return _sad(*_prepare(pred, gt, trimap))


def mse(pred, gt, trimap):
    """Mean squared error of the alphas (0..1 scale) over trimap == 128, unscaled.

    NaN when the trimap has no 128 pixel (0/0, as in the official code).
    """
    return _mse(*_prepare(pred, gt, trimap))


def gradient_error(pred, gt, trimap):
    """Sum over trimap == 128 of the squared difference of Gaussian-gradient
    magnitudes (σ = 1.4, each map through ``mat2gray`` first), /1000."""
    return _grad(*_prepare(pred, gt, trimap))


def connectivity_error(pred, gt, trimap, step=CONN_STEP):
    """Connectivity error over trimap == 128 (θ = 0.15, p = 1), /1000.

    Only ``step`` = 0.1 is what the official evaluation uses.
    """
    return _conn(*_prepare(pred, gt, trimap), step=step)


def compute_metrics(pred, gt, trimap):
    """All four metrics on the paper's scales: ``{"sad", "mse", "grad", "conn"}`` → float.

    pred, gt: H×W uint8 0..255 or float alpha in [0, 1]; trimap: H×W uint8 0/128/255.
    """
    P, G, mask = _prepare(pred, gt, trimap)
    return {"sad": _sad(P, G, mask), "mse": _mse(P, G, mask),
            "grad": _grad(P, G, mask), "conn": _conn(P, G, mask)}


# --------------------------------------------------------------------------- #
# Reading saved maps the way evaluate.m does
# --------------------------------------------------------------------------- #
def _read_8bit(path, what):
    if not os.path.isfile(path):
        raise UserError(f"{what} not found: {path}")
    img = decode(path, cv2.IMREAD_UNCHANGED)  # one line naming the file for empty, corrupt or oversized files
    if img.dtype != np.uint8:
        raise UserError(f"{what} {path} has {img.dtype} samples; expected an 8-bit image")
    return img


def _first_matlab_channel(img, what, path):
    """H×W, or channel 1 in MATLAB's RGB order (= cv2's channel 2 of BGR/BGRA)."""
    if img.ndim == 2:
        return img
    if img.shape[2] in (3, 4):
        return np.ascontiguousarray(img[:, :, 2])
    raise UserError(f"{what} {path} has {img.shape[2]} channels; expected 1, 3 or 4")


def read_prediction(path):
    """Saved prediction → uint8 H×W. It must be single-channel 8-bit (METRICS.md pitfall 12)."""
    img = _read_8bit(path, "prediction")
    if img.ndim != 2:
        raise UserError(f"prediction {path} has {img.shape[2]} channels; save predictions as "
                        "single-channel 8-bit images")
    return img


def read_alpha(path):
    """Ground-truth alpha → uint8 H×W: the file as is if gray, else its first channel in
    MATLAB's RGB order (R), as evaluate.m keeps. Composition-1k stores RGB PNGs with
    three equal channels, so the choice only matters for other data."""
    return _first_matlab_channel(_read_8bit(path, "ground-truth alpha"), "ground-truth alpha", path)


def read_trimap(path, warn=True):
    """Trimap → uint8 H×W, used as is (unknown = exactly 128). A 3/4-channel trimap
    (the official code cannot use one) is reduced like the alpha, to its R channel.
    Warns (unless not ``warn``: a caller that already did) when some values are
    neither 0, 128 nor 255 (e.g. an interpolated resize): those pixels are neither
    known nor evaluated."""
    tri = _first_matlab_channel(_read_8bit(path, "trimap"), "trimap", path)
    odd = int(np.count_nonzero((tri != 0) & (tri != 128) & (tri != 255))) if warn else 0
    if odd:
        warnings.warn(f"trimap {path}: {odd} pixels are not 0/128/255; only 128 counts as unknown",
                      stacklevel=2)
    return tri


def read_triplet(pred_path, alpha_path, trimap_path):
    """(pred, gt, trimap), each uint8 H×W, read as evaluate.m does; UserError naming
    the file when one is missing, unreadable, not 8-bit, a multi-channel prediction,
    or of another size than the ground truth."""
    pred, gt, tri = read_prediction(pred_path), read_alpha(alpha_path), read_trimap(trimap_path)
    for path, img, what in ((pred_path, pred, "prediction"), (trimap_path, tri, "trimap")):
        if img.shape != gt.shape:
            raise UserError(f"{what} {path} is {img.shape[1]}×{img.shape[0]} but the ground truth "
                            f"{alpha_path} is {gt.shape[1]}×{gt.shape[0]}")
    return pred, gt, tri


# --------------------------------------------------------------------------- #
# Scoring a folder
# --------------------------------------------------------------------------- #
_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_alpha_names(alpha_dir):
    """File names to score, sorted, from the ground-truth folder (like evaluate.m's
    ``dir``): every non-hidden image file."""
    if not os.path.isdir(alpha_dir):
        raise UserError(f"ground-truth alpha folder not found: {alpha_dir}")
    names = sorted(n for n in os.listdir(alpha_dir)
                   if not n.startswith(".") and n.lower().endswith(_IMAGE_EXTS)
                   and os.path.isfile(os.path.join(alpha_dir, n)))
    if not names:
        raise UserError(f"no image files in the ground-truth alpha folder {alpha_dir}")
    return names


def check_folders(names, pred_dir, alpha_dir, trimap_dir):
    """Before scoring: every name must have a prediction and a trimap; PNGs are also
    checked from their headers for the ground truth's size and for single-channel
    8-bit predictions. Raises one UserError listing every missing file (or every
    bad one). Other formats are checked when they are read."""
    for d, what in ((pred_dir, "prediction"), (trimap_dir, "trimap")):
        if not os.path.isdir(d):
            raise UserError(f"{what} folder not found: {d}")
    missing = []
    for d, what in ((pred_dir, "predictions"), (trimap_dir, "trimaps")):
        absent = [n for n in names if not os.path.isfile(os.path.join(d, n))]
        if absent:
            missing.append(f"{len(absent)} {what} missing in {d}: {preview(absent, 10, sort=False)}")
    if missing:
        raise UserError("; ".join(missing))
    bad = []
    for n in names:
        gt = _png_header(os.path.join(alpha_dir, n))
        for d in (pred_dir, trimap_dir):
            path = os.path.join(d, n)
            other = _png_header(path)
            if gt is not None and other is not None and other[:2] != gt[:2]:
                bad.append(f"{path} ({other[1]}×{other[0]}, ground truth {gt[1]}×{gt[0]})")
            elif d == pred_dir and other is not None and (other[2] != 0 or other[3] > 8):
                bad.append(f"{path} (not a single-channel 8-bit PNG)")
    if bad:
        raise UserError(f"{len(bad)} files do not fit the ground truth: {preview(bad, 10, sort=False)}")


def score_triplet(pred_path, alpha_path, trimap_path):
    """Read one saved prediction, ground truth and trimap; return compute_metrics' dict."""
    return compute_metrics(*read_triplet(pred_path, alpha_path, trimap_path))


def _score_job(job):
    return score_triplet(*job)


def _worker_init():
    cv2.setNumThreads(1)  # one process per core already


def score_folder(pred_dir, alpha_dir, trimap_dir, workers=1, progress=True):
    """Score every ground-truth file name against the same name in ``pred_dir`` and
    ``trimap_dir``. Returns ``{file name: {"sad", "mse", "grad", "conn"}}`` in name
    order; identical for any ``workers`` (each image is scored independently)."""
    from tqdm import tqdm

    names = list_alpha_names(alpha_dir)
    check_folders(names, pred_dir, alpha_dir, trimap_dir)
    jobs = [tuple(os.path.join(d, n) for d in (pred_dir, alpha_dir, trimap_dir)) for n in names]
    # The bar is closed (its line ended) before an error message can follow it.
    rows = {}
    with tqdm(total=len(jobs), desc="scoring", unit="img", disable=not progress) as bar:
        if workers <= 1:
            results = map(_score_job, jobs)
        else:
            # spawn: forking after OpenCV has started its thread pool can hang the children.
            pool = multiprocessing.get_context("spawn").Pool(min(workers, len(jobs)), initializer=_worker_init)
            results = pool.imap(_score_job, jobs)
        try:
            for name, row in zip(names, results, strict=True):
                rows[name] = row
                bar.update()
        finally:
            if workers > 1:
                pool.terminate()
    return rows


# --------------------------------------------------------------------------- #
# Reporting
# --------------------------------------------------------------------------- #
def mean_metrics(rows):
    """Arithmetic means of per-image rows ``{name: {"sad", "mse", "grad", "conn"}}``.

    Returns ``{"sad", "mse", "grad", "conn", "n", "mse_count"}``: ``n`` images in
    the SAD/Grad/Conn means; ``mse_count`` images in the MSE mean, which leaves out
    images whose MSE is NaN (no unknown pixel). Means are NaN when nothing counts.
    Means are taken in float64 (evaluate.m accumulates in single; the difference is
    ~1e-7 relative).
    """
    out = {}
    for key in METRIC_KEYS:
        vals = [float(r[key]) for r in rows.values()]
        if key == "mse":
            vals = [v for v in vals if not math.isnan(v)]
            out["mse_count"] = len(vals)
        out[key] = math.fsum(vals) / len(vals) if vals else float("nan")
    out["n"] = len(rows)
    return {k: out[k] for k in (*METRIC_KEYS, "n", "mse_count")}


_COLUMNS = (("sad", "SAD", "{:.3f}"), ("mse", "MSE", "{:.6f}"), ("grad", "Grad", "{:.3f}"),
            ("conn", "Conn", "{:.3f}"))


def format_table(rows, means):
    """Plain-text table: one line per image, then the mean line (and a note when
    some images had no unknown pixel and were left out of the MSE mean)."""
    width = max([len("image")] + [len(n) for n in rows] + [len(f"mean ({means['n']})")])
    lines = [f"{'image':<{width}}" + "".join(f"  {title:>10}" for _, title, _ in _COLUMNS)]
    for label, vals in [*rows.items(), (f"mean ({means['n']})", means)]:
        lines.append(f"{label:<{width}}" + "".join(f"  {fmt.format(vals[k]):>10}" for k, _, fmt in _COLUMNS))
    if means["mse_count"] < means["n"]:
        lines.append(f"MSE mean over {means['mse_count']} of {means['n']} images "
                     "(MSE is NaN where the trimap has no unknown pixel)")
    return "\n".join(lines)


def _json_value(v):
    return None if isinstance(v, float) and math.isnan(v) else v


def write_metrics_json(path, rows, means):
    """``{"images": {name: {"sad", "mse", "grad", "conn"}}, "mean": mean_metrics(...)}``,
    written atomically; NaN is written as null (strict JSON)."""
    doc = {"images": {n: {k: _json_value(v) for k, v in r.items()} for n, r in rows.items()},
           "mean": {k: _json_value(v) for k, v in means.items()}}
    write_bytes_atomic(path, (json.dumps(doc, indent=2) + "\n").encode())


def write_metrics_csv(path, rows, means):
    """CSV ``image,sad,mse,grad,conn``: one row per image, then a row named ``mean``;
    written atomically. NaN is written as ``nan``; counts are in the JSON only."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image", *METRIC_KEYS])
    for label, vals in [*rows.items(), ("mean", means)]:
        writer.writerow([label, *(repr(float(vals[k])) for k in METRIC_KEYS)])
    write_bytes_atomic(path, buf.getvalue().encode())
