"""core/test.py and core/demo.py end to end: outputs, scores, error paths, both ways of running."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from metric_by_hand import sad_mse_by_hand  # noqa: E402
from reference_impl import assert_same_matte, init_unsaturated, reference_from_state_dict, reference_predict  # noqa: E402

from core import demo as demo_mod  # noqa: E402
from core import folder as folder_mod  # noqa: E402
from core import test as test_mod  # noqa: E402
from core.checkpoint import RELEASE_URL, save_checkpoint  # noqa: E402
from core.metrics import compute_metrics  # noqa: E402
from core.network import DIMNet  # noqa: E402
from core.options import RELEASED_MODEL  # noqa: E402
from core.utils import run_cli  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return init_unsaturated(DIMNet(refine=False, skip=True, conv6_kernel=3), seed=5)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, model):
    path = tmp_path_factory.mktemp("ckpt") / "random_stage1.pth"
    save_checkpoint(path, model, epoch=3, best_sad=15.612257480621338)  # after 2 epochs, as train.py stores it
    return path


def make_folder(root):
    """Three pairs with ground truth: a.png 64×96, b.jpg 70×80 (odd size, JPEG image), c.png 64×64."""
    rng = np.random.default_rng(0)
    for name, (h, w) in (("a", (64, 96)), ("b", (70, 80)), ("c", (64, 64))):
        yy, xx = np.mgrid[:h, :w]
        d = np.hypot(yy - h / 2, xx - w / 2)
        alpha = np.clip((22 - d) * 40 + 128, 0, 255).astype(np.uint8)
        trimap = np.where(alpha == 255, 255, np.where(alpha == 0, 0, 128)).astype(np.uint8)
        trimap[np.abs(d - 22) < 6] = 128
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ext = ".jpg" if name == "b" else ".png"
        for kind, arr, e in (("image", image, ext), ("trimap", trimap, ".png"),
                             ("alpha", cv2.merge([alpha] * 3), ".png")):
            (root / kind).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / kind / (name + e)), arr)
    return root


def folder_args(root, ckpt, out, *extra):
    return ["--imgDir", str(root / "image"), "--trimapDir", str(root / "trimap"), "--saveDir", str(out),
            "--resume", str(ckpt), *extra]


def run_main(main, argv, capsys):
    """run_cli(main, argv) in-process: (exit status, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        run_cli(main, argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


# --------------------------------------------------------------------------- #
# core/test.py
# --------------------------------------------------------------------------- #
def test_test_py_writes_mattes_and_scores_them(tmp_path, ckpt, model, capsys):
    root = make_folder(tmp_path / "data")
    out = tmp_path / "pred"
    status, stdout, _ = run_main(test_mod.main, folder_args(root, ckpt, out, "--alphaDir", str(root / "alpha")),
                                 capsys)
    assert status == 0
    names = ["a.png", "b.png", "c.png"]  # b.jpg's matte is a PNG
    assert sorted(p.name for p in out.glob("*.png")) == names

    ref = reference_from_state_dict(model.state_dict(), 1, True, 3)
    doc = json.loads((out / "metrics.json").read_text())
    assert set(doc) == {"images", "mean"} and sorted(doc["images"]) == names
    with open(out / "metrics.csv") as f:
        table = {row["image"]: row for row in csv.DictReader(f)}
    assert list(table) == [*names, "mean"]
    for name in names:
        stem = name[:-4]
        pred = cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)
        trimap = cv2.imread(str(root / "trimap" / name))[:, :, 0]
        gt = cv2.imread(str(root / "alpha" / name))[:, :, 0]
        image = cv2.imread(str(next((root / "image").glob(stem + ".*"))))
        assert pred.dtype == np.uint8 and pred.shape == trimap.shape
        # The written matte is the reference pipeline's (whole mode, stage 1).
        expected = reference_predict(ref, image, trimap, mode="whole", max_size=1600, stage=1)
        assert_same_matte(pred, expected, name)
        # Scores are core.metrics on the written 8-bit files; SAD and MSE also by hand.
        want = compute_metrics(pred, gt, trimap)
        assert (want["sad"], want["mse"]) == pytest.approx(sad_mse_by_hand(pred, gt, trimap), rel=1e-6)
        assert set(doc["images"][name]) == {"sad", "mse", "grad", "conn"}
        for key, value in want.items():
            assert doc["images"][name][key] == pytest.approx(value, rel=1e-12)
            assert float(table[name][key]) == pytest.approx(value, rel=1e-12)
        assert want["sad"] > 0
    for key in ("sad", "mse", "grad", "conn"):
        mean = np.mean([doc["images"][n][key] for n in names])
        assert doc["mean"][key] == pytest.approx(mean, rel=1e-12)
    assert doc["mean"]["n"] == 3
    assert "mean (3)" in stdout and "SAD" in stdout


@pytest.mark.parametrize("mode, extra", [("crop", ["--size_h", "64", "--size_w", "64"]),
                                         ("resize", ["--size_h", "32", "--size_w", "64"])])
def test_test_py_modes_write_every_matte(tmp_path, ckpt, model, mode, extra, capsys):
    root = make_folder(tmp_path / "data")
    out = tmp_path / "pred"
    status, _, _ = run_main(test_mod.main, folder_args(root, ckpt, out, "--crop_or_resize", mode, *extra), capsys)
    assert status == 0
    ref = reference_from_state_dict(model.state_dict(), 1, True, 3)
    size_h, size_w = int(extra[1]), int(extra[3])
    image, trimap = cv2.imread(str(root / "image" / "b.jpg")), cv2.imread(str(root / "trimap" / "b.png"))[:, :, 0]
    expected = reference_predict(ref, image, trimap, mode=mode, size_h=size_h, size_w=size_w, stage=1)
    pred = cv2.imread(str(out / "b.png"), cv2.IMREAD_UNCHANGED)
    assert_same_matte(pred, expected, mode)
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "b.png", "c.png"]
    assert not (out / "metrics.json").exists()


