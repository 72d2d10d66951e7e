"""tools/export.py: the ONNX file (onnxruntime, CPU) and the TorchScript file give
PyTorch's output within 1e-4 at three sizes (dynamic batch, height and width)."""

import contextlib
import io
import os
import re

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.tile_memory import random_model
from core.checkpoint import save_checkpoint
from core.utils import run_cli
from tests.reference_impl import init_unsaturated
from tools import export
from core.network import DIMNet
from core.inference import finish_matte, predict_matte, whole_input
from tools.export import AlphaOnly, traceable_unpool

SIZES = ((1, 64, 96), (1, 96, 32), (2, 32, 64))


def inputs():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(n, 4, h, w, generator=g) for n, h, w in SIZES]


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory):
    """A stage-2 checkpoint (skip, refinement head, calibrated random weights) exported in both formats,
    self-checked on a small synthetic example; returns (model, output folder, stdout, check image, trimap)."""
    tmp = tmp_path_factory.mktemp("export")
    model = random_model(seed=3, refine=True)
    save_checkpoint(tmp / "stage2.pth", model, epoch=1, best_sad=None)
    image, trimap = export.synthetic_example(96, 128)
    cv2.imwrite(str(tmp / "check.png"), image)
    cv2.imwrite(str(tmp / "check_trimap.png"), trimap)
    formats = "both" if _has_onnx() else "torchscript"
    stdout = io.StringIO()
    with pytest.raises(SystemExit) as exc, contextlib.redirect_stdout(stdout):
        run_cli(export.main, ["--resume", str(tmp / "stage2.pth"), "--stage", "2", "--out", str(tmp / "out" / "stage2"),
                              "--format", formats, "--check_image", str(tmp / "check.png"), "--check_trimap",
                              str(tmp / "check_trimap.png")])
    assert exc.value.code == 0
    return model, tmp / "out", stdout.getvalue(), image, trimap


@pytest.fixture(scope="module")
def exported(exported_run):
    return exported_run[:2]


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
    # TorchScript only: an ONNX export costs about a minute on 2 shared cores, and the stage-2 one
    # above covers the ONNX path and the self-check
    model = init_unsaturated(DIMNet(skip=False), seed=4)  # a stage-1 model as the older releases: no skip, no head
    save_checkpoint(tmp_path / "stage1.pth", model, epoch=1, best_sad=None)
    stdout = io.StringIO()
    with pytest.raises(SystemExit) as exc, contextlib.redirect_stdout(stdout):
        run_cli(export.main, ["--resume", str(tmp_path / "stage1.pth"), "--out", str(tmp_path / "out" / "s1"),
                              "--format", "torchscript", "--no_verify"])
    assert exc.value.code == 0
    assert "skip=False (checkpoint metadata), exporting the alpha" in stdout.getvalue()
    assert os.listdir(tmp_path / "out") == ["s1.torchscript.pt"]
    loaded = torch.jit.load(str(tmp_path / "out" / "s1.torchscript.pt"))
    x = inputs()[1]
    with torch.no_grad():
        np.testing.assert_allclose(loaded(x).numpy(), expected(model, x, refined=False), atol=1e-4, rtol=0)


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


CHECK_LINE = re.compile(r"  checked on (.+) \(whole mode\): max \|Δα\| (\S+) against PyTorch; the written matte "
                        r"differs from core/test.py's by at most (\d+) grey levels? \((\d+) of (\d+) pixels\)")


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_self_check_reports_grey_levels_on_a_real_sized_input(exported_run):
    """The check runs the written files on a non-random image through whole_input/finish_matte and
    reports the matte's difference in grey levels; recomputed here from the files themselves."""
    model, out, stdout, image, trimap = exported_run
    lines = stdout.splitlines()
    written = [line[len("wrote "):] for line in lines if line.startswith("wrote ")]
    assert written == [str(out / "stage2.onnx"), str(out / "stage2.torchscript.pt")][-len(written):]
    checks = [CHECK_LINE.fullmatch(line) for line in lines if line.startswith("  checked")]
    assert len(checks) == len(written) and all(checks)
    loaded = torch.jit.load(str(out / "stage2.torchscript.pt"))
    x = whole_input(image, trimap)
    assert x.shape == (1, 4, 96, 128) and x.dtype == np.float32
    with torch.no_grad():
        alpha = loaded(torch.from_numpy(x)).numpy()
    diff = np.abs(finish_matte(alpha, trimap).astype(int) - predict_matte(model, image, trimap, stage=2).astype(int))
    where, dalpha, grey, pixels, total = checks[-1].groups()
    assert where.endswith("check.png") and int(total) == trimap.size
    assert (int(grey), int(pixels)) == (diff.max(), np.count_nonzero(diff)) and int(grey) <= 1
    assert 0 <= float(dalpha) < 1e-3


