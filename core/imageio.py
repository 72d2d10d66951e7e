"""Reading and writing images with errors users can act on."""

import os
import tempfile

import cv2
import numpy as np

from core.utils import UserError


def read_image(path):
    """BGR uint8 H×W×3 (a grey file is expanded, an alpha channel dropped)."""
    img = _imread(path, cv2.IMREAD_COLOR)
    return img


def read_gray(path):
    """Channel 0 of a 3-channel read, uint8 H×W — how the reference reads trimaps and alphas."""
    return _imread(path, cv2.IMREAD_COLOR)[:, :, 0].copy()


def _imread(path, flags):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    img = cv2.imread(path, flags)
    if img is None or img.size == 0:
        raise UserError(f"{path}: not a readable image (corrupt or unsupported format)")
    if img.dtype != np.uint8:
        raise UserError(f"{path}: expected an 8-bit image, found {img.dtype}")
    return img


def write_image(path, img):
    """Write ``img`` atomically: encode in memory, write a temporary file, rename.

    The format follows ``path``'s extension. A crash never leaves a partial file.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1] or ".png"
    ok, buf = cv2.imencode(ext, img)
    if not ok:
        raise UserError(f"{path}: could not encode the image as {ext}")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=ext, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.tobytes())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
