"""Reading and writing images with errors users can act on."""

import contextlib
import os
import tempfile

import cv2
import numpy as np

from core.utils import UserError

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def read_image(path):
    """BGR uint8 H×W×3 (a grey file is expanded, an alpha channel dropped)."""
    img = _imread(path, cv2.IMREAD_COLOR)
    return img


def read_gray(path):
    """Channel 0 of a 3-channel read, uint8 H×W — how the reference reads trimaps and alphas."""
    return _imread(path, cv2.IMREAD_COLOR)[:, :, 0].copy()


def read_unchanged(path):
    """The file as stored (grey, BGR or BGRA), uint8; used for masks whose alpha channel matters."""
    return _imread(path, cv2.IMREAD_UNCHANGED)


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


@contextlib.contextmanager
def atomic_path(path, suffix=".tmp"):
    """Yield a temporary file name beside ``path``; when the block succeeds, rename it over ``path``.

    For writers that want a file name (``torch.jit.save``, ONNX). A crash or
    kill mid-write leaves either the old file or none, never a partial one
    (the temporary ``.name.XXXX.tmp`` may remain; see :func:`remove_stale_temps`).
    """
    path = os.fspath(path)
    folder, base = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{base}.", suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_bytes_atomic(path, data):
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def encode_image(img, ext=".png", params=()):
    """OpenCV-encode a uint8 image (BGR, BGRA or 1-channel) to bytes in the format of ``ext``."""
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(img), list(params))
    if not ok:
        raise UserError(f"OpenCV could not encode a {img.shape} {img.dtype} image as {ext}")
    return buf.tobytes()


def write_image(path, img, params=()):
    """Atomically write a uint8 image; the format follows the extension of ``path``."""
    path = os.fspath(path)
    write_bytes_atomic(path, encode_image(img, os.path.splitext(path)[1] or ".png", params))


def copy_file_atomic(src, dst):
    """Copy the bytes of ``src`` to ``dst`` atomically."""
    with open(src, "rb") as f:
        write_bytes_atomic(dst, f.read())


def remove_stale_temps(folder):
    """Delete the hidden ``.*.tmp`` files an interrupted run left in ``folder``."""
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if name.startswith(".") and name.endswith(".tmp"):
                os.remove(os.path.join(folder, name))
