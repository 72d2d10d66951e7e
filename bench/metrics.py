"""Seconds per image of core.metrics' SAD, MSE, Grad and Conn against a
straightforward port of the official MATLAB code, distance maps included.

    python bench/metrics.py                 # the five real examples in ../shared, else synthetic
    python bench/metrics.py --synthetic 3   # three synthetic 1920×1080 maps
    python bench/metrics.py --repeat 5      # best of 5 runs of each (default 3)

The reference does what the MATLAB functions do, line by line, in float64
NumPy: a 2-D convolution with the 9×9 kernel, and for Conn a labelling and a
normalised Euclidean distance map per threshold (``bwdist``), which the official
code computes and never uses. It uses scipy.ndimage when installed (not a
project dependency), else OpenCV. The table also times the reference Conn
without the distance maps, and the last column gives the largest relative
difference between the two implementations over all images.
"""

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import math
import platform
import time

import cv2
import numpy as np

from core.metrics import connectivity_error, gradient_error, mse, read_triplet, sad
from core.utils import UserError, run_cli

DEFAULT_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.pardir,
                            "shared", "data", "dim-examples")

try:  # optional: the reference prefers scipy, like most Python ports
    from scipy import ndimage
except ImportError:
    ndimage = None


# --------------------------------------------------------------------------- #
# Straightforward reference port (float64, with the unused distance maps)
# --------------------------------------------------------------------------- #
def ref_sad(pred, gt, trimap):
    return float(np.sum(np.abs(pred / 255.0 - gt / 255.0) * (trimap == 128)) / 1000)


def ref_mse(pred, gt, trimap):
    mask = trimap == 128
    return float(np.sum(((pred / 255.0 - gt / 255.0) ** 2) * mask) / np.sum(mask))


def ref_kernel(sigma=1.4, eps=0.01):
    """gaussgradient's double loop, as written in MATLAB."""
    half = math.ceil(sigma * math.sqrt(-2 * math.log(math.sqrt(2 * math.pi) * sigma * eps)))
    size = 2 * half + 1
    gauss = lambda x: math.exp(-x ** 2 / (2 * sigma ** 2)) / (sigma * math.sqrt(2 * math.pi))  # noqa: E731
    hx = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            v = j - half
            hx[i, j] = gauss(i - half) * (-v * gauss(v) / sigma ** 2)
    return hx / np.sqrt(np.sum(hx ** 2))


def _convolve(img, k):
    if ndimage is not None:
        return ndimage.convolve(img, k, mode="nearest")
    return cv2.filter2D(img, cv2.CV_64F, k[::-1, ::-1].copy(), borderType=cv2.BORDER_REPLICATE)


def ref_grad(pred, gt, trimap):
    hx = ref_kernel()

    def magnitude(x):
        x = x.astype(np.float64)
        if x.max() == x.min():
            return np.zeros_like(x)
        x = (x - x.min()) / (x.max() - x.min())
        return np.sqrt(_convolve(x, hx) ** 2 + _convolve(x, hx.T) ** 2)

    return float(np.sum((magnitude(pred) - magnitude(gt)) ** 2 * (trimap == 128)) / 1000)


def _largest(mask):
    """Largest 4-connected component, ties to the first in column-major order
    (labelling the transposed mask numbers components in that order)."""
    if ndimage is not None:
        labels, n = ndimage.label(mask.T)
    else:
        n, labels = cv2.connectedComponents(mask.T.astype(np.uint8), connectivity=4)
        n -= 1
    if n == 0:
        return np.zeros(mask.shape, bool)
    sizes = np.bincount(labels.ravel())[1:]
    return (labels == np.argmax(sizes) + 1).T


def _bwdist(omega):
    if ndimage is not None:
        return ndimage.distance_transform_edt(~omega)
    return cv2.distanceTransform((~omega).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE).astype(np.float64)


