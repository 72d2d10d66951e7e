"""The device rule train.sh and deploy.sh share (core.utils.script_device), for each CUDA value and GPU state."""

import subprocess
import sys

import pytest

from core.utils import UserError, script_device
from tests.conftest import ROOT


def never():
    raise AssertionError("CUDA=0 and bad values must not ask torch")


@pytest.mark.parametrize("script, doing", [("train.sh", "training"), ("deploy.sh", "testing")])
def test_each_cuda_value(script, doing):
    assert script_device("", script, doing, lambda: True) == (
        True, f"{script}: {doing} on the GPU (torch sees one; CUDA=0 for the CPU)")
    assert script_device("", script, doing, lambda: False) == (False, f"{script}: {doing} on the CPU (torch sees no GPU)")
    assert script_device("1", script, doing, lambda: True) == (True, f"{script}: {doing} on the GPU (CUDA=1)")
    with pytest.raises(UserError, match=r"^CUDA=1 but torch sees no CUDA device: leave CUDA unset or set CUDA=0 "):
        script_device("1", script, doing, lambda: False)
    assert script_device("0", script, doing, never) == (False, f"{script}: {doing} on the CPU (CUDA=0)")
    with pytest.raises(UserError, match=r"^CUDA must be 1 \(GPU\) or 0 \(CPU\), got 'yes'$"):
        script_device("yes", script, doing, never)


def test_command_line_prints_the_flag_and_the_line():
    """What the shell scripts run: --cuda (or nothing) on stdout, the status line or a one-line error on stderr."""
    run = [sys.executable, "-m", "core.utils", "device", "deploy.sh", "testing"]
    ok = subprocess.run(run + ["0"], cwd=ROOT, capture_output=True, text=True)
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "", "deploy.sh: testing on the CPU (CUDA=0)\n")
    bad = subprocess.run(run + ["2"], cwd=ROOT, capture_output=True, text=True)
    assert (bad.returncode, bad.stdout) == (2, "")
    assert bad.stderr == "error: CUDA must be 1 (GPU) or 0 (CPU), got '2'\n"
