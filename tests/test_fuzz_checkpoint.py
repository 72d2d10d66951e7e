"""Hostile and broken checkpoints: every file loads or ends in one UserError line naming it.

The generator lives in ``bench/fuzz_checkpoint.py`` (which runs 50,000 cases);
here a fixed, derandomized 2,000 cases run in CI.
"""

import os
import resource
import struct
import time

import pytest
import torch

from bench.fuzz_checkpoint import SENTINEL, run_cases, seed_files
from core.checkpoint import read_checkpoint
from core.utils import UserError
from tests.py2_legacy import save_py2_legacy


def test_fuzzed_checkpoints_load_or_refuse(tmp_path):
    counts, escapes = run_cases(2000, str(tmp_path), derandomize=True)
    assert sum(counts.values()) == 2000
    assert counts["else"] == 0, escapes
    # Both outcomes occur: the generator really mutates valid files and really breaks them.
    assert counts["loaded"] > 100 and counts["refused"] > 1000
    assert not (tmp_path / SENTINEL).exists()


@pytest.mark.parametrize("name", sorted(n for n in seed_files() if n.startswith("evil")))
def test_crafted_pickles_never_run(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "x.pth"
    path.write_bytes(seed_files()[name])
    with pytest.raises(UserError) as err:
        read_checkpoint(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg
    assert not (tmp_path / SENTINEL).exists()


def _legacy_with_numel(tmp_path, numel_opcode):
    """A legacy file whose one storage claims the element count pickled as ``numel_opcode``."""
    path = tmp_path / "claims.pth"
    save_py2_legacy({"state_dict": {"w": torch.zeros(77)}}, path)
    raw = path.read_bytes()
    assert raw.count(b"KMN") == 1  # the persistent id's numel (77 = 'M'), then view None
    path.write_bytes(raw.replace(b"KMN", numel_opcode + b"N"))
    return path


def _capped_memory(gib=2):
    """Cap this process's address space at what it uses now + ``gib`` GiB; returns the old limits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    cap = used + gib * 2**30
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
    return soft, hard


@pytest.mark.parametrize("numel", [1000, 2**31, 2**40, 2**62])
def test_storage_larger_than_the_file_is_refused_before_allocating(tmp_path, numel):
    path = _legacy_with_numel(tmp_path, b"\x8a\x08" + numel.to_bytes(8, "little"))  # LONG1
    size = path.stat().st_size
    limits = _capped_memory()  # a regression would fail as MemoryError here, not take the machine
    try:
        start = time.perf_counter()
        with pytest.raises(UserError) as err:
            read_checkpoint(path)
        assert time.perf_counter() - start < 30  # generous: the machine may be busy; a read of 4 GB is not
    finally:
        resource.setrlimit(resource.RLIMIT_AS, limits)
    assert str(err.value).startswith(f"{path}: truncated or corrupt checkpoint (the storages claim ")
    assert f": {numel * 4}) but the file has only" in str(err.value)
    assert int(str(err.value).split("has only ")[1].split()[0]) < size


def test_string_length_beyond_the_file_is_not_allocated(tmp_path):
    # BINSTRING with a 2 GiB length: read in one call it would allocate 2 GiB.
    path = tmp_path / "long.pth"
    save_py2_legacy({"state_dict": {"w": torch.zeros(3)}, "epoch": 1}, path)
    raw = path.read_bytes()
    i = raw.index(b"U\nstate_dict")
    path.write_bytes(raw[:i] + b"T" + struct.pack("<i", 2**31 - 1) + raw[i + 2:])
    limits = _capped_memory(1)
    try:
        with pytest.raises(UserError, match=r"truncated or corrupt checkpoint \(EOFError"):  # not MemoryError
            read_checkpoint(path)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, limits)


def test_negative_or_odd_element_counts(tmp_path):
    path = _legacy_with_numel(tmp_path, b"J" + struct.pack("<i", -5))
    with pytest.raises(UserError, match=r"bad element count -5"):
        read_checkpoint(path)
    path = _legacy_with_numel(tmp_path, b"U\x02ab")
    with pytest.raises(UserError, match=r"bad element count 'ab'"):
        read_checkpoint(path)


def test_unknown_opcode_and_bad_metadata_are_one_line(tmp_path):
    path = tmp_path / "op.pth"
    save_py2_legacy({"state_dict": {"w": torch.zeros(3)}, "epoch": 1}, path)
    raw = path.read_bytes()
    i = raw.index(b"U\nstate_dict")
    path.write_bytes(raw[:i] + b"\xfe" + raw[i + 1:])  # 0xfe is no opcode: the dispatch raises KeyError
    with pytest.raises(UserError, match=r"op\.pth: truncated or corrupt checkpoint \(KeyError: 254\)"):
        read_checkpoint(path)
    torch.save({"state_dict": {"w": torch.zeros(3)}, "epoch": "twelve", "best_sad": 1.0}, tmp_path / "m.pth")
    with pytest.raises(UserError, match=r"m\.pth: epoch is a str, not a number"):
        read_checkpoint(tmp_path / "m.pth")
    torch.save({"state_dict": {"w": torch.zeros(3)}, "best_sad": [1.0]}, tmp_path / "m.pth")
    with pytest.raises(UserError, match=r"m\.pth: best_sad is a list, not a number"):
        read_checkpoint(tmp_path / "m.pth")
