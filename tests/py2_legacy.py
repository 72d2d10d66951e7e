"""Write checkpoints the way PyTorch 0.4 under Python 2 did (SPEC §3), for tests.

Python 2's ``str`` was a byte string, pickled with the BINSTRING /
SHORT_BINSTRING opcodes; torch's legacy (non-zip) layout and pickle protocol 2
are what torch.save still writes with ``_use_new_zipfile_serialization=False``.
"""

import pickle
import struct
import types

import torch


class Py2Pickler(pickle._Pickler):
    """Emits every ``str`` and ``bytes`` as a Python-2 byte string."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else bytes(obj)
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = _save_py2_str
    dispatch[bytes] = _save_py2_str


py2_pickle_module = types.ModuleType("py2_pickle")
py2_pickle_module.Pickler = Py2Pickler
py2_pickle_module.dump = lambda obj, f, protocol=2: Py2Pickler(f, protocol).dump(obj)


def save_py2_legacy(obj, path):
    torch.save(obj, path, pickle_module=py2_pickle_module, pickle_protocol=2,
               _use_new_zipfile_serialization=False)