def test_test_py_tile_mode_and_cutouts(tmp_path, ckpt, model, capsys):
    """--crop_or_resize tile goes through core.tiling; --rgba/--background write cut-outs beside the mattes."""
    from core.inference import force_known, truncate_to_uint8
    from core.tiling import predict_tiles

    root = make_folder(tmp_path / "data")
    out = tmp_path / "pred"
    argv = folder_args(root, ckpt, out, "--crop_or_resize", "tile", "--tile_size", "64", "--tile_overlap", "16",
                       "--rgba", "--background", "0,255,0", "--fg_backend", "numpy")
    status, stdout, err = run_main(test_mod.main, argv, capsys)
    assert status == 0, err
    assert "tile mode, 96×64: 2 of 2 windows predicted (0 without unknown pixels skipped)" in stdout
    assert f"wrote 6 cut-outs to {out / 'cutout'} (foreground colours: numpy; a_rgba.png, a_bg_00ff00.png" in stdout
    image, trimap = cv2.imread(str(root / "image" / "a.png")), cv2.imread(str(root / "trimap" / "a.png"))[:, :, 0]
    with torch.inference_mode():
        alpha = predict_tiles(model, image, trimap, tile=64, overlap=16)
    matte = cv2.imread(str(out / "a.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(matte, truncate_to_uint8(force_known(alpha, trimap)))
    rgba = cv2.imread(str(out / "cutout" / "a_rgba.png"), cv2.IMREAD_UNCHANGED)
    assert rgba.shape == (64, 96, 4) and np.array_equal(rgba[:, :, 3], matte)
    on_green = cv2.imread(str(out / "cutout" / "a_bg_00ff00.png"))
    assert np.array_equal(on_green[trimap == 0], np.tile([0, 255, 0], ((trimap == 0).sum(), 1)))
    status, _, err = run_main(test_mod.main, folder_args(root, ckpt, tmp_path / "p2", "--crop_or_resize", "tile",
                                                           "--tile_size", "48"), capsys)
    assert status == 2 and "48" in err and err.count("\n") == 1


def break_missing_trimap(root):
    (root / "trimap" / "b.png").unlink()
    return str(root / "image" / "b.jpg")


def break_size(root):
    path = root / "trimap" / "c.png"
    cv2.imwrite(str(path), np.zeros((64, 60), np.uint8))
    return str(path)


def break_corrupt_image(root):
    path = root / "image" / "c.png"
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])  # truncated: the PNG header still reads
    return str(path)


