"""Reading and writing images with errors users can act on."""

import contextlib
import functools
import os
import tempfile
import warnings

import cv2
import numpy as np

from core.utils import UserError

_UMASK = os.umask(0o022)
os.umask(_UMASK)


# Largest image any entry point decodes (e.g. 16384 × 8192). A file whose header claims more
# (a "decompression bomb", or a corrupt header) is refused before any pixel memory is allocated.
MAX_PIXELS = 2**27


def read_image(path):
    """A photo as BGR uint8 H×W×3, the way the reference's ``cv2.imread(path)`` reads it.

    A grey or palette file is expanded to three channels, an alpha channel is
    dropped (the colours as stored), a 16-bit file keeps its high byte
    (``v >> 8``, OpenCV's conversion). Anything unreadable is a one-line
    :class:`UserError` naming the file (see :func:`decode`).
    """
    return high_byte_to_uint8(decode(path, cv2.IMREAD_COLOR), path)


def read_gray(path):
    """Channel 0 of a 3-channel read, uint8 H×W — how the reference reads trimaps and alphas.

    So an RGB trimap gives its first channel in OpenCV's BGR order (blue);
    trimaps and alphas are normally grey, where every channel is the same.
    """
    return read_image(path)[:, :, 0].copy()


def read_unchanged(path):
    """The file as stored (grey, BGR or BGRA), uint8; used for masks whose alpha channel matters.

    16-bit files keep their high byte, like :func:`read_image`.
    """
    return high_byte_to_uint8(decode(path, cv2.IMREAD_UNCHANGED), path)


def high_byte_to_uint8(img, path):
    """uint8 as is; uint16 → its high byte (``v >> 8``); any other sample type is a UserError."""
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return (img >> 8).astype(np.uint8)
    raise UserError(f"{path}: {img.dtype} samples are not supported (expected an 8- or 16-bit image)")


def png_header(path):
    """(height, width, colour type, bit depth) from a PNG's IHDR without decoding; None if not a PNG."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big"), head[25], head[24]


@functools.lru_cache(maxsize=1)
def _pillow():
    """Pillow's ``Image`` module (None without Pillow), its decompression-bomb *warning* silenced once.

    The size limit is :data:`MAX_PIXELS`'s (:func:`check_image_file`), so Pillow's
    warning for images above its own, lower threshold would only mislead. A
    filter, not ``warnings.catch_warnings``: that swaps the process's filters
    and is not thread-safe, and headers are read in threads (``check_pairs``),
    where it hid other threads' warnings.
    """
    try:
        from PIL import Image
    except ImportError:
        return None
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    return Image


def image_size(path):
    """``(width, height)`` from the file's header without decoding it, or None when unknown.

    PNG headers are read here; other formats through Pillow (which comes with
    torchvision) when it is there. Pillow refuses claims above its own, lower
    limit: those come back as ``(MAX_PIXELS + 1, 1)``.
    """
    png = png_header(path)
    if png is not None:
        return png[1], png[0]
    Image = _pillow()
    if Image is None:  # then OpenCV's own limit still applies
        return None
    try:
        with Image.open(path) as im:
            return im.size
    except Image.DecompressionBombError:
        return MAX_PIXELS + 1, 1
    except Exception:  # noqa: BLE001 — Pillow raises many types on odd files; OpenCV decides about those
        return None


def check_image_file(path):
    """Refuse (one line naming ``path``) a missing or empty file, or one whose header claims > :data:`MAX_PIXELS`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise UserError(f"{path}: empty file (0 bytes), not an image")
    size = image_size(path)
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        shown = f"{size[0]}×{size[1]} pixels" if size[1] > 1 else "more pixels than Pillow's limit"
        raise UserError(f"{path}: the header claims {shown}, over the limit of {MAX_PIXELS:,} "
                        "(a decompression bomb or a corrupt file); not decoding it")
    return path


def decode(path, flags=cv2.IMREAD_UNCHANGED):
    """``cv2.imread(path, flags)`` that ends in a one-line :class:`UserError` for anything unreadable.

    Missing, empty, oversized (:func:`check_image_file`), corrupt or
    non-image files are refused; the sample type is returned as decoded
    (uint8, uint16, …), for callers with their own rule (:func:`high_byte_to_uint8`, the metrics).
    """
    path = check_image_file(path)
    try:
        img = cv2.imread(path, flags)
    except cv2.error as exc:  # OpenCV ≥ 5 raises on some bad headers instead of returning None
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = lines[-1][:160] if lines else "error"
        raise UserError(f"{path}: not a readable image (OpenCV: {detail})") from None
    if img is None or img.size == 0:
        raise UserError(f"{path}: not a readable image (corrupt or unsupported format)")
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


def remove_stale_temps(folder, names=None):
    """Delete the hidden ``.*.tmp`` files an interrupted run left in ``folder``.

    ``names``: only the temporaries of these file names (``.NAME.XXXX.tmp``),
    so a process that shares the folder with others (one shard of several)
    never deletes a file another is writing.
    """
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if name.startswith(".") and name.endswith(".tmp"):
                if names is not None and name[1:-4].rpartition(".")[0] not in names:
                    continue
                with contextlib.suppress(FileNotFoundError):  # another process removed or renamed it
                    os.remove(os.path.join(folder, name))
