"""Cut-outs from a matte: foreground colours, RGBA images and new backgrounds.

A pixel of the photo is I = α·F + (1 − α)·B. Where 0 < α < 1 (hair, fur,
motion blur, glass) its colour still holds the old background B, so an RGBA
made of the photo's colours and the matte (or the photo multiplied by α)
shows a fringe of the old background. :func:`estimate_foreground` recovers F
with the multi-level foreground estimation of Germer et al. 2020 ("Fast
Multi-Level Foreground Estimation", ICPR 2020): per pixel it minimises

    Σ_c (α F_c + (1 − α) B_c − I_c)²
      + Σ_{j ∈ 4-neighbours} (ε + ω |α − α_j|) (‖F − F_j‖² + ‖B − B_j‖²),

ε = 1e-5, ω = 1, from a 1×1 image up to full size, a few sweeps per level.
It uses pymatting's
``estimate_foreground_ml`` when pymatting is installed (``pip install
pymatting``; its numba kernels compile once on first import, about a minute)
and otherwise this module's NumPy implementation of the same method (red-black
sweeps instead of pymatting's sequential ones, so 4 instead of 2 per large
level; area-averaged level images and bilinear upsampling instead of
nearest-neighbour ones; on average the results agree to a few grey levels
where the subject is visible).

Colours are BGR as read by OpenCV; alpha is float in [0, 1] or a uint8 matte.

Command-line glue for ``core/test.py`` and ``core/demo.py``:
:func:`add_cutout_args`, :func:`cutout_options` and :func:`write_cutouts`.
"""

import argparse
import importlib.util
import math
import os
import re

import cv2
import numpy as np

from core.imageio import read_image, write_image
from core.inference import truncate_to_uint8
from core.utils import UserError

BACKENDS = ("auto", "pymatting", "numpy")
CUTOUT_DIR = "cutout"
# Named colours for --background, RGB (as people write colours); stored BGR below.
NAMED_COLOURS_RGB = {
    "white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128), "grey": (128, 128, 128),
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
    "cyan": (0, 255, 255), "magenta": (255, 0, 255),
}


# --------------------------------------------------------------------------- #
# Foreground estimation
# --------------------------------------------------------------------------- #
def as_alpha(alpha):
    """float32 H×W in [0, 1] from a float array or a uint8 matte (/255)."""
    alpha = np.asarray(alpha)
    if alpha.ndim != 2:
        raise ValueError(f"alpha must be H×W, got shape {alpha.shape}")
    if alpha.dtype == np.uint8:
        return alpha.astype(np.float32) / np.float32(255)
    return np.clip(alpha.astype(np.float32), 0, 1)


def pymatting_available():
    return importlib.util.find_spec("pymatting") is not None