def test_whole_input_resizes_the_trimap_bilinearly():
    """whole_input is whole mode's preprocessing: sides to /32, image and trimap bilinear (SPEC §9)."""
    image, trimap = export.synthetic_example(100, 150)
    x = whole_input(image, trimap, max_size=1600)
    assert x.shape == (1, 4, 96, 128)
    want = cv2.resize(trimap, (128, 96), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255
    assert np.array_equal(x[0, 3], want)
    assert len(np.unique(x[0, 3])) > 3  # the bilinear edges: values other than 0, 128 and 255
    alpha = np.full((96, 128), 0.5, np.float32)
    matte = finish_matte(alpha, trimap)
    assert matte.shape == trimap.shape and (matte[trimap == 255] == 255).all() and (matte[trimap == 0] == 0).all()
    assert (matte[trimap == 128] == 127).all()  # 0.5·255 truncated


def _export(argv):
    stdout = io.StringIO()
    with pytest.raises(SystemExit) as exc, contextlib.redirect_stdout(stdout), \
            contextlib.redirect_stderr(io.StringIO()) as stderr:
        run_cli(export.main, argv)
    return exc.value.code, stdout.getvalue(), stderr.getvalue()


def test_default_names_and_no_silent_overwrite(tmp_path):
    """Two runs' ckpt_best.pth: the stage goes into the name; another model's export is kept without --force."""
    for run, seed in (("run1", 5), ("run2", 6)):
        (tmp_path / run).mkdir()
        torch.manual_seed(seed)
        save_checkpoint(tmp_path / run / "ckpt_best.pth", DIMNet(refine=False, skip=True, conv6_kernel=3), epoch=3,
                        best_sad=1.0, config={"stage": 1})
    out_dir = tmp_path / "export"
    common = ["--out_dir", str(out_dir), "--format", "torchscript", "--no_verify"]
    status, stdout, _ = _export(["--resume", str(tmp_path / "run1" / "ckpt_best.pth"), *common])
    target = out_dir / "run1_ckpt_best_stage1.torchscript.pt"
    assert status == 0 and f"wrote {target}" in stdout and os.listdir(out_dir) == [target.name]
    before = target.read_bytes()
    # the second run's default name carries its folder: no clash
    status, stdout, _ = _export(["--resume", str(tmp_path / "run2" / "ckpt_best.pth"), *common])
    assert status == 0 and sorted(os.listdir(out_dir)) == [target.name, "run2_ckpt_best_stage1.torchscript.pt"]
    # another model's export under a name given by hand: kept without --force
    common += ["--out", str(target)]
    status, stdout, err = _export(["--resume", str(tmp_path / "run2" / "ckpt_best.pth"), *common])
    assert status == 2 and err.count("\n") == 1 and str(target) in err
    assert str(tmp_path / "run1" / "ckpt_best.pth") in err and "--force" in err and "--out" in err
    assert target.read_bytes() == before and stdout == ""
    status, stdout, _ = _export(["--resume", str(tmp_path / "run2" / "ckpt_best.pth"), *common, "--force"])
    assert status == 0 and target.read_bytes() != before
    meta = export.read_meta(str(target))
    assert meta["checkpoint"] == str(tmp_path / "run2" / "ckpt_best.pth") and meta["stage"] == 1


def test_names_and_overwrite_rules():
    assert export.default_stem("model/stage2/ckpt_best.pth", 2, True) == "stage2_ckpt_best_stage2"
    assert export.default_stem("ckpt_best.pth", 1, False) == f"{os.path.basename(os.getcwd())}_ckpt_best_stage1"
    assert export.default_stem("model/stage1_skip_sad_52.9.pth", 1, False) == "stage1_skip_sad_52.9_stage1"
    assert export.default_stem("stage1_sad_54.4.pth", None, False) == "stage1_sad_54.4_alpha"
    assert export.output_paths("x/my.onnx", ("onnx", "torchscript")) == {"onnx": "x/my.onnx",
                                                                        "torchscript": "x/my.torchscript.pt"}
    assert export.output_paths("x/my", ("torchscript",)) == {"torchscript": "x/my.torchscript.pt"}
    def net(seed):
        torch.manual_seed(seed)
        return DIMNet(refine=False, skip=True, conv6_kernel=3)

    a, b = net(1), net(2)
    assert export.weights_fingerprint(a, False) == export.weights_fingerprint(net(1), False)
    assert export.weights_fingerprint(a, False) not in (export.weights_fingerprint(b, False),
                                                        export.weights_fingerprint(a, True))
