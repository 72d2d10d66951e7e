"""Trimaps (0/128/255): from masks (the fixed-width band), from training alphas (SPEC §6), and a photo's subject.

The band rule (``tools/gen_trimap.py --mode band``, the demo's automatic trimaps),
with t = ``tol``: definitely foreground where the mask is ≥ 255·(1 − t),
definitely background where it is ≤ 255·t (``binary``: > 127 / ≤ 127);
trimap = 255 where the foreground, eroded by a disc of radius w, remains, 0
where the background, eroded by the same disc, remains, 128 elsewhere. So the
unknown band reaches w pixels to each side of the edge and also covers every
soft value between the thresholds.

The training rule (:func:`trimap_from_alpha`, drawn by :func:`random_trimap`)
dilates and erodes the alpha itself; :func:`photo_mask` decides which subject
a photo without a trimap gets, for the demo and the page alike.
"""

import math

import cv2
import numpy as np

from core.imageio import read_image, read_unchanged
from core.utils import UserError

DEFAULT_WIDTH_FRAC = 0.01
DEFAULT_TOL = 0.02
# The training trimap's draws (SPEC §6 step 6): elliptic kernel size and erosion/dilation iterations.
TRIMAP_KERNEL_SIZES = (2, 3, 4)
TRIMAP_ITERATIONS = tuple(range(5, 15))


def read_mask(path):
    """uint8 H×W: the alpha channel of a 4-channel file, else channel 0 (UserError for unreadable files)."""
    img = read_unchanged(path)
    if img.ndim == 2:
        return img
    return img[:, :, 3].copy() if img.shape[2] == 4 else img[:, :, 0].copy()


def width_from_frac(shape, frac):
    """Band half-width in pixels: round(frac × image diagonal), at least 1."""
    return max(1, round(frac * math.hypot(*shape[:2])))


def thresholds(tol=DEFAULT_TOL, binary=False):
    """(fg_min, bg_max): foreground = value ≥ fg_min, background = value ≤ bg_max."""
    if binary:
        return 128, 127
    if not 0 <= tol < 0.5:
        raise UserError(f"--tol must be in [0, 0.5), got {tol}")
    return math.ceil(255 * (1 - tol)), math.floor(255 * tol)


def disc(radius):
    """Elliptic (disc) structuring element of diameter 2·radius + 1."""
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def trimap_from_mask(mask, width_px, tol=DEFAULT_TOL, binary=False, name="mask"):
    """Trimap uint8 H×W with values 0/128/255 from a mask or alpha, uint8 H×W.

    See the module docstring for the rule. ``width_px`` ≥ 1 is the band's
    reach to each side of the edge. Raises UserError (naming ``name``) for an
    empty or all-foreground mask.
    """
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"mask must be uint8 H×W, got {mask.dtype} {mask.shape}")
    if width_px < 1:
        raise UserError(f"band width must be at least 1 pixel, got {width_px}")
    fg_min, bg_max = thresholds(tol, binary)
    fg = (mask >= fg_min).astype(np.uint8)
    bg = (mask <= bg_max).astype(np.uint8)
    if bg.all():
        raise UserError(f"{name}: the mask is empty (no pixel above {bg_max}): there is no subject to matte")
    if fg.all():
        raise UserError(f"{name}: the mask is all foreground (every pixel ≥ {fg_min}): there is no edge to matte")
    kernel = disc(int(width_px))
    # Erosion treats outside the image as inside the set (OpenCV's default
    # border), so a subject cut by the frame stays foreground up to it.
    trimap = np.full(mask.shape, 128, np.uint8)
    trimap[cv2.erode(fg, kernel) > 0] = 255
    trimap[cv2.erode(bg, kernel) > 0] = 0
    return trimap


ALPHA, MASK, SEGMENTER = "alpha", "mask", "segmenter"  # where a photo's subject comes from


def has_subject_alpha(stored):
    """Whether a photo as stored (:func:`read_unchanged`) has an alpha channel that outlines a subject.

    A fully opaque alpha channel (common in exported photos) says nothing, so
    it does not count.
    """
    return stored.ndim == 3 and stored.shape[2] == 4 and bool((stored[:, :, 3] < 255).any())


def subject_source(stored, has_mask):
    """Where the subject of a photo without a trimap comes from, the first of: its alpha channel
    (:func:`has_subject_alpha`), the mask (when ``has_mask``), the segmenter."""
    return ALPHA if has_subject_alpha(stored) else MASK if has_mask else SEGMENTER


def as_bgr(stored):
    """BGR uint8 H×W×3 of a photo as stored: grey replicated, alpha dropped (what :func:`read_image` gives)."""
    if stored.ndim == 2:
        return cv2.cvtColor(stored, cv2.COLOR_GRAY2BGR)
    return stored[:, :, :3] if stored.shape[2] == 4 else stored


