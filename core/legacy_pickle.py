"""A restricted reader for torch's legacy (non-zip) checkpoint format.

The reference's released checkpoints were written by PyTorch 0.4 under
Python 2: a sequence of pickles (magic number, protocol version, system info,
the object, the storage keys) followed by the raw storage bytes. Python-2
``str`` objects appear as BINSTRING/SHORT_BINSTRING opcodes and ``best_sad``
is a pickled numpy float64, so ``torch.load(weights_only=True)`` rejects
these files and ``weights_only=False`` would run whatever the pickle names.

This reader resolves only an allowlist of globals, each to a function written
here (never to the callable the file names), so loading can build tensors,
ordered dicts and numeric numpy scalars and nothing else: any other global
stops the load before anything is called.
"""

import collections
import os
import pickle
import struct

import numpy as np
import torch

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class ForbiddenGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the allowlist (it would run code)."""


class _StorageType:
    def __init__(self, dtype):
        self.dtype = dtype


def _rebuild_tensor(storage, offset, size, stride, *unused):
    # Covers _rebuild_tensor (4 args) and _rebuild_tensor_v2 (+requires_grad,
    # backward_hooks[, metadata]). ``storage`` is a 1-D tensor filled later.
    return storage.as_strided(tuple(size), tuple(stride), offset)


def _rebuild_parameter(data, requires_grad, backward_hooks, *unused):
    return data


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biuf":
        raise ForbiddenGlobal(f"numpy scalar of type {dtype!r} is not allowed")
    if isinstance(data, str):  # a Python-2 str read with latin-1
        data = data.encode("latin1")
    return np.frombuffer(data, dtype=dtype)[0]


def _numpy_dtype(name, align=False, copy=False):
    dt = np.dtype(name)
    if dt.kind not in "biuf":
        raise ForbiddenGlobal(f"numpy dtype {name!r} is not allowed")
    return dt


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype,
}
_ALLOWED.update({("torch", name): _StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()})


class _BoundedFile:
    """A read-only view of an open file that never asks for more bytes than the file has left.

    The pure-Python unpickler reads a length the file states (a string's, a
    frame's) in one call; capping it keeps a forged length from allocating
    more memory than the file is long.
    """

    def __init__(self, f, size):
        self.f, self.size = f, size

    def left(self):
        return max(0, self.size - self.f.tell())

    def read(self, n=-1):
        return self.f.read(self.left() if n is None or n < 0 else min(n, self.left()))

    def readinto(self, buf):
        return self.f.readinto(memoryview(buf)[:self.left()])

    def readline(self):
        return self.f.readline()

    def tell(self):
        return self.f.tell()


class _Unpickler(pickle._Unpickler):  # pure-Python unpickler: every global goes through find_class
    def __init__(self, file, storages, claimed):
        super().__init__(file, encoding="latin1")
        self.file_left = file.left
        self.storages = storages
        self.claimed = claimed  # [bytes of all storages declared so far], shared by the file's pickles

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise ForbiddenGlobal(f"{module}.{name}") from None

    def persistent_load(self, saved_id):
        if not (isinstance(saved_id, tuple) and len(saved_id) == 6 and saved_id[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {saved_id!r:.80}")
        _, storage_type, key, _location, numel, view = saved_id
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError("persistent id without a storage type")
        base = self.storages.get(key)
        if base is None:
            if not isinstance(numel, int) or numel < 0:
                raise pickle.UnpicklingError(f"storage {key!r:.40}: bad element count {numel!r:.40}")
            # Storage bytes follow the pickles: a storage cannot be larger than what the file has left.
            nbytes = numel * storage_type.dtype.itemsize
            self.claimed[0] += nbytes
            if self.claimed[0] > self.file_left():
                raise pickle.UnpicklingError(f"the storages claim {self.claimed[0]} bytes (storage {key!r:.40}: "
                                             f"{nbytes}) but the file has only {self.file_left()} bytes left")
            base = self.storages[key] = torch.empty(numel, dtype=storage_type.dtype)
        if view is not None:
            _view_key, offset, size = view
            return base[offset:offset + size]
        return base

    def load_build(self):
        # Only plain containers may receive state (e.g. a state dict's _metadata).
        state = self.stack[-1]
        inst = self.stack[-2]
        if not isinstance(inst, (dict, list)) and not isinstance(inst, np.dtype):
            raise ForbiddenGlobal(f"BUILD on {type(inst).__name__}")
        if isinstance(inst, np.dtype):
            self.stack.pop()  # a numeric dtype's state carries nothing we need
            return
        self.stack.pop()
        if isinstance(state, dict):
            for k, v in state.items():
                try:
                    setattr(inst, k, v)
                except AttributeError:
                    pass

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = load_build


def is_legacy_file(head):
    """True when ``head`` (the first bytes of a file) starts a legacy torch file."""
    return head.startswith(b"\x80\x02\x8a\x0a") and int.from_bytes(head[4:14], "little") == MAGIC_NUMBER


def load_legacy(path):
    """Read a legacy-format torch file without running code.

    Raises ``ForbiddenGlobal`` when the file names a global outside the
    allowlist. Malformed bytes raise whatever the pickle machinery raises on
    them (``pickle.UnpicklingError``, ``EOFError``, ``KeyError`` for an unknown
    opcode, ``IndexError``, ``TypeError``, …; see
    ``core.checkpoint.READER_ERRORS``), but never allocate more than the file
    holds: every storage is checked against the bytes left before it is made.
    """
    storages, claimed = {}, [0]
    with open(path, "rb") as raw:
        f = _BoundedFile(raw, os.fstat(raw.fileno()).st_size)

        def next_pickle():
            return _Unpickler(f, storages, claimed).load()

        if next_pickle() != MAGIC_NUMBER:
            raise pickle.UnpicklingError("bad magic number")
        if next_pickle() != PROTOCOL_VERSION:
            raise pickle.UnpicklingError("unsupported protocol version")
        sys_info = next_pickle()
        if not isinstance(sys_info, dict) or not sys_info.get("little_endian", True):
            raise pickle.UnpicklingError("big-endian files are not supported")
        result = next_pickle()
        keys = next_pickle()
        if not isinstance(keys, list):
            raise pickle.UnpicklingError("the storage key list is missing")
        for key in keys:
            base = storages.get(key)
            if base is None:
                raise pickle.UnpicklingError(f"storage key {key!r:.40} is not used by the object")
            (numel,) = struct.unpack("<q", _read_exact(f, 8))
            if numel != base.numel():
                raise pickle.UnpicklingError(f"storage {key}: {numel} elements, expected {base.numel()}")
            nbytes = numel * base.element_size()
            if nbytes:
                data = bytearray(_read_exact(f, nbytes))
                base.copy_(torch.frombuffer(data, dtype=base.dtype))
    return result


def _read_exact(f, n):
    data = f.read(n)
    if len(data) != n:
        raise EOFError(f"file ends after {len(data)} of {n} bytes")
    return data


__all__ = ["ForbiddenGlobal", "is_legacy_file", "load_legacy"]
