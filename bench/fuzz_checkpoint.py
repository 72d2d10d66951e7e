"""Fuzz the checkpoint loader: every file must load or end in one UserError line.

    python bench/fuzz_checkpoint.py --cases 50000 [--seed 0]

Mutates small checkpoints in both formats the loader reads (a Python-2-style
legacy file and a zip file) with Hypothesis: byte flips, truncations, swapped
spans, 8-byte runs of large integers (where sizes and offsets live), inserted
bytes and code-running pickles appended; crafted pickles that try to run code
are wrapped in both formats. Each file goes through
:func:`core.checkpoint.read_checkpoint` and is counted as *loaded*, *refused*
(``UserError`` with one line naming the file) or *else* (anything else: an
escaped exception, a multi-line message, a case slower than ``SLOW_S``, or a
payload that ran). Prints the counts; exits 1 when *else* is not 0.

The address space is capped (``--mem_gb``) so a loader that tries to allocate
what a file merely claims fails here as MemoryError instead of taking the
machine. ``tests/test_fuzz_checkpoint.py`` runs the same generator with a
fixed seed and a small budget in CI.
"""

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import collections
import io
import pickle
import struct
import tempfile
import time
import zipfile

import numpy as np
import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from core.checkpoint import read_checkpoint
from core.legacy_pickle import MAGIC_NUMBER, PROTOCOL_VERSION
from core.utils import UserError
from tests.py2_legacy import save_py2_legacy

SLOW_S = 5.0
SENTINEL = "FUZZ_PAYLOAD_RAN"
BIG_INTS = (2**31 - 1, 2**31, 2**32 - 1, 2**40, 2**62, 2**63 - 1, -1, -(2**31), 0x7FFFFFFFFFFF)


# ---------------------------------------------------------------- seed files

class _Payload:
    """Unpickling this would create the sentinel file (it must never happen)."""

    def __init__(self, func="system"):
        self.func = func

    def __reduce__(self):
        if self.func == "system":
            return os.system, (f"touch {SENTINEL}",)
        if self.func == "eval":
            return eval, (f"open({SENTINEL!r}, 'w')",)
        return open, (SENTINEL, "w")


def _raw_pickles():
    """Pickles (bytes) that try to run code, each a different route."""
    touch = f"touch {SENTINEL}".encode()
    opened = f"open({SENTINEL!r}, 'w')".encode()
    out = [pickle.dumps(_Payload(f), protocol=p) for f in ("system", "eval", "open") for p in (2, 4)]
    out += [
        b"cposix\nsystem\n(S'" + touch + b"'\ntR.",                          # GLOBAL + REDUCE
        b"cbuiltins\nexec\n(S'" + opened + b"'\ntR.",
        b"(S'" + touch + b"'\nios\nsystem\n.",                              # INST
        b"\x80\x02(cos\nsystem\nS'" + touch + b"'\no.",                     # OBJ
        b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x8c\x06system\x93\x8c"
        + bytes([len(touch)]) + touch + b"\x85R.",                          # STACK_GLOBAL
        b"\x80\x02ctorch._utils\n_rebuild_tensor\n(cos\nsystem\nS'" + touch + b"'\n\x85Rtb.",
        b"\x80\x02}(U\x05epochcsubprocess\nPopen\n]U\x05touchaU\x10" + SENTINEL.encode() + b"a\x85Ru.",
        b"\x80\x02ccollections\nOrderedDict\n)R}U\x07__class__cos\nsystem\nsb.",  # BUILD with a class
    ]
    return out


def _legacy_wrap(obj_pickle):
    """A legacy torch file whose object pickle is ``obj_pickle`` (no storages)."""
    head = b"".join(pickle.dumps(x, protocol=2) for x in (MAGIC_NUMBER, PROTOCOL_VERSION, {"little_endian": True}))
    return head + obj_pickle + pickle.dumps([], protocol=2)


