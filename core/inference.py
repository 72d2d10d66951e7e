"""The one inference path: training-time validation, test.py and demo.py use it.

Reproduces the reference's deploy pipeline (SPEC §9):

* ``whole`` (default): each side rounded down to a multiple of 32 and capped at
  ``max_size`` (aspect ratio not kept when capped); image and trimap resized
  bilinearly (uint8), one forward pass, the alpha resized bilinearly back.
* ``resize``: the same through a fixed ``size`` (320×320).
* ``crop``: non-overlapping ``size`` tiles from the top-left; tiles without an
  unknown pixel are skipped; edge tiles are resized up, predicted and resized
  back; overlaps (none in practice) averaged.

Then the known regions are forced (1 where the trimap is 255, 0 where it is 0)
and the written matte is ``(alpha * 255)`` truncated to uint8.
"""

import warnings

import cv2
import numpy as np
import torch

from core.forward import forward_once
from core.ops.capabilities import check_precision
from core.preprocess import make_input
from core.stages import has_refine
from core.tiling import predict_tiles

MODES = ("whole", "crop", "resize", "tile")
AUTO = "auto"  # whole when the photo fits max_size, else tile: the page's default, and the demo's for own photos


def choose_mode(mode, h, w, max_size):
    """``auto`` → ``whole`` when both sides of an h×w photo fit ``max_size``, else ``tile``; others unchanged."""
    if mode == AUTO:
        return "whole" if max(h, w) <= max_size else "tile"
    return mode


def shrink_note(h, w, max_size):
    """The line saying that ``whole`` mode shrinks an h×w photo to fit ``max_size``, or None when it fits.

    (Rounding each side down to a multiple of 32 is not counted: it only drops up to 31 pixels.)
    """
    if max(h, w) <= max_size:
        return None
    new_h, new_w = whole_size(h, w, max_size)
    return (f"{w}×{h} is shrunk to {new_w}×{new_h} for the network in whole mode (--max_size {max_size}) and "
            "the matte scaled back up; --crop_or_resize tile predicts at full resolution")


def check_trimap(trimap, name="trimap"):
    """Warn when ``trimap`` holds values other than 0/128/255, saying how they are treated.

    Inference feeds the values to the network as they are (trimap/255) and forces
    only exact 0 and 255; the official metrics count only exact 128 as unknown.
    Returns the number of such pixels.
    """
    odd = int(np.count_nonzero((trimap != 0) & (trimap != 128) & (trimap != 255)))
    if odd:
        warnings.warn(f"{name}: {odd} pixels are not 0/128/255; they enter the network as value/255, "
                      "are not forced to 0 or 1, and the official metrics do not count them as unknown "
                      "(make trimaps with tools/gen_trimap.py, save them as PNG, never resize them bilinearly)",
                      stacklevel=2)
    return odd


def use_refined(model, stage=None):
    """Whether the refined alpha is reported: for ``stage`` as :data:`core.stages.STAGES` says, else
    when ``model`` has a refinement head."""
    if stage is None:
        return bool(getattr(model, "refine", False))
    return has_refine(stage)


def setup_backend(device="cpu", benchmark=False, threads=None):
    """Process-wide backend settings for inference; entry points call it once.

    Args:
        device: where the model runs (str or ``torch.device``).
        benchmark: CUDA only: let cuDNN time its kernels for each new input shape
            and keep the fastest. Pays when shapes repeat (crop/resize modes,
            training's fixed crops); in ``whole`` mode every photo size is a new
            shape and costs a tuning pass, so leave it off there.
        threads: CPU threads for torch (None: leave torch's default, all cores).

    Returns the ``torch.device``. Nothing here changes a prediction beyond float
    rounding. (Deliberately absent: a per-image ``torch.cuda.empty_cache()``,
    which only makes the caching allocator ask the driver for memory again.)
    """
    device = torch.device(device)
    if threads:
        torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(benchmark)
    return device


def whole_size(h, w, max_size):
    """Network input size for ``whole`` mode: (new_h, new_w), SPEC §9."""
    new_h, new_w = min(max_size, h - h % 32), min(max_size, w - w % 32)
    if new_h < 32 or new_w < 32:
        raise ValueError(f"image of {w}×{h} pixels is too small: both sides must be at least 32 "
                         f"(and max_size {max_size} at least 32)")
    return new_h, new_w