def break_alpha_size(root):
    path = root / "alpha" / "c.png"
    cv2.imwrite(str(path), np.zeros((32, 64), np.uint8))
    return str(path)


def break_missing_alpha(root):
    (root / "alpha" / "c.png").unlink()
    return str(root / "image" / "c.png")


@pytest.mark.parametrize("breaker", [break_missing_trimap, break_size, break_corrupt_image, break_alpha_size,
                                     break_missing_alpha])
def test_test_py_bad_inputs_fail_before_predicting(tmp_path, ckpt, breaker, capsys):
    root = make_folder(tmp_path / "data")
    named = breaker(root)
    out = tmp_path / "pred"
    status, _, err = run_main(test_mod.main, folder_args(root, ckpt, out, "--alphaDir", str(root / "alpha")), capsys)
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and named in err
    assert "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_test_py_missing_checkpoint(tmp_path, capsys):
    root = make_folder(tmp_path / "data")
    missing = tmp_path / "model" / "nothing.pth"
    status, _, err = run_main(test_mod.main, folder_args(root, missing, tmp_path / "pred"), capsys)
    assert status == 2 and err.count("\n") == 1
    assert str(missing) in err and RELEASE_URL in err and "train.sh" in err
    assert not (tmp_path / "pred").exists()


def test_test_py_wrong_stage_checkpoint(tmp_path, ckpt, capsys):
    root = make_folder(tmp_path / "data")
    status, _, err = run_main(test_mod.main, folder_args(root, ckpt, tmp_path / "pred", "--stage", "2"), capsys)
    assert status == 2 and err.count("\n") == 1 and str(ckpt) in err and "refine" in err
    assert not (tmp_path / "pred").exists() or not any((tmp_path / "pred").iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_test_py_cuda_without_a_gpu(tmp_path, ckpt, capsys):
    root = make_folder(tmp_path / "data")
    status, _, err = run_main(test_mod.main, folder_args(root, ckpt, tmp_path / "pred", "--cuda"), capsys)
    assert status == 2 and "--cuda" in err and err.count("\n") == 1


@pytest.mark.parametrize("extra, flag", [(["--max_size", "1000"], "--max_size"),
                                         (["--crop_or_resize", "crop", "--size_h", "100"], "--size_h")])
def test_test_py_bad_sizes(tmp_path, ckpt, extra, flag, capsys):
    root = make_folder(tmp_path / "data")
    status, _, err = run_main(test_mod.main, folder_args(root, ckpt, tmp_path / "pred", *extra), capsys)
    assert status == 2 and flag in err and err.count("\n") == 1


def test_trimap_values_other_than_0_128_255_warn(tmp_path):
    root = make_folder(tmp_path / "data")
    cv2.imwrite(str(root / "trimap" / "a.png"), np.full((64, 96), 100, np.uint8))
    pairs = folder_mod.find_pairs(str(root / "image"), str(root / "trimap"))
    with pytest.warns(UserWarning, match="a.png.*6144 pixels"):
        folder_mod.check_pairs(pairs, progress=False)


def test_find_pairs(tmp_path):
    root = make_folder(tmp_path / "data")
    (root / "trimap" / "extra.png").write_bytes((root / "trimap" / "a.png").read_bytes())  # ignored
    pairs = folder_mod.find_pairs(str(root / "image"), str(root / "trimap"), str(root / "alpha"))
    assert [p.name for p in pairs] == ["a.png", "b.png", "c.png"]
    assert pairs[1].image.endswith("b.jpg") and pairs[1].trimap.endswith("b.png")
    assert pairs[1].alpha.endswith(os.path.join("alpha", "b.png"))
    (root / "alpha" / "b.png").unlink()
    pairs = folder_mod.find_pairs(str(root / "image"), str(root / "trimap"), str(root / "alpha"), alpha_required=False)
    assert [p.alpha is None for p in pairs] == [False, True, False]


def test_predict_folder_for_training_time_validation(tmp_path, model):
    root = make_folder(tmp_path / "data")
    pairs = folder_mod.find_pairs(str(root / "image"), str(root / "trimap"), str(root / "alpha"))
    kw = dict(mode="resize", size=(32, 32), score=True, progress=False)
    model.train()
    try:
        result = folder_mod.predict_folder(model, pairs[:2], None, **kw)  # nothing written
        assert model.training  # train/eval mode restored
    finally:
        model.eval()
    assert not result.stopped and len(result.seconds) == 2 and min(result.seconds) > 0
    assert list(result.rows) == ["a.png", "b.png"] and result.means["n"] == 2
    assert result.means["sad"] == pytest.approx((result.rows["a.png"]["sad"] + result.rows["b.png"]["sad"]) / 2)
    assert not any(tmp_path.rglob("pred*"))
    # The same rows when written and re-read from disk.
    written = folder_mod.predict_folder(model, pairs[:2], str(tmp_path / "pred"), **kw)
    assert written.rows == result.rows
    for name in written.rows:
        pred = cv2.imread(str(tmp_path / "pred" / name), cv2.IMREAD_UNCHANGED)
        gt = cv2.imread(str(root / "alpha" / name))[:, :, 0]
        trimap = cv2.imread(str(root / "trimap" / name), cv2.IMREAD_UNCHANGED)
        assert compute_metrics(pred, gt, trimap) == written.rows[name]
        row = written.rows[name]
        assert (row["sad"], row["mse"]) == pytest.approx(sad_mse_by_hand(pred, gt, trimap), rel=1e-6)
    # should_stop ends the loop before the next image.
    calls = []
    stopped = folder_mod.predict_folder(model, pairs, None, should_stop=lambda: len(calls.append(1) or calls) > 1,
                                        **kw)
    assert stopped.stopped and len(stopped.seconds) == 1 and stopped.means is None


# --------------------------------------------------------------------------- #
# core/demo.py
# --------------------------------------------------------------------------- #
def test_demo_on_the_examples(tmp_path, ckpt, capsys):
    out = tmp_path / "pred"
    argv = ["--resume", str(ckpt), "--saveDir", str(out), "--crop_or_resize", "resize", "--size_h", "64",
            "--size_w", "64"]  # one small forward per example
    status, stdout, _ = run_main(demo_mod.main, argv, capsys)
    assert status == 0
    names = sorted(p.name for p in (REPO / "result" / "example" / "image").iterdir())
    assert len(names) >= 1
    assert sorted(p.name for p in out.glob("*.png")) == names
    assert sorted(p.name for p in (out / "side_by_side").glob("*.png")) == names
    label = demo_mod.LABEL_HEIGHT
    for name in names:
        image = cv2.imread(str(REPO / "result" / "example" / "image" / name))
        pred = cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)
        gt = cv2.imread(str(REPO / "result" / "example" / "alpha" / name))
        side = cv2.imread(str(out / "side_by_side" / name))
        h, w = image.shape[:2]
        assert h <= demo_mod.PANEL_MAX_HEIGHT  # the examples are small: panels at full size
        assert side.shape == (h + label, 4 * w + 3 * demo_mod.GAP, 3)
        step = w + demo_mod.GAP
        np.testing.assert_array_equal(side[label:, :w], image)
        np.testing.assert_array_equal(side[label:, 2 * step:2 * step + w], cv2.merge([pred] * 3))
        np.testing.assert_array_equal(side[label:, 3 * step:], gt)
        assert side[:label, :w].std() > 0  # the label is drawn
    assert "mean (" in stdout  # the examples have ground truth: scored
    assert f"wrote {len(names)} mattes to {out} and {len(names)} side-by-side pictures to" in stdout