def resolve_backend(backend="auto"):
    """The estimator ``backend`` runs: ``pymatting`` or ``numpy`` (``auto``: pymatting when installed)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "pymatting" if pymatting_available() else "numpy"
    return backend


def _shifted(a):
    """The four 4-neighbour views (up, down, left, right) of H×W[×C] ``a``, borders replicated."""
    pad = ((1, 1), (1, 1)) + ((0, 0),) * (a.ndim - 2)
    p = np.pad(a, pad, mode="edge")
    return p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]


def _sweep(image, alpha, fg, bg, weights, mask):
    """Solve every pixel of ``mask`` for (F, B) given its neighbours, in place.

    The per-pixel normal equations of the cost in the module docstring, with
    W = Σ_j w_j:  [α² + W, α(1−α); α(1−α), (1−α)² + W] [F; B] =
    [α I + Σ w_j F_j; (1−α) I + Σ w_j B_j], channel by channel.
    """
    a = alpha[..., None]
    total = sum(weights)[..., None]
    sum_f = sum(w[..., None] * n for w, n in zip(weights, _shifted(fg)))
    sum_b = sum(w[..., None] * n for w, n in zip(weights, _shifted(bg)))
    a00, a01, a11 = a * a + total, a * (1 - a), (1 - a) * (1 - a) + total
    b0, b1 = a * image + sum_f, (1 - a) * image + sum_b
    det = a00 * a11 - a01 * a01
    new_f = np.clip((a11 * b0 - a01 * b1) / det, 0, 1)
    new_b = np.clip((a00 * b1 - a01 * b0) / det, 0, 1)
    fg[mask] = new_f[mask]
    bg[mask] = new_b[mask]


def estimate_fb_numpy(image, alpha, regularization=1e-5, gradient_weight=1.0, small_size=32,
                      small_iterations=10, big_iterations=4):
    """Multi-level foreground and background estimation in NumPy.

    ``image``: float32 H×W×C in [0, 1]; ``alpha``: float32 H×W in [0, 1].
    Level l of L = ⌈log2 max(H, W)⌉ has size round(H^(l/L)) × round(W^(l/L)),
    from 1×1 to H×W; image and alpha are area-resized to it, F and B
    bilinearly upsampled from the level below (start: the mean colour), then
    ``small_iterations`` red-black sweeps where both sides of the level are at
    most ``small_size``, else ``big_iterations``. Returns (F, B), float32
    H×W×C in [0, 1].

    pymatting sweeps twice per large level, pixel after pixel, so colours
    travel across the image within one sweep; a red-black sweep moves them a
    pixel or two, hence 4 sweeps here (on the synthetic examples of
    ``tools/make_synthetic.py`` 2 sweeps leave the colours of semi-transparent
    pixels 30–50 % further from the truth than pymatting, 4 within 5–10 %).
    """
    h0, w0 = alpha.shape
    levels = max(1, math.ceil(math.log2(max(h0, w0))))
    fg = bg = None
    for level in range(levels + 1):
        h, w = round(h0 ** (level / levels)), round(w0 ** (level / levels))
        img = image if (h, w) == (h0, w0) else cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        a = alpha if (h, w) == (h0, w0) else cv2.resize(alpha, (w, h), interpolation=cv2.INTER_AREA)
        img = img.reshape(h, w, -1)
        if fg is None:
            fg, bg = img.copy(), img.copy()
        else:
            fg = cv2.resize(fg, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, -1)
            bg = cv2.resize(bg, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, -1)
        weights = [np.float32(regularization) + np.float32(gradient_weight) * np.abs(a - n) for n in _shifted(a)]
        red = (np.add.outer(np.arange(h), np.arange(w)) % 2) == 0
        for _ in range(small_iterations if max(h, w) <= small_size else big_iterations):
            _sweep(img, a, fg, bg, weights, red)
            _sweep(img, a, fg, bg, weights, ~red)
    return fg, bg


def estimate_foreground(image_bgr, alpha, backend="auto"):
    """Foreground colours F, float32 H×W×3 BGR in [0, 1].

    Args:
        image_bgr: H×W×3 uint8 BGR photo.
        alpha: H×W matte, float in [0, 1] or uint8.
        backend: ``pymatting`` (its ``estimate_foreground_ml``; UserError when
            not installed), ``numpy`` (:func:`estimate_fb_numpy`) or ``auto``
            (pymatting when installed).
    """
    backend = resolve_backend(backend)
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.shape[:2] != np.shape(alpha)[:2]:
        raise ValueError(f"image {image_bgr.shape} and alpha {np.shape(alpha)} must be H×W×3 and H×W")
    image = image_bgr.astype(np.float32) / np.float32(255)
    alpha = as_alpha(alpha)
    if backend == "numpy":
        return estimate_fb_numpy(image, alpha)[0]
    try:
        from pymatting import estimate_foreground_ml
    except ImportError:
        raise UserError("the pymatting foreground estimator is not installed: pip install pymatting "
                        "(or use the built-in NumPy estimator)") from None
    # Channels are independent in this method, so BGR in gives BGR out.
    return np.asarray(estimate_foreground_ml(image, alpha), dtype=np.float32)


# --------------------------------------------------------------------------- #
# Cut-outs and composites
# --------------------------------------------------------------------------- #
def make_rgba(fg, alpha):
    """uint8 H×W×4 BGRA (what cv2.imwrite stores as an RGBA PNG).

    Colours are round(F·255); the alpha channel is the matte as the project
    writes it (``core.inference.truncate_to_uint8``: α·255 truncated), so it equals the
    saved matte file.
    """
    alpha = as_alpha(alpha)
    colour = np.rint(np.clip(fg, 0, 1) * 255).astype(np.uint8)
    return np.dstack([colour, truncate_to_uint8(alpha)])


def parse_colour(spec):
    """A colour spec → BGR tuple of ints, or None when ``spec`` is not a colour.

    Accepts ``#RRGGBB``, ``R,G,B`` (0–255, RGB order as people write them) and
    the names in :data:`NAMED_COLOURS_RGB`.
    """
    text = spec.strip().lower()
    rgb = NAMED_COLOURS_RGB.get(text)
    if rgb is None and text.startswith("#") and len(text) == 7:
        try:
            rgb = tuple(int(text[i:i + 2], 16) for i in (1, 3, 5))
        except ValueError:
            return None
    if rgb is None and text.count(",") == 2:
        try:
            rgb = tuple(int(v) for v in text.split(","))
        except ValueError:
            return None
        if not all(0 <= v <= 255 for v in rgb):
            return None
    return None if rgb is None else tuple(reversed(rgb))


def parse_background(spec):
    """``--background`` → a BGR colour tuple or a BGR uint8 image.

    A colour (see :func:`parse_colour`) wins over a file of the same name.
    Raises UserError when ``spec`` is neither a colour nor a readable image.
    """
    colour = parse_colour(spec)
    if colour is not None:
        return colour
    if os.path.isfile(spec):
        return read_image(spec)
    names = ", ".join(sorted(NAMED_COLOURS_RGB))
    raise UserError(f"--background {spec!r}: not a colour (#RRGGBB, R,G,B or one of {names}) "
                    "nor an existing image file")


def background_label(spec):
    """The part of a cut-out's file name that says which ``--background`` it shows.

    A named colour keeps its name (``white``), other colours become their RGB
    hex digits (``#2080FF`` and ``32,128,255`` → ``2080ff``), an image its file
    stem (``photos/beach.jpg`` → ``beach``).
    """
    text = spec.strip().lower()
    if text in NAMED_COLOURS_RGB:
        return text
    colour = parse_colour(spec)
    if colour is not None:
        return "".join(f"{v:02x}" for v in reversed(colour))
    stem = os.path.splitext(os.path.basename(spec.rstrip("/\\")))[0]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem) or "image"


def cover(background, h, w):
    """Resize ``background`` (H'×W'×3) to cover h×w keeping its aspect ratio, then crop the centre."""
    bh, bw = background.shape[:2]
    scale = max(h / bh, w / bw)
    nh, nw = max(h, round(bh * scale)), max(w, round(bw * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(background, (nw, nh), interpolation=interp)
    y, x = (nh - h) // 2, (nw - w) // 2
    return resized[y:y + h, x:x + w]


def composite_on(fg, alpha, background):
    """The foreground over a new background, uint8 H×W×3 BGR.

    ``fg``: float H×W×3 BGR in [0, 1]; ``alpha``: float [0, 1] or uint8 H×W;
    ``background``: a BGR colour tuple (see :func:`parse_background`) or a BGR
    uint8 image of any size (resized to cover, centre crop). Computes
    round(255·(α F + (1 − α) bg/255)).
    """
    h, w = fg.shape[:2]
    a = as_alpha(alpha)[..., None]
    if isinstance(background, np.ndarray):
        bg = cover(background, h, w).astype(np.float32) / np.float32(255)
    else:
        bg = np.asarray(background, np.float32).reshape(1, 1, 3) / np.float32(255)
    out = a * np.clip(fg, 0, 1) + (1 - a) * bg
    return np.rint(np.clip(out, 0, 1) * 255).astype(np.uint8)


def checkerboard(h, w, cell=16, light=204, dark=153):
    """A grey checkerboard, uint8 h×w×3 (how editors show transparency)."""
    yy, xx = np.mgrid[0:h, 0:w]
    board = np.where(((yy // cell) + (xx // cell)) % 2 == 0, light, dark).astype(np.uint8)
    return np.repeat(board[..., None], 3, axis=2)


# --------------------------------------------------------------------------- #
# Command-line glue (core/test.py, core/demo.py)
# --------------------------------------------------------------------------- #
def add_cutout_args(parser, rgba=True, background_help=None):
    """Add ``--rgba``, ``--background COLOUR|IMAGE`` (repeatable) and ``--fg_backend`` to an argparse parser.

    ``rgba=False``: --rgba is accepted but not shown; ``background_help`` replaces --background's help
    (the page: one colour to show, no files).
    """
    group = parser.add_argument_group("cut-outs")
    group.add_argument("--rgba", action="store_true",
                       help=f"also write an RGBA cut-out per image: <saveDir>/{CUTOUT_DIR}/<name>_rgba.png "
                            "(foreground colours estimated so no old background shows in hair)" if rgba
                       else argparse.SUPPRESS)
    group.add_argument("--background", action="append", default=None, metavar="COLOUR|IMAGE",
                       help=background_help or
                       f"also write the subject over a new background: <saveDir>/{CUTOUT_DIR}/<name>_bg_<bg>.png, "
                       "<bg> the colour's name or hex digits or the image's file stem; a colour (#RRGGBB, "
                       "R,G,B, white, black, green, …) or an image (resized to cover); repeat for several")
    group.add_argument("--fg_backend", choices=BACKENDS, default="auto",
                       help="foreground estimator: pymatting (pip install pymatting), numpy, or auto "
                            "(pymatting when installed; default)")


def cutout_options(args):
    """Keyword arguments for :func:`write_cutouts` from the parsed flags, or None when no cut-out is asked for.

    Parses every ``--background`` (and reads its image) once, before any
    prediction, so a bad value fails early. ``backend`` is the estimator that
    will run (``auto`` resolved), for the summary line.
    """
    specs = getattr(args, "background", None) or []
    if isinstance(specs, str):
        specs = [specs]
    if not getattr(args, "rgba", False) and not specs:
        return None
    backgrounds, seen = [], {}
    for spec in specs:
        label = background_label(spec)
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:  # two images called bg.jpg in different folders: bg, bg_2
            label = f"{label}_{seen[label]}"
        backgrounds.append((label, parse_background(spec)))
    backend = getattr(args, "fg_backend", "auto")
    if backend == "pymatting" and not pymatting_available():
        raise UserError("--fg_backend pymatting: pymatting is not installed (pip install pymatting)")
    return {"rgba": bool(args.rgba), "backgrounds": backgrounds, "backend": resolve_backend(backend)}


def cutout_names(name, rgba=False, backgrounds=(), **_):
    """The cut-outs' paths relative to the output folder, for the matte ``name`` (what :func:`write_cutouts` writes)."""
    stem = os.path.splitext(name)[0]
    return ([f"{CUTOUT_DIR}/{stem}_rgba.png"] if rgba else []) + [f"{CUTOUT_DIR}/{stem}_bg_{label}.png"
                                                                  for label, _ in backgrounds]


def write_cutouts(save_dir, name, image_bgr, alpha, rgba=False, backgrounds=(), backend="auto"):
    """Write ``save_dir/cutout/<stem>_rgba.png`` and/or ``<stem>_bg_<label>.png``; returns the paths written.

    ``name``: the matte's file name; ``image_bgr``: the photo, uint8 H×W×3;
    ``alpha``: its matte after forcing (uint8 as written, or float [0, 1]);
    ``backgrounds``: ``[(label, colour tuple or image)]`` (:func:`background_label`,
    :func:`parse_background`). The foreground colours are estimated once for all of them.
    """
    if not rgba and not backgrounds:
        return []
    fg = estimate_foreground(image_bgr, alpha, backend)
    paths = [os.path.join(save_dir, *rel.split("/")) for rel in cutout_names(name, rgba, backgrounds)]
    makers = ([lambda: make_rgba(fg, alpha)] if rgba else []) + [
        lambda bg=bg: composite_on(fg, alpha, bg) for _, bg in backgrounds]
    for path, make in zip(paths, makers):  # one picture in memory at a time
        write_image(path, make())
    return paths
