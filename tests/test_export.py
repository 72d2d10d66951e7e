"""tools/export.py: the ONNX file (onnxruntime, CPU) and the TorchScript file give
PyTorch's output within 1e-4 at three sizes (dynamic batch, height and width)."""

import contextlib
import io
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.tile_memory import random_model
from core.checkpoint import save_checkpoint
from core.utils import run_cli
from tools import export
from tools.export import AlphaOnly, sample_input, traceable_unpool, verify_onnx

SIZES = ((1, 64, 96), (1, 96, 32), (2, 32, 64))


def inputs():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(n, 4, h, w, generator=g) for n, h, w in SIZES]


def run_export(tmp, model, name, *flags):
    """Save ``model`` as ``tmp/name`` and run tools/export.py on it (with its onnxruntime check); returns stdout."""
    save_checkpoint(tmp / name, model, epoch=1, best_sad=None)
    buf = io.StringIO()
    with pytest.raises(SystemExit) as exc, contextlib.redirect_stdout(buf):
        run_cli(export.main, ["--resume", str(tmp / name), "--out_dir", str(tmp / "out"), *flags])
    assert exc.value.code == 0
    return buf.getvalue()


def verified_diff(stdout):
    """The max |diff| tools/export.py printed for its onnxruntime check."""
    match = re.search(r"onnxruntime vs PyTorch max \|diff\| (\S+)", stdout)
    assert match, stdout
    return float(match.group(1))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A stage-2 checkpoint (skip, refinement head, calibrated random weights) exported in both formats."""
    tmp = tmp_path_factory.mktemp("export")
    model = random_model(seed=3, refine=True)
    formats = "both" if _has_onnx() else "torchscript"
    stdout = run_export(tmp, model, "stage2.pth", "--stage", "2", "--format", formats)
    if formats == "both":  # verify_onnx ran on the export's sample and found it equal to PyTorch's output
        assert verified_diff(stdout) < 1e-4
    return model, tmp / "out"


def _has_onnx():
    import importlib.util
    return all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))


def expected(model, x, refined=True):
    with torch.no_grad():
        alpha, refined_alpha = model(x)
    return (refined_alpha if refined else alpha).numpy()


def test_onnx_matches_pytorch(exported):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model, out = exported
    session = ort.InferenceSession(str(out / "stage2.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x"]
    for x in inputs():
        got = session.run(None, {"x": x.numpy()})[0]
        want = expected(model, x)
        assert got.shape == want.shape == (x.shape[0], 1, *x.shape[2:])
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    # the check has teeth: the refined alpha is far from the stage-1 alpha, which is not flat
    alpha = expected(model, x, refined=False)
    assert np.abs(want - alpha).max() > 0.05 and alpha.std() > 0.05


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_matches_pytorch(exported):
    model, out = exported
    loaded = torch.jit.load(str(out / "stage2.torchscript.pt"))
    for x in inputs():
        with torch.no_grad():
            got = loaded(x).numpy()
        np.testing.assert_allclose(got, expected(model, x), atol=1e-4, rtol=0)
    # the export restored max_unpool2d's size check
    assert F._check_unpool_output_size.__name__ == "_check_unpool_output_size"


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_stage1_model_without_skip_exports_its_alpha(tmp_path):
    # TorchScript only: an ONNX export costs about a minute on 2 cores, and the stage-2 one above
    # already covers the ONNX path (and its check)
    model = random_model(seed=4, skip=False)  # a stage-1 model as the older releases: no skip, no head
    stdout = run_export(tmp_path, model, "stage1.pth", "--format", "torchscript")
    assert "skip=False (checkpoint metadata), exporting the alpha" in stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["stage1.torchscript.pt"]
    loaded = torch.jit.load(str(tmp_path / "out" / "stage1.torchscript.pt"))
    x = inputs()[1]
    with torch.no_grad():
        np.testing.assert_allclose(loaded(x).numpy(), expected(model, x, refined=False), atol=1e-4, rtol=0)


def test_verify_onnx_can_fail(exported):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    # the fixture's export printed verify_onnx's small difference; against the stage-1 alpha of the
    # same weights (not what was exported) it reports a large one
    model, out = exported
    assert verify_onnx(str(out / "stage2.onnx"), AlphaOnly(model, refined=False).eval(), sample_input()) > 0.05


def test_stage1_output_is_the_alpha(exported):
    model, _ = exported
    x = inputs()[0]
    with torch.no_grad():
        assert torch.equal(AlphaOnly(model, refined=False)(x), model(x)[0])
        assert torch.equal(AlphaOnly(model, refined=True)(x), model(x)[1])


def test_traceable_unpool_restores_the_check():
    with traceable_unpool():
        assert F._check_unpool_output_size.__name__ == "check"
    assert F._check_unpool_output_size.__name__ == "_check_unpool_output_size"
    with pytest.raises(ValueError, match="non-negative"):
        F._check_unpool_output_size([-1, 2], 0)


def test_bad_flags(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli(export.main, ["--resume", str(tmp_path / "none.pth"), "--opset", "11"])
    assert exc.value.code == 2 and "--opset" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        run_cli(export.main, ["--resume", str(tmp_path / "none.pth")])
    assert exc.value.code == 2 and "no such checkpoint" in capsys.readouterr().err