def _zip_wrap(obj_pickle):
    """A zip checkpoint whose data.pkl is ``obj_pickle``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", obj_pickle)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
    return buf.getvalue()


def seed_files():
    """``{name: bytes}``: valid small checkpoints in both formats and crafted code-running files."""
    torch.manual_seed(0)
    state = collections.OrderedDict([("conv1_1.weight", torch.randn(2, 4, 3, 3)),
                                     ("conv1_1.bias", torch.randn(2)),
                                     ("deconv1.weight", torch.randn(1, 2, 5, 5).double()),
                                     ("view", torch.arange(10, dtype=torch.int64)[2:7])])
    obj = {"state_dict": state, "epoch": 12, "best_sad": np.float64(57.1)}
    files = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "f.pth")
        save_py2_legacy(obj, path)
        files["legacy_py2"] = open(path, "rb").read()
        buf = io.BytesIO()
        torch.save({"state_dict": dict(state), "epoch": 3, "best_sad": 51.5, "arch": {"skip": True}}, buf)
        files["zip"] = buf.getvalue()
    for i, raw in enumerate(_raw_pickles()):
        files[f"evil{i}_legacy"] = _legacy_wrap(raw)
        files[f"evil{i}_zip"] = _zip_wrap(raw)
    return files


# ---------------------------------------------------------------- mutations

_pos = st.integers(min_value=0, max_value=2**20)
MUTATION = st.one_of(
    st.tuples(st.just("flip"), _pos, st.integers(1, 255)),
    st.tuples(st.just("truncate"), _pos),
    st.tuples(st.just("swap"), _pos, _pos, st.integers(1, 64)),
    st.tuples(st.just("bigint"), _pos, st.sampled_from(BIG_INTS), st.sampled_from(("<q", "<i", ">q", "<Q"))),
    st.tuples(st.just("insert"), _pos, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("payload"), st.integers(0, len(_raw_pickles()) - 1)),
)


def mutate(data, ops):
    """Apply ``ops`` (from :data:`MUTATION`) to ``data``; positions wrap around the length."""
    data = bytearray(data)
    for op in ops:
        n = max(len(data), 1)
        kind = op[0]
        if kind == "flip" and data:
            data[op[1] % n] ^= op[2]
        elif kind == "truncate":
            del data[op[1] % n:]
        elif kind == "swap" and data:
            a, b, k = op[1] % n, op[2] % n, op[3]
            sa, sb = bytes(data[a:a + k]), bytes(data[b:b + k])
            if a + k <= b or b + k <= a:
                data[a:a + len(sa)], data[b:b + len(sb)] = sb[:len(sa)].ljust(len(sa), b"\0"), sa[:len(sb)]
        elif kind == "bigint":
            fmt = op[3]
            value = op[2] % 2**64 if fmt in ("<Q",) else op[2]
            try:
                packed = struct.pack(fmt, value)
            except struct.error:
                packed = struct.pack("<q", -1)
            a = op[1] % n
            data[a:a + len(packed)] = packed
        elif kind == "insert":
            a = op[1] % n
            data[a:a] = op[2]
        elif kind == "payload":
            data += _raw_pickles()[op[1]]
    return bytes(data)


# Half the cases start from a valid checkpoint, half from any seed file (most are crafted pickles).
CASE = st.tuples(st.one_of(st.sampled_from(["legacy_py2", "zip"]), st.sampled_from(sorted(seed_files()))),
                 st.lists(MUTATION, min_size=0, max_size=4))


# ---------------------------------------------------------------- one case

def classify(path):
    """('loaded' | 'refused' | 'else', detail) for the file at ``path``."""
    start = time.perf_counter()
    try:
        read_checkpoint(path)
        outcome = ("loaded", "")
    except UserError as exc:
        msg = str(exc)
        ok = "\n" not in msg and msg.startswith(str(path))
        outcome = ("refused", msg) if ok else ("else", f"bad message: {msg[:200]!r}")
    except BaseException as exc:  # noqa: BLE001 — counting escapes is the point here
        if isinstance(exc, KeyboardInterrupt):
            raise
        outcome = ("else", f"{type(exc).__name__}: {str(exc)[:200]}")
    seconds = time.perf_counter() - start
    if seconds > SLOW_S and outcome[0] != "else":
        outcome = ("else", f"slow: {seconds:.1f} s")
    return outcome


def run_cases(n, workdir, seed_value=0, derandomize=False, on_case=None):
    """Run ``n`` generated cases in ``workdir``; returns ``(Counter of outcomes, {detail: example ops})``.

    ``workdir`` is also the current folder while a case loads, so a payload
    that ran would leave :data:`SENTINEL` there.
    """
    files = seed_files()
    counts, escapes = collections.Counter(), {}
    path = os.path.join(workdir, "case.pth")
    old_cwd = os.getcwd()

    @settings(max_examples=n, derandomize=derandomize, database=None, deadline=None,
              suppress_health_check=list(HealthCheck), phases=["generate"])
    @seed(seed_value)
    @given(CASE)
    def one(case):
        name, ops = case
        with open(path, "wb") as f:
            f.write(mutate(files[name], ops))
        kind, detail = classify(path)
        if os.path.exists(SENTINEL):
            os.remove(SENTINEL)
            kind, detail = "else", "PAYLOAD RAN"
        counts[kind] += 1
        if kind == "else":
            escapes.setdefault(detail[:50], (name, ops))
        if on_case:
            on_case(counts)

    os.chdir(workdir)
    try:
        one()
    finally:
        os.chdir(old_cwd)
    return counts, escapes


def main(argv=None):
    parser = argparse.ArgumentParser(description="Fuzz core.checkpoint.read_checkpoint; print the outcome counts.")
    parser.add_argument("--cases", type=int, default=50000, help="generated files (default 50000)")
    parser.add_argument("--seed", type=int, default=0, help="Hypothesis seed (default 0)")
    parser.add_argument("--mem_gb", type=float, default=8, help="address-space cap in GiB (default 8; 0: none)")
    args = parser.parse_args(argv)
    if args.mem_gb > 0:
        import resource
        cap = int(args.mem_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    torch.set_num_threads(1)
    start = time.time()

    def progress(counts):
        done = sum(counts.values())
        if done % 5000 == 0:
            print(f"{done} cases, {time.time() - start:.0f} s: {dict(counts)}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        counts, escapes = run_cases(args.cases, tmp, args.seed, on_case=progress)
    total = sum(counts.values())
    print(f"{total} cases in {time.time() - start:.0f} s (seed {args.seed}, {len(seed_files())} seed files): "
          f"loaded {counts['loaded']}, refused {counts['refused']}, else {counts['else']}")
    for detail, example in sorted(escapes.items()):
        print(f"  else: {detail}  e.g. {example}")
    return 1 if counts["else"] else 0


if __name__ == "__main__":
    sys.exit(main())