def resize_pair(image_bgr, trimap, new_h, new_w):
    """Image and trimap resized to new_h×new_w, both bilinearly on uint8 as the reference does (SPEC §9).

    The trimap too: its resized edges hold values between 0, 128 and 255 and the
    released models were tested that way; a nearest-neighbour trimap changes mattes
    by several grey levels.
    """
    img = cv2.resize(image_bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    tri = cv2.resize(trimap, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return img, tri


def _through_size(model, image_bgr, trimap, new_h, new_w, **kw):
    h, w = trimap.shape
    alpha = forward_once(model, *resize_pair(image_bgr, trimap, new_h, new_w), **kw)
    return cv2.resize(alpha, (w, h), interpolation=cv2.INTER_LINEAR)


def whole_input(image_bgr, trimap, max_size=1600):
    """``whole`` mode's network input for a model run outside PyTorch (``tools/export.py``).

    ``image_bgr``: H×W×3 uint8 BGR; ``trimap``: H×W uint8 0/128/255. Sides rounded
    down to multiples of 32 and capped at ``max_size`` (:func:`whole_size`), image
    and trimap resized bilinearly (:func:`resize_pair`), then
    :func:`core.preprocess.make_input`. Returns float32 1×4×H'×W'; feed it to the
    exported model and give its output to :func:`finish_matte`.
    """
    h, w = trimap.shape
    img, tri = resize_pair(image_bgr, trimap, *whole_size(h, w, max_size))
    return make_input(img, tri)[None]


def finish_matte(alpha, trimap):
    """An exported model's alpha (H'×W' or 1×1×H'×W' float) → the 8-bit matte ``core/test.py`` writes.

    Resized bilinearly back to the trimap's H×W, forced where the trimap is 0 or
    255 (:func:`force_known`), ``alpha·255`` truncated (:func:`truncate_to_uint8`).
    """
    alpha = np.asarray(alpha, np.float32).reshape(np.shape(alpha)[-2:])
    h, w = trimap.shape
    return truncate_to_uint8(force_known(cv2.resize(alpha, (w, h), interpolation=cv2.INTER_LINEAR), trimap))


def predict_crop(model, image_bgr, trimap, size=(320, 320), **kw):
    """``crop`` mode: non-overlapping tiles of ``size`` = (h, w), see the module docstring."""
    size_h, size_w = size
    h, w = trimap.shape
    acc = np.zeros((h, w), np.float32)
    marks = np.zeros((h, w), np.float32)
    for y in range(0, h, size_h):
        for x in range(0, w, size_w):
            tri = trimap[y:y + size_h, x:x + size_w]
            if not np.any(tri == 128):
                continue
            img = image_bgr[y:y + size_h, x:x + size_w]
            th, tw = tri.shape
            if (th, tw) != (size_h, size_w):
                img = cv2.resize(img, (size_w, size_h), interpolation=cv2.INTER_LINEAR)
                tri = cv2.resize(tri, (size_w, size_h), interpolation=cv2.INTER_LINEAR)
            alpha = forward_once(model, img, tri, **kw)
            if (th, tw) != (size_h, size_w):
                alpha = cv2.resize(alpha, (tw, th), interpolation=cv2.INTER_LINEAR)
            acc[y:y + th, x:x + tw] += alpha
            marks[y:y + th, x:x + tw] += 1
    marks[marks <= 0] = 1
    return acc / marks


def predict(model, image_bgr, trimap, mode="whole", max_size=1600, size=(320, 320), stage=None, amp=False,
            tile_size=512, tile_overlap=64, precision="fp32", exact=False):
    """Predict an alpha matte before forcing: float32 H×W in [0, 1].

    Args:
        model: a ``DIMNet`` (eval mode, any device).
        image_bgr: H×W×3 uint8, BGR as read by OpenCV.
        trimap: H×W uint8, 0/128/255.
        mode: ``whole`` | ``crop`` | ``resize`` (SPEC §9), or ``tile``: full resolution in
            overlapping, blended windows with memory bounded by the window (``core.tiling``);
            ``auto``: :func:`choose_mode`.
        max_size: cap on each side in ``whole`` mode.
        size: (size_h, size_w) for ``crop`` and ``resize``.
        stage: 0–3 picks the alpha (refined for 2/3); None: refined if the model has a head.
        amp: autocast on CUDA (ignored on the CPU).
        tile_size, tile_overlap: window side and minimum overlap for ``tile``.
        precision: ``fp32`` (default: the exact path), ``bf16`` or ``fp16`` (CUDA only), see
            ``core.ops.reduced``; ValueError when it cannot run on the model's device.
        exact: ``fp32`` with the exact kernel for every convolution, bit for bit ``model(x)``
            (``core.ops.lean``; slower decoder).
    """
    if image_bgr.shape[:2] != trimap.shape:
        raise ValueError(f"image {image_bgr.shape[:2]} and trimap {trimap.shape} differ in size")
    mode = choose_mode(mode, *trimap.shape, max_size)
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}, or {AUTO}")
    check_precision(precision, next(model.parameters()).device)
    kw = {"refined": use_refined(model, stage), "amp": amp, "precision": precision, "exact": exact}
    h, w = trimap.shape
    if mode == "whole":
        return _through_size(model, image_bgr, trimap, *whole_size(h, w, max_size), **kw)
    if mode == "resize":
        return _through_size(model, image_bgr, trimap, size[0], size[1], **kw)
    if mode == "tile":
        return predict_tiles(model, image_bgr, trimap, tile=tile_size, overlap=tile_overlap, **kw)
    return predict_crop(model, image_bgr, trimap, size, **kw)


def force_known(alpha, trimap):
    """Alpha with 1 where the trimap is 255 and 0 where it is 0 (a new array)."""
    alpha = alpha.copy()
    alpha[trimap == 255] = 1.0
    alpha[trimap == 0] = 0.0
    return alpha


def truncate_to_uint8(alpha):
    """The saved matte: ``alpha * 255`` truncated to uint8, as the reference writes it."""
    return (alpha * np.float32(255)).astype(np.uint8)


def predict_matte(model, image_bgr, trimap, **kw):
    """``predict`` + ``force_known`` + ``truncate_to_uint8``: the 8-bit matte that is written to disk."""
    return truncate_to_uint8(force_known(predict(model, image_bgr, trimap, **kw), trimap))