def test_demo_single_image_without_ground_truth(tmp_path, ckpt, capsys):
    root = make_folder(tmp_path / "data")
    out = tmp_path / "pred"
    argv = ["--image", str(root / "image" / "b.jpg"), "--trimap", str(root / "trimap" / "b.png"),
            "--saveDir", str(out), "--resume", str(ckpt), "--crop_or_resize", "resize", "--size_h", "32",
            "--size_w", "32", "--rgba", "--background", "white", "--background", "#2080ff", "--fg_backend", "numpy"]
    status, stdout, _ = run_main(demo_mod.main, argv, capsys)
    assert status == 0
    assert [p.name for p in out.glob("*.png")] == ["b.png"]
    side = cv2.imread(str(out / "side_by_side" / "b.png"))
    assert side.shape == (70 + demo_mod.LABEL_HEIGHT, 3 * 80 + 2 * demo_mod.GAP, 3)
    assert "mean (" not in stdout
    # the summary: one matte (singular), and the cut-outs with the estimator that made them
    assert f"wrote 1 matte to {out} and 1 side-by-side picture to {out / 'side_by_side'}" in stdout
    assert (f"wrote 3 cut-outs to {out / 'cutout'} (foreground colours: numpy; b_rgba.png, b_bg_white.png, "
            "b_bg_2080ff.png)") in stdout
    assert sorted(p.name for p in (out / "cutout").iterdir()) == ["b_bg_2080ff.png", "b_bg_white.png", "b_rgba.png"]