def subject_mask(stored, mask=None, segmenter=None, source=None, name="photo", mask_name="mask", bgr=None):
    """The subject of a photo without a trimap, uint8 H×W, and where it came from (:data:`ALPHA`, …).

    The one path of ``core/demo.py`` and ``tools/app.py``. ``source``: as
    :func:`subject_source` chooses (the default), or one forced: the photo's
    alpha channel; ``mask`` (uint8 H×W, refused unless of the photo's size);
    the ``segmenter`` (a :class:`core.segment.Segmenter`), handed the photo in
    BGR as the network reads it (``bgr``: a callable giving that, default
    :func:`as_bgr` of ``stored``; the segmenter turns it to RGB itself).
    ``stored``: the photo as stored (grey, BGR or BGRA). Raises
    :class:`UserError` naming ``name`` (the photo) or ``mask_name``.
    """
    if source is None:
        source = subject_source(stored, mask is not None)
    h, w = stored.shape[:2]
    if source == ALPHA:
        if stored.ndim != 3 or stored.shape[2] != 4:
            raise UserError(f"{name} has no alpha channel")
        return stored[:, :, 3].copy(), ALPHA
    if source == MASK:
        if mask is None:
            raise UserError(f"{name}: no mask given")
        if mask.shape != (h, w):
            raise UserError(f"{mask_name}: mask is {mask.shape[1]}×{mask.shape[0]} but its image {name} is {w}×{h}")
        return mask, MASK
    if source != SEGMENTER:
        raise ValueError(f"unknown subject source {source!r}")
    if segmenter is None:
        raise UserError(f"{name}: no trimap, mask or alpha channel to make one from")
    mask = segmenter(bgr() if bgr is not None else as_bgr(stored))
    if not (mask >= 128).any():
        raise UserError(f"{name}: {segmenter.name} found no subject in the photo (no pixel more likely one "
                        f"of its classes than not; searched: {segmenter.describe_classes()}); "
                        "give --classes, --mask or --trimap")
    return mask, SEGMENTER


def photo_mask(image_path, mask_path=None, segmenter=None):
    """The subject mask of a photo file, uint8 H×W, and a note saying where it came from.

    :func:`subject_mask` of the photo as stored and ``mask_path`` (a binary or
    soft mask, as :func:`read_mask` reads it); the segmenter sees the photo as
    the matting network reads it (:func:`read_image`). Raises
    :class:`UserError` naming the photo or the mask.
    """
    stored = read_unchanged(image_path)
    source = subject_source(stored, bool(mask_path))
    mask = read_mask(mask_path) if source == MASK else None  # not read when the alpha channel wins
    mask, _ = subject_mask(stored, mask, segmenter, source, name=image_path, mask_name=mask_path,
                           bgr=lambda: read_image(image_path))
    if source == ALPHA:
        return mask, "its alpha channel"
    if source == MASK:
        return mask, f"mask {mask_path}"
    return mask, f"{segmenter.name} ({segmenter.describe_classes()})"


def photo_trimap(image_path, mask_path=None, segmenter=None, width=None, width_frac=DEFAULT_WIDTH_FRAC):
    """The trimap of a photo without one: :func:`photo_mask` through :func:`trimap_from_mask`.

    The band reaches ``width`` pixels to each side of the edge, or
    ``width_frac`` × the photo's diagonal. Returns ``(trimap, source)``.
    """
    mask, source = photo_mask(image_path, mask_path, segmenter)
    width = width if width is not None else width_from_frac(mask.shape, width_frac)
    return trimap_from_mask(mask, width, name=f"{image_path} (subject from {source})"), source


# --------------------------------------------------------------------------- #
# The training rule (SPEC §6 step 6): training samples, tools/gen_trimap.py's
# default mode and tools/make_synthetic.py's test trimaps
# --------------------------------------------------------------------------- #
def draw_trimap_params(rng):
    """Step 6's draws: (kernel size from {2, 3, 4}, iterations from 5..14)."""
    kernel_size = int(rng.choice(TRIMAP_KERNEL_SIZES))
    iterations = int(rng.choice(TRIMAP_ITERATIONS))
    return kernel_size, iterations


def trimap_from_alpha(alpha, kernel_size, iterations):
    """Trimap uint8 H×W (0/128/255) from alpha uint8 H×W.

    The alpha is dilated and eroded ``iterations`` times with an elliptic
    ``kernel_size``² structuring element (OpenCV's, default anchor and
    border); 255 where the eroded alpha is 255, 0 where the dilated alpha is
    0, 128 elsewhere.
    """
    if alpha.ndim != 2 or alpha.dtype != np.uint8:
        raise ValueError(f"alpha must be uint8 H×W, got {alpha.dtype} {alpha.shape}")
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel_size, kernel_size))
    dilated = cv2.dilate(alpha, kernel, iterations=iterations)
    eroded = cv2.erode(alpha, kernel, iterations=iterations)
    trimap = np.full(alpha.shape, 128, dtype=np.uint8)
    trimap[eroded >= 255] = 255
    trimap[dilated <= 0] = 0
    return trimap


def random_trimap(alpha, rng):
    """Step 6: :func:`trimap_from_alpha` with :func:`draw_trimap_params`."""
    return trimap_from_alpha(alpha, *draw_trimap_params(rng))
