"""tools/make_synthetic.py: the Adobe layout, the properties the pipeline relies on,
and determinism."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from core.utils import UserError
from tools.make_synthetic import make_dataset, make_examples

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tree(folder):
    out = {}
    for base, _, names in os.walk(folder):
        for n in names:
            with open(os.path.join(base, n), "rb") as f:
                out[os.path.relpath(os.path.join(base, n), folder)] = f.read()
    return out


def test_layout_and_name_lists(tmp_path):
    p = make_dataset(str(tmp_path), num_fg=4, num_test_fg=2, size=48, seed=3, train_bg_per_fg=3, test_bg_per_fg=2)
    tr = os.path.join(p["root_dir"], "Training_set")
    te = os.path.join(p["root_dir"], "Test_set")
    fg_names = open(os.path.join(tr, "training_fg_names.txt")).read().split("\n")
    assert fg_names[-1] == "" and fg_names[:-1] == p["train_fg_names"]
    assert {n[-4:] for n in p["train_fg_names"]} == {".jpg", ".png"}
    bg_lines = open(os.path.join(tr, "training_bg_names.txt")).read().split()
    assert len(bg_lines) == 12 and all(n.startswith("COCO_train2014_") and len(n) == 15 + 16 for n in bg_lines)
    assert sorted(os.listdir(p["train_bg_dir"])) == sorted(n[15:] for n in bg_lines)  # distinct 2017 names
    # each training source folder holds some foregrounds, each fg its same-named alpha
    for src in ("Adobe-licensed images", "Other"):
        names = os.listdir(os.path.join(tr, src, "fg"))
        assert len(names) == 2 and sorted(os.listdir(os.path.join(tr, src, "alpha"))) == sorted(names)
    test_bg = open(os.path.join(te, "test_bg_names.txt")).read().split()
    assert len(test_bg) == 4 and sorted(os.listdir(p["test_bg_dir"])) == sorted(test_bg)
    assert all(n[:4].isdigit() and n[4] == "_" and len(n) == 15 for n in test_bg)  # VOC: 2008_000123.jpg
    trimaps = sorted(os.listdir(os.path.join(te, "Adobe-licensed images", "trimaps")))
    assert trimaps == sorted(f"{n[:-4]}_{k}.png" for n in p["test_fg_names"] for k in range(2))


def test_images_have_the_properties_the_pipeline_needs(tmp_path):
    p = make_dataset(str(tmp_path), num_fg=4, num_test_fg=2, size=64, seed=0)
    src = os.path.join(p["root_dir"], "Test_set", "Adobe-licensed images")
    fg_sizes = []
    for name in p["test_fg_names"]:
        fg = cv2.imread(os.path.join(src, "fg", name))
        alpha = cv2.imread(os.path.join(src, "alpha", name), cv2.IMREAD_UNCHANGED)
        a = alpha if alpha.ndim == 2 else alpha[..., 0]
        assert fg.shape[:2] == a.shape
        fg_sizes.append(fg.shape[:2])
        soft = (a > 0) & (a < 255)
        assert (a == 0).mean() > 0.3 and (a == 255).mean() > 0.03 and soft.mean() > 0.01
        for k in range(2):
            tri = cv2.imread(os.path.join(src, "trimaps", f"{name[:-4]}_{k}.png"), cv2.IMREAD_UNCHANGED)
            assert tri.shape == a.shape and set(np.unique(tri)) == {0, 128, 255}
            assert (a[tri == 255] == 255).all() and (a[tri == 0] == 0).all() and (tri[soft] == 128).all()
    bg_sizes = [cv2.imread(os.path.join(p["test_bg_dir"], n)).shape[:2] for n in os.listdir(p["test_bg_dir"])]
    assert any(b[0] < f[0] or b[1] < f[1] for b in bg_sizes for f in fg_sizes)  # upscaling needed
    assert any(b[0] >= f[0] and b[1] >= f[1] for b in bg_sizes for f in fg_sizes)  # plain crop


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = make_dataset(str(tmp_path / "a"), num_fg=2, num_test_fg=1, size=32, seed=7)
    b = make_dataset(str(tmp_path / "b"), num_fg=2, num_test_fg=1, size=32, seed=7)
    c = make_dataset(str(tmp_path / "c"), num_fg=2, num_test_fg=1, size=32, seed=8)
    ta, tb, tc = (_tree(os.path.dirname(x["root_dir"])) for x in (a, b, c))
    assert ta == tb
    assert ta != tc
    with pytest.raises(UserError, match="already exists"):
        make_dataset(str(tmp_path / "a"))


def test_examples(tmp_path):
    names = make_examples(str(tmp_path), num=2, seed=0, height=120, width=160)
    assert names == ["synthetic_01.png", "synthetic_02.png"]
    for n in names:
        image = cv2.imread(str(tmp_path / "image" / n), cv2.IMREAD_UNCHANGED)
        tri = cv2.imread(str(tmp_path / "trimap" / n), cv2.IMREAD_UNCHANGED)
        alpha = cv2.imread(str(tmp_path / "alpha" / n), cv2.IMREAD_UNCHANGED)
        assert image.shape == (120, 160, 3) and tri.shape == alpha.shape == (120, 160)
        assert set(np.unique(tri)) == {0, 128, 255} and (alpha[tri == 255] == 255).all()


@pytest.mark.parametrize("launcher", [["tools/make_synthetic.py"], ["-m", "tools.make_synthetic"]])
def test_cli_both_ways(tmp_path, launcher):
    res = subprocess.run([sys.executable, *launcher, "--size", "0", "--out", str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.startswith("error: --num_fg, --num_test_fg")
    res = subprocess.run([sys.executable, *launcher], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.startswith("error: give --out DIR")


def test_cli_writes_the_set_and_prints_the_composite_command(tmp_path):
    res = subprocess.run([sys.executable, "tools/make_synthetic.py", "--out", str(tmp_path), "--num_fg", "1",
                          "--num_test_fg", "1", "--size", "24"], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0 and "--train_bg_per_fg 2 --test_bg_per_fg 2" in res.stdout
    assert os.path.isfile(tmp_path / "Combined_Dataset" / "Test_set" / "test_bg_names.txt")
