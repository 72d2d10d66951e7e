"""A folder of decoded training images, read back memory-mapped (``--cache_dir``).

Decoding a 1920×1080 PNG foreground and its alpha costs tens of milliseconds,
and the online training set decodes each of them again for every one of its
100 composites, every epoch. The cache decodes each source once into an
uncompressed ``.npy`` file; later reads map it (``numpy.memmap``), so no PNG or
JPEG is decoded again and DataLoader workers share the same page-cache pages.

* An entry is named by a hash of its kind, the source's absolute path, size and
  modification time (ns) and :data:`VERSION`: a changed source gets a new name
  and is decoded again, never served stale. Old entries stay until the folder is
  deleted (:meth:`SourceCache.stale`, reported by ``tools/build_cache.py``).
* Entries are written to a hidden temporary file in the cache folder and
  renamed (``os.replace``), so any number of ranks and workers can fill the
  cache at once: the last rename wins and every version is whole.
* A read checks the ``.npy`` header (dtype, number of dimensions) and that the
  file is exactly header + data long; an entry cut short or unreadable is
  decoded again and rewritten, with one warning, and never served.
"""

import hashlib
import os
import tempfile
import warnings

import numpy as np
from numpy.lib import format as npy_format

from core.utils import UserError

VERSION = 1  # bump when what an entry holds changes


class CacheWarning(UserWarning):
    """An entry of the cache was unreadable or cut short and is being rebuilt."""


def _read_header(f):
    major, minor = npy_format.read_magic(f)
    if (major, minor) == (1, 0):
        shape, fortran, dtype = npy_format.read_array_header_1_0(f)
    elif (major, minor) == (2, 0):
        shape, fortran, dtype = npy_format.read_array_header_2_0(f)
    else:
        raise ValueError(f"npy version {major}.{minor}")
    return shape, fortran, dtype, f.tell()


def open_entry(path, dtype, ndims):
    """The array of a whole ``.npy`` entry, memory-mapped read-only; ValueError/OSError when it
    is not a C-ordered ``dtype`` array with one of ``ndims`` dimensions and exactly its length."""
    with open(path, "rb") as f:
        shape, fortran, got, offset = _read_header(f)
        size = os.fstat(f.fileno()).st_size
    if fortran or got != np.dtype(dtype) or len(shape) not in ndims:
        raise ValueError(f"holds {'Fortran-ordered ' if fortran else ''}{got} {shape}")
    expected = offset + int(np.prod(shape, dtype=np.int64)) * got.itemsize
    if size != expected:
        raise ValueError(f"is {size} bytes, its header needs {expected}")
    return np.memmap(path, dtype=got, mode="r", shape=tuple(shape), offset=offset)


def write_entry(path, array):
    """Write ``array`` as a ``.npy`` file atomically (hidden temporary file in the same folder, then rename)."""
    folder, base = os.path.split(path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{base}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class SourceCache:
    """Decoded arrays of source files under ``folder``, keyed by (kind, path, size, mtime).

    ``folder`` is created if needed; one that cannot be written is a UserError.
    The object holds no open file, so it pickles into DataLoader workers.
    """

    def __init__(self, folder):
        self.folder = os.path.abspath(os.fspath(folder))
        try:
            os.makedirs(self.folder, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=self.folder, prefix=".write-test.", suffix=".tmp")
            os.close(fd)
            os.remove(probe)
        except OSError as exc:
            raise UserError(f"--cache_dir {folder}: cannot write there ({exc.strerror or exc})") from None
        self.warned = set()

    def entry_path(self, source, kind):
        """The entry file of ``kind`` (e.g. ``fg``) for the source file as it is now (stat'ed here)."""
        st = os.stat(source)
        key = f"{VERSION}\0{kind}\0{os.path.abspath(source)}\0{st.st_size}\0{st.st_mtime_ns}"
        digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()
        return os.path.join(self.folder, f"{kind}-{digest}.npy")

    def get(self, source, kinds, build):
        """The entries ``kinds`` = {kind: (dtype, allowed ndims)} of ``source``, as a dict of arrays.

        Missing or broken ones are made by ``build()`` (which returns {kind: array} for every
        kind) and written; what ``build`` returns is what this call gives back.
        """
        paths = {kind: self.entry_path(source, kind) for kind in kinds}
        out = {}
        for kind, (dtype, ndims) in kinds.items():
            try:
                out[kind] = open_entry(paths[kind], dtype, ndims)
            except FileNotFoundError:
                break
            except (OSError, ValueError) as exc:
                self._warn(f"cache entry {paths[kind]} of {source} {exc}: rebuilding it")
                break
        else:
            return out
        built = build()
        for kind in kinds:
            try:
                write_entry(paths[kind], built[kind])
            except OSError as exc:  # a full or read-only disk: train on, uncached
                self._warn(f"cannot write cache entry {paths[kind]} ({exc.strerror or exc}): "
                           f"{source} stays uncached")
        return {kind: built[kind] for kind in kinds}

    def has(self, source, kinds):
        """Whether every entry of ``kinds`` for ``source`` exists and is whole."""
        for kind, (dtype, ndims) in kinds.items():
            try:
                open_entry(self.entry_path(source, kind), dtype, ndims)
            except (OSError, ValueError):
                return False
        return True

    def _warn(self, message):
        if message not in self.warned:
            self.warned.add(message)
            warnings.warn(message, CacheWarning, stacklevel=3)

    def disk_bytes(self):
        """(bytes, files) of the entries now in the folder."""
        total = count = 0
        with os.scandir(self.folder) as it:
            for e in it:
                if e.name.endswith(".npy") and not e.name.startswith(".") and e.is_file():
                    total, count = total + e.stat().st_size, count + 1
        return total, count


def human_bytes(n):
    """1234567 → '1.2 MB' (powers of 1000, as disks are sold)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
