"""``tile`` inference: full-resolution prediction in overlapping tiles.

``whole`` mode (SPEC §9) resizes a big photo down to ``max_size`` and its
memory grows with the network input; ``tile`` mode never resizes and never
builds the full-size network input. The image is covered by tile×tile windows
(tile a multiple of 32) that overlap by at least ``overlap`` pixels; each
window holding an unknown trimap pixel (128) is predicted with
:func:`core.forward.forward_once`, weighted by a raised-cosine window and
accumulated into two float32 H×W buffers (weighted sum, sum of weights). Peak
memory is the network's at tile×tile plus those buffers, whatever the image
size.

Layout along each axis (side S, tile T):

* the tile side is ``min(T, S rounded down to a multiple of 32)``, so an image
  smaller than the tile is still predicted at full resolution;
* windows are spread evenly from 0 to S − tile side, as few as keep every
  overlap ≥ ``overlap``: the last window is shifted inward to end at the image
  border, so sides that are not multiples of 32 need no padding and no
  resizing;
* weights: 1 in a window's interior, ramping from ~0 to 1 as sin² across each
  overlap with a neighbouring window (so two neighbours' weights sum to 1
  there) and staying 1 at the image border. The 2-D weight is the product of
  the two axes' weights and the result is divided by the summed weights, so
  seams fade over the overlap instead of showing tile borders.

Windows without an unknown pixel are skipped; pixels that no predicted window
covers are known (0 or 255 in the trimap) and get trimap/255 here, which is
also what :func:`core.inference.force_known` gives them afterwards.

Where a single window covers the image (sides multiples of 32, at most
``tile``) the result is exactly ``whole`` mode's. Otherwise it differs from a
whole-image pass because each window sees only tile×tile context (the deepest
VGG-16 features see a few hundred pixels): see ``bench/tile_memory.py``.
"""

import logging
import math

import numpy as np
from tqdm import tqdm

from core.forward import forward_once

DEFAULT_TILE = 512
DEFAULT_OVERLAP = 64
PROGRESS_MIN_TILES = 16  # show a progress bar from this many predicted windows on


def check_tile_args(tile, overlap):
    """Raise ValueError unless ``tile`` is a positive multiple of 32 and 0 ≤ ``overlap`` < ``tile``."""
    if tile < 32 or tile % 32:
        raise ValueError(f"tile size must be a positive multiple of 32, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be at least 0 and less than the tile size {tile}, got {overlap}")


def tile_starts(side, tile, overlap):
    """Window starts and the window length along one axis: ``(starts, length)``.

    ``length`` = min(tile, side rounded down to /32); starts are evenly spread
    over [0, side − length] (rounded to integers), the fewest that keep every
    overlap ≥ min(overlap, length // 2).
    """
    length = min(tile, side - side % 32)
    if length < 32:
        raise ValueError(f"image side of {side} pixels is too small for tile mode (at least 32)")
    overlap = min(overlap, length // 2)
    span = side - length
    count = 1 if span == 0 else math.ceil(span / (length - overlap)) + 1
    starts = np.rint(np.linspace(0, span, count)).astype(int) if count > 1 else np.zeros(1, int)
    return [int(s) for s in starts], length


def ramp(length, before, after):
    """1-D window weight, float32 ``length``: sin² ramps over the first ``before``
    and last ``after`` pixels (0 means no neighbour: weight 1 up to the edge).

    The ramp value at offset i is sin²(π/2 · (i + 0.5) / n): never exactly 0,
    and a neighbour's mirrored ramp over the same n pixels is cos², so the two
    sum to 1 across the overlap.
    """
    w = np.ones(length, np.float64)
    if before:
        i = np.arange(before)
        w[:before] *= np.sin(0.5 * np.pi * (i + 0.5) / before) ** 2
    if after:
        i = np.arange(after)
        w[length - after:] *= np.sin(0.5 * np.pi * (after - i - 0.5) / after) ** 2
    return w.astype(np.float32)


def axis_windows(side, tile, overlap):
    """[(start, weight)] along one axis: each window's start and its 1-D ramp (float32)."""
    starts, length = tile_starts(side, tile, overlap)
    out = []
    for k, start in enumerate(starts):
        before = starts[k - 1] + length - start if k > 0 else 0
        after = start + length - starts[k + 1] if k + 1 < len(starts) else 0
        out.append((start, ramp(length, min(before, length), min(after, length))))
    return out


def plan_tiles(trimap, tile=DEFAULT_TILE, overlap=DEFAULT_OVERLAP):
    """The windows to predict: ``([(y, x, wy, wx)], skipped)``.

    ``wy``/``wx`` are the 1-D weights of the window at (y, x); windows without
    a trimap value of 128 are left out and counted in ``skipped``.
    """
    check_tile_args(tile, overlap)
    h, w = trimap.shape
    rows, cols = axis_windows(h, tile, overlap), axis_windows(w, tile, overlap)
    plan, skipped = [], 0
    for y, wy in rows:
        for x, wx in cols:
            if np.any(trimap[y:y + wy.size, x:x + wx.size] == 128):
                plan.append((y, x, wy, wx))
            else:
                skipped += 1
    return plan, skipped


def predict_tiles(model, image_bgr, trimap, tile=DEFAULT_TILE, overlap=DEFAULT_OVERLAP, refined=None, amp=False,
                  progress=None, precision="fp32", exact=False):
    """``tile`` mode: the alpha before forcing, float32 H×W in [0, 1].

    Args:
        model: a ``DIMNet`` in eval mode (any device).
        image_bgr: H×W×3 uint8 BGR (any H, W ≥ 32; not resized).
        trimap: H×W uint8, 0/128/255.
        tile: window side, a positive multiple of 32 (reduced to the image side
            rounded down to /32 where the image is smaller).
        overlap: minimum overlap of neighbouring windows in pixels, < tile.
        refined: report the refined alpha (default: when the model has a head).
        amp: autocast on CUDA.
        progress: tqdm bar over windows; None shows it from 16 predicted windows on.
        precision, exact: as in ``core.forward.forward_once``.
    """
    if image_bgr.shape[:2] != trimap.shape:
        raise ValueError(f"image {image_bgr.shape[:2]} and trimap {trimap.shape} differ in size")
    plan, skipped = plan_tiles(trimap, tile, overlap)
    h, w = trimap.shape
    logging.getLogger("dim").info(f"tile mode, {w}×{h}: {len(plan)} of {len(plan) + skipped} windows predicted "
                                  f"({skipped} without unknown pixels skipped)")
    acc = np.zeros((h, w), np.float32)
    weight = np.zeros((h, w), np.float32)
    show = len(plan) >= PROGRESS_MIN_TILES if progress is None else progress
    for y, x, wy, wx in tqdm(plan, desc="tiles", unit="tile", leave=False, disable=not show):
        th, tw = wy.size, wx.size
        alpha = forward_once(model, image_bgr[y:y + th, x:x + tw], trimap[y:y + th, x:x + tw],
                             refined=refined, amp=amp, precision=precision, exact=exact)
        win = wy[:, None] * wx[None, :]
        acc[y:y + th, x:x + tw] += alpha * win
        weight[y:y + th, x:x + tw] += win
    covered = weight > 0
    # Divide in place where covered; elsewhere (known pixels only) take trimap/255.
    np.divide(acc, weight, out=acc, where=covered)
    acc[~covered] = trimap[~covered].astype(np.float32) / np.float32(255)
    return np.clip(acc, 0, 1, out=acc)  # a weighted mean of values in [0, 1]; clip float rounding