def test_outputs_never_overwrite_inputs(tmp_path, ckpt, capsys):
    root = make_folder(tmp_path / "data")
    before = (root / "image" / "a.png").read_bytes()
    argv = ["--image", str(root / "image" / "a.png"), "--trimap", str(root / "trimap" / "a.png"),
            "--saveDir", str(root / "image"), "--resume", str(ckpt)]
    status, _, err = run_main(demo_mod.main, argv, capsys)
    assert status == 2 and str(root / "image" / "a.png") in err and "made_by.json does not say" in err
    assert (root / "image" / "a.png").read_bytes() == before
    status, _, err = run_main(demo_mod.main, [*argv, "--force"], capsys)  # not even with --force
    assert status == 2 and "writing the matte there would overwrite an input" in err
    assert (root / "image" / "a.png").read_bytes() == before


def test_demo_missing_default_checkpoint_gives_the_download_hint(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo_mod, "REPO_ROOT", str(tmp_path))  # the default checkpoint is REPO_ROOT/model/...
    status, _, err = run_main(demo_mod.main, ["--saveDir", str(tmp_path / "pred"), "--no_download"], capsys)
    assert status == 2 and err.count("\n") == 1
    assert "stage1_skip_sad_52.9.pth" in err and RELEASE_URL in err and "model/" in err and "train.sh" in err
    assert not (tmp_path / "pred").exists()