def ref_conn(pred, gt, trimap, step=0.1, dist_maps=True):
    p = pred.astype(np.float32) / np.float32(255)
    g = gt.astype(np.float32) / np.float32(255)
    thresh = np.arange(11) * step  # Octave's 0:0.1:1 is base + k·step
    l_map = -np.ones(pred.shape)
    for i in range(1, len(thresh)):
        omega = _largest((p >= np.float64(thresh[i])) & (g >= np.float64(thresh[i])))
        l_map[(l_map == -1) & ~omega] = thresh[i - 1]
        if dist_maps and omega.any():  # computed and never used by the official code
            dist = _bwdist(omega)
            dist = dist / dist.max()
    l_map[l_map == -1] = 1
    dp, dg = p - l_map, g - l_map
    phi_p, phi_g = 1 - dp * (dp >= 0.15), 1 - dg * (dg >= 0.15)
    return float(np.sum(np.abs(phi_p - phi_g) * (trimap == 128)) / 1000)


# --------------------------------------------------------------------------- #
# Inputs and timing
# --------------------------------------------------------------------------- #
def load_cases(data, n_synthetic):
    if n_synthetic == 0 and os.path.isdir(data):
        names = sorted(os.listdir(os.path.join(data, "alpha")))
        return [(n, *read_triplet(*(os.path.join(data, d, n) for d in ("pred", "alpha", "trimap"))))
                for n in names], f"{len(names)} real examples from {os.path.normpath(data)}"
    rng = np.random.default_rng(0)
    cases = []
    for i in range(n_synthetic or 5):
        field = cv2.resize(rng.random((9, 16)), (1920, 1080), interpolation=cv2.INTER_CUBIC)
        gt = np.clip((field - 0.3) * 2.5 * 255, 0, 255).astype(np.uint8)
        noise = cv2.GaussianBlur(rng.normal(0, 25, gt.shape), (0, 0), 3)
        pred = np.clip(gt + noise, 0, 255).astype(np.uint8)
        soft = ((gt > 0) & (gt < 255)).astype(np.uint8)
        unknown = cv2.dilate(soft, np.ones((15, 15), np.uint8)) > 0
        trimap = np.where(unknown, 128, np.where(gt == 255, 255, 0)).astype(np.uint8)
        pred = np.where(unknown, pred, trimap).astype(np.uint8)  # masked like a saved DIM prediction
        cases.append((f"synthetic{i}", pred, gt, trimap))
    return cases, f"{len(cases)} synthetic 1920×1080 maps"


def timed(fn, args, repeat):
    best, value = math.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        value = fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best, value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="folder with pred/, alpha/, trimap/")
    parser.add_argument("--synthetic", type=int, default=0, help="use N synthetic 1920×1080 maps instead")
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs of each implementation (default 3)")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.synthetic < 0:
        raise UserError("--repeat must be ≥ 1 and --synthetic ≥ 0")

    cases, what = load_cases(args.data, args.synthetic)
    rows = [("SAD", sad, ref_sad), ("MSE", mse, ref_mse), ("Grad", gradient_error, ref_grad),
            ("Conn", connectivity_error, ref_conn),
            ("Conn, ref. without distance maps", None, lambda *a: ref_conn(*a, dist_maps=False))]
    ours_t = {r[0]: 0.0 for r in rows}
    ref_t = {r[0]: 0.0 for r in rows}
    worst = {r[0]: 0.0 for r in rows}
    for _name, pred, gt, trimap in cases:
        for label, ours, ref in rows:
            t_ref, v_ref = timed(ref, (pred, gt, trimap), args.repeat)
            ref_t[label] += t_ref / len(cases)
            if ours is not None:
                t_ours, v_ours = timed(ours, (pred, gt, trimap), args.repeat)
                ours_t[label] += t_ours / len(cases)
                worst[label] = max(worst[label], abs(v_ours - v_ref) / max(abs(v_ref), 1e-300))

    print(f"{what}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"reference uses {'scipy.ndimage' if ndimage is not None else 'OpenCV'}")
    print(f"{'metric':<34}{'core.metrics s/img':>20}{'reference s/img':>17}{'speed-up':>10}{'max rel. diff':>15}")
    for label, ours, _ in rows:
        if ours is None:
            print(f"{label:<34}{'':>20}{ref_t[label]:>17.4f}")
        else:
            print(f"{label:<34}{ours_t[label]:>20.4f}{ref_t[label]:>17.4f}"
                  f"{ref_t[label] / ours_t[label]:>9.1f}×{worst[label]:>15.2e}")
    return 0


if __name__ == "__main__":
    run_cli(main)
