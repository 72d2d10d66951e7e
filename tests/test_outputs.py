"""Nothing a user made is replaced silently: made_by.json in the output folders of core/demo.py,
core/test.py and tools/cutout.py (core.outputs), the own-photo defaults and whole mode's shrink line."""

import json
import os
import sys

import cv2
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from reference_impl import init_unsaturated  # noqa: E402

from core import demo as demo_mod  # noqa: E402
from core import test as test_mod  # noqa: E402
from core.checkpoint import load_model, save_checkpoint  # noqa: E402
from core.inference import choose_mode, predict_matte, shrink_note  # noqa: E402
from core.network import DIMNet  # noqa: E402
from core.outputs import RECORD, maker_key, read_record  # noqa: E402
from core.utils import run_cli  # noqa: E402
from tools import cutout as cutout_tool  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two small-weights checkpoints of different models, A and B."""
    root = tmp_path_factory.mktemp("models")
    paths = []
    for name, seed in (("a", 5), ("b", 6)):
        path = root / name / "ckpt_best.pth"
        path.parent.mkdir()
        save_checkpoint(path, init_unsaturated(DIMNet(refine=False, skip=True, conv6_kernel=3), seed=seed), epoch=3,
                        best_sad=None)
        paths.append(path)
    return paths


@pytest.fixture
def photo(tmp_path):
    """A 96×128 photo and its trimap."""
    h, w = 96, 128
    yy, xx = np.mgrid[:h, :w]
    d = np.hypot(yy - h / 2, xx - w / 2)
    trimap = np.where(d < 20, 255, np.where(d > 32, 0, 128)).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "cat.png"), np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))
    cv2.imwrite(str(tmp_path / "cat_trimap.png"), trimap)
    return tmp_path


def run(main, argv, capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli(main, argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def demo(photo, ckpt, out, *extra):
    return ["--image", str(photo / "cat.png"), "--trimap", str(photo / "cat_trimap.png"), "--resume", str(ckpt),
            "--saveDir", str(out), "--crop_or_resize", "whole", *extra]


def test_demo_two_models_into_one_folder(models, photo, tmp_path, capsys):
    a, b = models
    out = tmp_path / "out"
    assert run(demo_mod.main, demo(photo, a, out, "--rgba", "--fg_backend", "numpy"), capsys)[0] == 0
    first = snapshot(out)
    assert sorted(first) == ["cat.png", "cutout/cat_rgba.png", RECORD, "side_by_side/cat.png"]
    record = json.loads(first[RECORD])
    (key, maker), = record["makers"].items()
    assert maker["checkpoint"] == str(a) and maker["mode"] == "whole" and maker["max_size"] == 1600
    assert maker["precision"] == "fp32" and len(maker["sha256"]) == 64 and maker["skip"] is True
    assert record["files"] == {"cat.png": key, "cutout/cat_rgba.png": key, "side_by_side/cat.png": key}
    # the same model again replaces its own files (the same bytes here)
    assert run(demo_mod.main, demo(photo, a, out), capsys)[0] == 0
    assert snapshot(out) == first
    # another model: one line naming --force, nothing touched
    status, _, err = run(demo_mod.main, demo(photo, b, out), capsys)
    assert status == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: {out} holds results of another run: cat.png and 2 more file(s) by model {a} "
                          "(sha256 ")
    assert f"this run is model {b} (sha256 " in err and err.endswith("choose another --saveDir, or pass --force to "
                                                                         "write beside them\n")
    assert snapshot(out) == first
    # the same checkpoint in another mode is another run too
    status, _, err = run(demo_mod.main, demo(photo, a, out, "--crop_or_resize", "tile"), capsys)
    assert status == 2 and "another run (same checkpoint, other settings)" in err and ", tile tile_size 512" in err
    # --force: B's matte replaces A's; A's cut-out stays and the record says so
    assert run(demo_mod.main, demo(photo, b, out, "--force"), capsys)[0] == 0
    record = read_record(out)
    assert {m["checkpoint"] for m in record["makers"].values()} == {str(a), str(b)}
    assert record["makers"][record["files"]["cat.png"]]["checkpoint"] == str(b)
    assert record["makers"][record["files"]["cutout/cat_rgba.png"]]["checkpoint"] == str(a)
    model, _ = load_model(b)
    image, trimap = cv2.imread(str(photo / "cat.png")), cv2.imread(str(photo / "cat_trimap.png"), 0)
    assert np.array_equal(cv2.imread(str(out / "cat.png"), 0), predict_matte(model, image, trimap))
    # the folder is mixed now: even B is refused without --force
    assert run(demo_mod.main, demo(photo, b, out), capsys)[0] == 2


def test_files_of_unknown_origin_are_not_replaced(models, photo, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "cat.png").write_bytes(b"mine")
    status, _, err = run(demo_mod.main, demo(photo, models[0], out), capsys)
    assert status == 2 and err == (f"error: {out / 'cat.png'} exists and {RECORD} does not say this project's "
                                   "commands wrote it: choose another --saveDir, or pass --force to replace it\n")
    assert snapshot(out) == {"cat.png": b"mine"}
    # --force replaces it, but never an input
    status, _, err = run(demo_mod.main, demo(photo, models[0], photo, "--force"), capsys)
    assert status == 2 and "would overwrite an input" in err and not (photo / RECORD).exists()


def test_test_py_and_cutout_tool_follow_the_same_rule(models, photo, tmp_path, capsys):
    a, b = models
    for kind, name in (("image", "cat.png"), ("trimap", "cat_trimap.png")):
        (tmp_path / kind).mkdir()
        os.link(photo / name, tmp_path / kind / "cat.png")
    out = tmp_path / "scored"

    def test_py(ckpt, *extra):
        return run(test_mod.main, ["--imgDir", str(tmp_path / "image"), "--trimapDir", str(tmp_path / "trimap"),
                                   "--saveDir", str(out), "--resume", str(ckpt), *extra], capsys)

    assert test_py(a)[0] == 0
    first = snapshot(out)
    status, _, err = test_py(b)
    assert status == 2 and err.count("\n") == 1 and "--force" in err and snapshot(out) == first
    # a cut-out of A's matte into its folder is A's result: allowed, recorded with A's maker
    argv = ["--image", str(photo / "cat.png"), "--matte", str(out / "cat.png"), "--fg_backend", "numpy"]
    assert run(cutout_tool.main, argv, capsys)[0] == 0
    record = read_record(out)
    assert record["files"]["cutout/cat_rgba.png"] == record["files"]["cat.png"]
    # a matte from elsewhere (B's folder) into A's folder: refused
    assert test_py(b, "--saveDir", str(tmp_path / "b"))[0] == 0
    argv = ["--image", str(photo / "cat.png"), "--matte", str(tmp_path / "b" / "cat.png"), "--saveDir", str(out),
            "--background", "white"]
    status, _, err = run(cutout_tool.main, argv, capsys)
    assert status == 2 and f"this run is model {b}" in err and not (out / "cutout" / "cat_bg_white.png").exists()


def test_own_photos_default_to_result_own_and_auto(monkeypatch, tmp_path):
    monkeypatch.setattr(demo_mod, "OWN_DIR", str(tmp_path / "own"))
    own = demo_mod.parse_args(["--image", "photo.jpg"])
    assert (own.saveDir, own.crop_or_resize) == (str(tmp_path / "own"), "auto")
    assert demo_mod.parse_args(["--imgDir", "photos"]).saveDir == str(tmp_path / "own")
    examples = demo_mod.parse_args([])
    assert (examples.saveDir, examples.crop_or_resize) == (os.path.join(demo_mod.EXAMPLE_DIR, "pred"), "whole")
    given = demo_mod.parse_args(["--image", "p.jpg", "--saveDir", "x", "--crop_or_resize", "whole"])
    assert (given.saveDir, given.crop_or_resize) == ("x", "whole")


def test_big_photos_auto_goes_to_tile_and_whole_says_it_shrinks(models, photo, tmp_path, capsys):
    """A 4000×3000 photo: auto picks tile; whole says from what size to what. Run here at 128×96 with
    --max_size 64 (the same rule, small enough for the CPU)."""
    assert choose_mode("auto", 3000, 4000, 1600) == "tile" and choose_mode("auto", 1200, 1600, 1600) == "whole"
    assert shrink_note(3000, 4000, 1600) == ("4000×3000 is shrunk to 1600×1600 for the network in whole mode "
                                             "(--max_size 1600) and the matte scaled back up; --crop_or_resize tile "
                                             "predicts at full resolution")
    assert shrink_note(1000, 1600, 1600) is None  # rounding to /32 is no shrinking
    a = models[0]
    argv = ["--image", str(photo / "cat.png"), "--trimap", str(photo / "cat_trimap.png"), "--resume", str(a),
            "--max_size", "64", "--tile_size", "64", "--tile_overlap", "32"]
    assert run(demo_mod.main, [*argv, "--saveDir", str(tmp_path / "auto")], capsys)[0] == 0
    model, _ = load_model(a)
    image, trimap = cv2.imread(str(photo / "cat.png")), cv2.imread(str(photo / "cat_trimap.png"), 0)
    tiled = predict_matte(model, image, trimap, mode="tile", tile_size=64, tile_overlap=32)
    assert np.array_equal(cv2.imread(str(tmp_path / "auto" / "cat.png"), 0), tiled)
    assert read_record(tmp_path / "auto")["makers"].popitem()[1]["mode"] == "auto"
    status, out, _ = run(demo_mod.main, [*argv, "--saveDir", str(tmp_path / "whole"), "--crop_or_resize", "whole"],
                         capsys)
    assert status == 0
    lines = [line for line in out.splitlines() if "shrunk" in line]
    assert len(lines) == 1 and lines[0].endswith(
        f"{photo / 'cat.png'}: 128×96 is shrunk to 64×64 for the network in whole mode (--max_size 64) and the "
        "matte scaled back up; --crop_or_resize tile predicts at full resolution")
    makers = read_record(tmp_path / "whole")["makers"]
    assert [(k, m["mode"]) for k, m in makers.items()] == [(maker_key(m), "whole") for m in makers.values()]


def test_test_py_says_in_one_line_how_many_photos_whole_mode_shrinks(models, photo, tmp_path, capsys):
    for kind, name in (("image", "cat.png"), ("trimap", "cat_trimap.png")):
        (tmp_path / kind).mkdir()
        os.link(photo / name, tmp_path / kind / "cat.png")
    status, out, _ = run(test_mod.main, ["--imgDir", str(tmp_path / "image"), "--trimapDir", str(tmp_path / "trimap"),
                                         "--saveDir", str(tmp_path / "out"), "--resume", str(models[0]),
                                         "--max_size", "64"], capsys)
    lines = [line for line in out.splitlines() if "shrunk" in line]
    assert status == 0 and len(lines) == 1 and lines[0].endswith(
        f"whole mode shrinks 1 image of 1 to fit --max_size 64; e.g. {tmp_path / 'image' / 'cat.png'}: 128×96 is "
        "shrunk to 64×64 for the network in whole mode (--max_size 64) and the matte scaled back up; "
        "--crop_or_resize tile predicts at full resolution")


def test_demo_with_the_release_unreachable_names_the_way_forward(monkeypatch, tmp_path, capsys):
    from core.release import TRAIN_HINT

    monkeypatch.setattr(demo_mod, "REPO_ROOT", str(tmp_path))
    monkeypatch.setenv("DIM_RELEASES_URL", "http://127.0.0.1:9/releases")  # nothing listens on port 9
    status, _, err = run(demo_mod.main, ["--saveDir", str(tmp_path / "pred")], capsys)
    model = tmp_path / "model" / "stage1_skip_sad_52.9.pth"
    assert status == 2 and err.count("\n") == 1 and not model.exists() and not (tmp_path / "pred").exists()
    assert err.startswith("error: http://127.0.0.1:9/releases/V1.5/stage1_skip_sad_52.9.pth: download failed (")
    assert err.endswith(f"nothing was written to {model}. Offline? Put the file there by hand, {TRAIN_HINT}\n")
    assert "smoke run" in TRAIN_HINT and "bash train.sh" in TRAIN_HINT