# --------------------------------------------------------------------------- #
# As users run them: subprocesses (started together, they share the import time)
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def subprocess_runs(tmp_path_factory, ckpt):
    root = make_folder(tmp_path_factory.mktemp("cli"))
    broken = break_missing_trimap(root)
    commands = {
        "help_script": [sys.executable, "core/test.py", "--help"],
        "help_module": [sys.executable, "-m", "core.test", "--help"],
        "error": [sys.executable, "core/test.py", *folder_args(root, ckpt, root / "pred")],
    }
    if not (REPO / "model" / RELEASED_MODEL).exists():
        commands["demo_no_model"] = [sys.executable, "core/demo.py", "--saveDir", str(root / "demo"), "--no_download"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    envs = {k: env for k in commands}
    data_root = tmp_path_factory.mktemp("deploy")
    make_folder(data_root / "Test_set" / "comp")
    commands["deploy"] = ["bash", "deploy.sh", "--crop_or_resize", "resize", "--size_h", "32", "--size_w", "32"]
    env = {k: v for k, v in env.items() if k not in ("CUDA", "STAGE")}  # deploy.sh's defaults, as in docs/evaluation.md
    # deploy.sh runs $PYTHON (this interpreter); a `python` first on PATH that fails shows if it ran instead
    stub = tmp_path_factory.mktemp("stub")
    (stub / "python").write_text("#!/bin/sh\necho 'the python on PATH ran' >&2\nexit 3\n")
    (stub / "python").chmod(0o755)
    path = os.pathsep.join([str(stub), os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    envs["deploy"] = dict(env, DATA_ROOT=str(data_root), CKPT=str(ckpt), SAVE_DIR=str(data_root / "out"),
                          PYTHON=sys.executable, PATH=path)
    if not torch.cuda.is_available():
        commands["deploy_cuda1"] = commands["deploy_stage2"] = ["bash", "deploy.sh"]
        envs["deploy_cuda1"] = dict(envs["deploy"], CUDA="1", SAVE_DIR=str(data_root / "out_cuda1"))
        envs["deploy_stage2"] = dict(envs["deploy"], STAGE="2", SAVE_DIR=str(data_root / "out_stage2"))
    procs = {k: subprocess.Popen(c, cwd=REPO, env=envs[k], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
             for k, c in commands.items()}
    results = {k: (p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for k, p in procs.items()}
    for p in procs.values():
        p.stdout.close()
        p.stderr.close()
    return results, broken, data_root


@pytest.mark.parametrize("key", ["help_script", "help_module"])
def test_help_runs_both_ways(subprocess_runs, key):
    status, out, _ = subprocess_runs[0][key]
    assert status == 0 and "--crop_or_resize" in out and "--resume" in out


def test_error_as_a_script_is_one_line(subprocess_runs):
    (status, out, err), broken = subprocess_runs[0]["error"], subprocess_runs[1]
    assert status == 2 and err.count("\n") == 1 and err.startswith("error: ") and broken in err
    assert "Traceback" not in err


def test_demo_without_the_released_model_as_a_script(subprocess_runs):
    if "demo_no_model" not in subprocess_runs[0]:
        pytest.skip("model/stage1_skip_sad_52.9.pth is present")
    status, _, err = subprocess_runs[0]["demo_no_model"]
    assert status == 2 and err.count("\n") == 1 and RELEASE_URL in err and "Traceback" not in err


# --------------------------------------------------------------------------- #
# Real Composition-1k images (quarter size), when the shared folder is there
# --------------------------------------------------------------------------- #
def test_smoke_on_real_examples(tmp_path, ckpt, capsys, dim_examples_small):
    out = tmp_path / "pred"
    argv = ["--imgDir", str(dim_examples_small / "image"), "--trimapDir", str(dim_examples_small / "trimap"),
            "--saveDir", str(out), "--resume", str(ckpt), "--max_size", "128"]
    status, _, _ = run_main(test_mod.main, argv, capsys)
    assert status == 0
    names = sorted(p.name for p in (dim_examples_small / "image").iterdir())
    assert sorted(p.name for p in out.glob("*.png")) == names
    for name in names:
        trimap = cv2.imread(str(dim_examples_small / "trimap" / name))[:, :, 0]
        pred = cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)
        assert pred.shape == trimap.shape
        assert (pred[trimap == 255] == 255).all() and (pred[trimap == 0] == 0).all()


def test_deploy_sh_passes_settings_and_extra_args(subprocess_runs):
    status, out, err = subprocess_runs[0]["deploy"]
    assert status == 0, err
    saved = subprocess_runs[2] / "out"
    assert sorted(p.name for p in saved.glob("*.png")) == ["a.png", "b.png", "c.png"]
    assert json.loads((saved / "metrics.json").read_text())["mean"]["n"] == 3
    assert "mode resize" in out  # the extra arguments reached core/test.py
    # CUDA unset: the CPU here, said in the first line; the checkpoint's epochs and best SAD as trained
    if not torch.cuda.is_available():
        assert err.splitlines()[0] == "deploy.sh: testing on the CPU (torch sees no GPU)"
    assert "trained 2 epochs, best SAD 15.612;" in out and "15.6122" not in out
    assert "wrote 3 mattes to" in out


def test_deploy_sh_errors_name_the_settings(subprocess_runs):
    if "deploy_cuda1" not in subprocess_runs[0]:
        pytest.skip("a GPU is present")
    runs, data_root = subprocess_runs[0], subprocess_runs[2]
    status, out, err = runs["deploy_cuda1"]
    assert status == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("error: CUDA=1 but torch sees no CUDA device") and "--cuda" not in err
    status, _, err = runs["deploy_stage2"]  # a stage-1 checkpoint with STAGE=2
    assert status == 2 and err.splitlines()[-1].startswith("error: ") and "Traceback" not in err
    assert "STAGE=2 needs a refinement head" in err and "use STAGE=1" in err and "--stage" not in err
    assert not (data_root / "out_cuda1").exists()
    assert not (data_root / "out_stage2").exists() or not any((data_root / "out_stage2").iterdir())


@pytest.mark.parametrize("data_root, message", [(None, "set DATA_ROOT"), ("nowhere", "nowhere/Test_set/comp/image")])
def test_deploy_sh_fails_fast_without_the_test_set(tmp_path, data_root, message):
    env = {k: v for k, v in os.environ.items() if k != "DATA_ROOT"}
    if data_root:
        env["DATA_ROOT"] = str(tmp_path / data_root)
    proc = subprocess.run(["bash", "deploy.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1
