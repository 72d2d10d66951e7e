"""What a new user runs, as they run it: train.sh --online without composites on the CPU,
tools/cutout.py on a matte they already have, and the evaluation numbers of docs/evaluation.md."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tools.make_synthetic import make_dataset, make_foreground

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATA_ROOT", "PRETRAIN", "NPROC", "CUDA", "STAGE", "COCO_DIR", "SAVE_DIR", "PYTHON")}
    env.update(OMP_NUM_THREADS="1", PYTHON=sys.executable, **extra)
    return env


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU default; a GPU is present")
def test_train_sh_online_on_the_cpu_without_composites(tmp_path):
    """docs/training.md's online command on a machine without a GPU and without Training_set/comp."""
    paths = make_dataset(str(tmp_path / "syn"), num_fg=1, num_test_fg=1, size=64, train_bg_per_fg=1,
                         test_bg_per_fg=1)
    root = Path(paths["root_dir"])
    assert not (root / "Training_set" / "comp").exists()
    save = tmp_path / "run"
    env = clean_env(DATA_ROOT=str(root), COCO_DIR=paths["train_bg_dir"], PRETRAIN="", SAVE_DIR=str(save))
    proc = subprocess.run(["bash", "train.sh", "--online", "--bgPerFg", "1", "--nEpochs", "1", "--crop_h", "32",
                           "--crop_w", "32", "--size_h", "32", "--size_w", "32", "--threads", "0", "--ckptSaveFreq",
                           "0"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.splitlines()[0] == "train.sh: training on the CPU (torch sees no GPU)"
    assert sorted(p.name for p in save.iterdir()) == ["ckpt_last.pth", "config.json", "train.log"]
    log = (save / "train.log").read_text()
    assert "1 samples (online composites)" in log and "device cpu" in log
    assert f"checkpoint saved to {save / 'ckpt_last.pth'} (after epoch 1)" in log
    ckpt = torch.load(save / "ckpt_last.pth", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["config"]["online"] and ckpt["config"]["adobeDir"] == str(root)


def test_train_sh_twice_into_one_save_dir_keeps_the_first_runs_best(tmp_path):
    """The real train.sh, twice with the same SAVE_DIR: the second run refuses in one line, and the first
    run's ckpt_best.pth and config.json survive byte for byte."""
    from test_train import write_dataset

    d = write_dataset(tmp_path / "d")
    root = tmp_path / "Combined_Dataset"
    (root / "Training_set").mkdir(parents=True)
    (root / "Test_set").mkdir()
    os.symlink(tmp_path / "d" / "train", root / "Training_set" / "comp")
    os.symlink(tmp_path / "d" / "test", root / "Test_set" / "comp")
    save = tmp_path / "run"
    env = clean_env(DATA_ROOT=str(root), PRETRAIN="", SAVE_DIR=str(save), CUDA="0")
    flags = ["--nEpochs", "1", "--crop_h", "32", "--crop_w", "32", "--size_h", "32", "--size_w", "32", "--threads",
             "0", "--ckptSaveFreq", "0"]
    proc = subprocess.run(["bash", "train.sh", *flags], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in save.iterdir()) == ["ckpt_best.pth", "ckpt_last.pth", "config.json", "train.log"]
    first = {name: (save / name).read_bytes() for name in ("ckpt_best.pth", "config.json", "train.log")}
    run_id = torch.load(save / "ckpt_best.pth", weights_only=True)["config"]["run_id"]
    assert f"(new best of run {run_id})" in first["train.log"].decode()
    proc = subprocess.run(["bash", "train.sh", *flags], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines()[1:] == [
        f"error: {save} holds the files of run {run_id} (ckpt_best.pth, ckpt_last.pth, config.json): continue it "
        f"with --resume {save / 'ckpt_last.pth'}, choose another --saveDir (train.sh: SAVE_DIR=DIR), or pass "
        "--overwrite to replace them"]
    assert {name: (save / name).read_bytes() for name in first} == first
    # --overwrite (passed through to core/train.py) replaces that run by a new one
    proc = subprocess.run(["bash", "train.sh", *flags, "--overwrite"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    new_id = torch.load(save / "ckpt_best.pth", weights_only=True)["config"]["run_id"]
    assert new_id != run_id and json.loads((save / "config.json").read_text())["run_id"] == new_id
    log = (save / "train.log").read_text()
    assert log.startswith(first["train.log"].decode())  # appended to
    assert f"--overwrite: removed ckpt_best.pth, ckpt_last.pth, config.json of run {run_id} from {save}" in log


# --------------------------------------------------------------------------- #
# tools/cutout.py
# --------------------------------------------------------------------------- #
@pytest.fixture
def photo(tmp_path):
    rng = np.random.default_rng(1)
    fg, alpha = make_foreground(rng, 48, 64)
    image = (fg.astype(np.float32) * (alpha[..., None] / 255.0)).astype(np.uint8)
    (tmp_path / "out").mkdir()
    cv2.imwrite(str(tmp_path / "photo.jpg"), image)
    cv2.imwrite(str(tmp_path / "out" / "photo.png"), alpha)
    cv2.imwrite(str(tmp_path / "beach.png"), np.full((30, 30, 3), (10, 200, 30), np.uint8))
    return tmp_path


def cutout(photo, *extra):
    return subprocess.run([sys.executable, "tools/cutout.py", "--image", str(photo / "photo.jpg"), "--matte",
                           str(photo / "out" / "photo.png"), "--fg_backend", "numpy", *extra], cwd=ROOT,
                          env=clean_env(), capture_output=True, text=True, timeout=120)


def test_cutout_tool_names_outputs_after_backgrounds_and_prints_them(photo):
    out = photo / "out" / "cutout"
    proc = cutout(photo, "--rgba", "--background", "white", "--background", str(photo / "beach.png"))
    assert proc.returncode == 0, proc.stderr
    written = [out / "photo_rgba.png", out / "photo_bg_white.png", out / "photo_bg_beach.png"]
    assert proc.stdout.splitlines() == [
        "foreground colours: numpy (multi-level estimation, Germer et al. 2020)",
        *(f"wrote {p}" for p in written)]
    matte = cv2.imread(str(photo / "out" / "photo.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(cv2.imread(str(written[0]), cv2.IMREAD_UNCHANGED)[..., 3], matte)
    on_beach = cv2.imread(str(written[2]))
    assert on_beach[matte == 0].tolist() == [[10, 200, 30]] * int((matte == 0).sum())
    first = written[1].read_bytes()
    # another background later: a new file beside the first, nothing re-predicted or replaced
    proc = cutout(photo, "--background", "#2080ff")
    assert proc.returncode == 0 and proc.stdout.splitlines()[1:] == [f"wrote {out / 'photo_bg_2080ff.png'}"]
    assert written[1].read_bytes() == first
    assert sorted(p.name for p in out.iterdir()) == ["photo_bg_2080ff.png", "photo_bg_beach.png", "photo_bg_white.png",
                                                      "photo_rgba.png"]


def test_cutout_tool_refuses_a_matte_of_another_size(photo):
    cv2.imwrite(str(photo / "out" / "photo.png"), np.zeros((48, 60), np.uint8))
    proc = cutout(photo)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert str(photo / "out" / "photo.png") in proc.stderr and "60×48" in proc.stderr and "64×48" in proc.stderr
    assert not (photo / "out" / "cutout").exists()


# --------------------------------------------------------------------------- #
# README and docs/
# --------------------------------------------------------------------------- #
def test_readme_quotes_the_real_examples_scores():
    """docs/evaluation.md's table of the five real examples is the official code's values (Octave, in
    test_evaluate); the README's layout names the figure's tool and the manual tells how to get VGG-16."""
    from test_evaluate import OCTAVE_REAL

    readme = (ROOT / "docs" / "evaluation.md").read_text()
    for name, (sad, mse, grad, conn) in OCTAVE_REAL.items():
        row = f"| `{name}` | {sad:.3f} | {mse:.6f} | {grad:.3f} | {conn:.3f} |"
        assert row in readme, row
    means = np.mean(list(OCTAVE_REAL.values()), axis=0)
    row = f"| **mean** | **{means[0]:.3f}** | **{means[1]:.6f}** | **{means[2]:.3f}** | **{means[3]:.3f}** |"
    assert row in readme, row
    assert f"{means[0]:.3f}" == "84.747" and f"{means[1]:.6f}" == "0.026208"
    assert re.search(r"python tools/chg_model\.py --download", (ROOT / "docs" / "training.md").read_text())
    assert "`make_figure.py`" in (ROOT / "README.md").read_text().split("## Layout")[1].split("##")[0]
