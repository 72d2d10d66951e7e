"""tools/composite.py: the composition math of both methods against hand-computed
pixels and slow per-pixel oracles, the validation errors, a run on the synthetic
set, and an interrupted run resumed to the exact files of a clean run."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

import core.imageio
from PIL import Image

import core.composite as comp
from core.utils import UserError
from tools.make_synthetic import make_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- names


def test_coco2017_name_drops_the_2014_prefix():
    assert comp.coco2017_name("COCO_train2014_000000000009.jpg") == "000000000009.jpg"
    assert comp.coco2017_name("000000000009.jpg") == "000000000009.jpg"  # already a 2017 name
    assert comp.coco2017_name("2008_000123.jpg") == "2008_000123.jpg"


def test_composite_name_strips_a_4_char_extension():
    assert comp.composite_name("boy-1518482_1920.png", 12) == "boy-1518482_1920_12.png"
    assert comp.composite_name("a.b.jpg", 0) == "a.b_0.png"
    with pytest.raises(UserError, match="4-character extension"):
        comp.composite_name("photo.jpeg", 0)


# ---------------------------------------------------------------- background fit


def test_fit_size_both_methods():
    # fg 300x400 (h x w) on a 200x100 bg: ratio = max(400/100, 300/200) = 4
    assert comp.fit_size(300, 400, 200, 100, "reference") == (801, 401)  # int(x*4 + 1)
    assert comp.fit_size(300, 400, 200, 100, "adobe") == (800, 400)  # ceil(x*4)
    # 7 * (29/7) is 29.000000000000004 in floats: Adobe's ceil gives 30, not 29
    assert comp.fit_size(1, 29, 1, 7, "adobe") == (5, 30)
    assert comp.fit_size(1, 29, 1, 7, "reference") == (5, 30)
    assert comp.fit_size(10, 10, 10, 10, "reference") is None  # ratio 1: no resize
    assert comp.fit_size(10, 10, 20, 12, "adobe") is None


def test_fit_background_reference_bilinear_pixels():
    bg = np.zeros((2, 2, 3), np.uint8)
    bg[:, 1] = 100
    # fg 3x3: ratio 1.5 -> 4x4 (exact 2x). cv2 bilinear, half-pixel centres: source x of
    # output 0..3 = -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1) -> 0, 25, 75, 100
    out = comp.fit_background_reference(bg, 3, 3)
    assert out.shape == (3, 3, 3)
    np.testing.assert_array_equal(out[..., 0], [[0, 25, 75]] * 3)
    # large enough: the top-left crop, untouched
    big = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3)
    np.testing.assert_array_equal(comp.fit_background_reference(big, 4, 3), big[:4, :3])


def test_fit_background_adobe_bicubic_pixels():
    bg = np.zeros((1, 2, 3), np.uint8)
    bg[0, 1] = 100
    # fg 2x4: ratio 2 -> 2x4. Pillow bicubic (a = -0.5), weights normalised over the
    # pixels inside the image. Output x=1 samples at 0.75: k(0.25)=0.8671875 on 0,
    # k(0.75)=0.2265625 on 100 -> 100*0.2265625/1.09375 = 20.7 -> 21; x=0 at 0.25:
    # k(0.25) on 0, k(1.25)=-0.0703125 on 100 -> -8.8 -> 0; x=3 mirrors x=0 -> 108.8 -> 109
    out = comp.fit_background_adobe(bg, 2, 4)
    assert out.shape == (2, 4, 3)
    np.testing.assert_array_equal(out[..., 0], [[0, 21, 79, 109]] * 2)
    big = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3)
    np.testing.assert_array_equal(comp.fit_background_adobe(big, 4, 3), big[:4, :3])


# ---------------------------------------------------------------- composition


def test_round_to_uint8_rounds_half_to_even_and_saturates():
    x = np.array([0.5, 1.5, 2.5, 254.5, -3.0, 255.5, 300.2, 0.49999])
    np.testing.assert_array_equal(comp.round_to_uint8(x), [0, 2, 2, 254, 0, 255, 255, 0])


def test_round_to_uint8_matches_opencv_writing_a_float_image(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(-20, 280, (16, 16, 3))
    x[0, :8, 0] = np.arange(8) + 0.5  # exact halves: 0.5 .. 7.5
    path = str(tmp_path / "f.png")
    assert cv2.imwrite(path, x)  # OpenCV converts float64 to 8-bit when writing PNG
    np.testing.assert_array_equal(cv2.imread(path, cv2.IMREAD_UNCHANGED), comp.round_to_uint8(x))


def test_composite_reference_hand_values():
    fg = np.array([[[10, 200, 7]]], np.uint8)
    bg = np.array([[[0, 100, 99]]], np.uint8)
    # channel 0: 10*100/255 = 3.92 -> 4 (truncation would give 3); channel 1:
    # 200*128/255 + 100*127/255 = 150.196 -> 150; channel 2 alpha 255 -> fg
    alpha = np.array([[[100, 128, 255]]], np.uint8)
    np.testing.assert_array_equal(comp.composite_reference(fg, bg, alpha), [[[4, 150, 7]]])
    np.testing.assert_array_equal(comp.composite_reference(fg, bg, np.zeros((1, 1), np.uint8)), bg)
    # an H x W alpha is broadcast like its 3-channel read
    two_d = np.array([[100]], np.uint8)
    np.testing.assert_array_equal(comp.composite_reference(fg, bg, two_d),
                                  comp.composite_reference(fg, bg, np.repeat(two_d[..., None], 3, 2)))


def test_composite_reference_equals_opencv_written_float_blend(tmp_path):
    rng = np.random.default_rng(1)
    fg, bg = (rng.integers(0, 256, (20, 24, 3), dtype=np.uint8) for _ in range(2))
    alpha = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    alpha[:2], alpha[2:4] = 0, 255
    blend = fg * (alpha / 255.0) + bg * (1 - alpha / 255.0)  # the reference's float image
    path = str(tmp_path / "c.png")
    cv2.imwrite(path, blend)
    np.testing.assert_array_equal(comp.composite_reference(fg, bg, alpha), cv2.imread(path, cv2.IMREAD_UNCHANGED))
    # element-wise: a crop of the composite is the composite of the crops
    np.testing.assert_array_equal(comp.composite_reference(fg[3:9, 5:7], bg[3:9, 5:7], alpha[3:9, 5:7]),
                                  comp.composite_reference(fg, bg, alpha)[3:9, 5:7])


def _adobe_slow(fg, bg, alpha):
    """Adobe's per-pixel loop on Python numbers (the oracle)."""
    out = bg.copy()
    for y in range(fg.shape[0]):
        for x in range(fg.shape[1]):
            a = int(alpha[y, x]) / 255
            if a >= 1:
                out[y, x] = [int(c) for c in fg[y, x]]
            elif a > 0:
                out[y, x] = [int(a * int(f) + (1 - a) * int(b)) for f, b in zip(fg[y, x], bg[y, x])]
    return out


def test_composite_adobe_hand_values():
    fg = np.array([[[10, 200, 7], [10, 200, 7], [10, 200, 7]]], np.uint8)
    bg = np.array([[[0, 100, 99], [0, 100, 99], [255, 255, 255]]], np.uint8)
    alpha = np.array([[100, 255, 0]], np.uint8)
    # pixel 0, alpha 100: int(10*100/255 = 3.92) = 3; 200*100/255 + 100*155/255 = 139.2
    # -> 139; 7*100/255 + 99*155/255 = 62.9 -> 62. Pixel 1 alpha 255: fg. Pixel 2 alpha 0: bg
    expected = [[[3, 139, 62], [10, 200, 7], [255, 255, 255]]]
    np.testing.assert_array_equal(comp.composite_adobe(fg, bg, alpha), expected)
    # the truncation quirk: fg == bg == 255 with alpha 123 gives 254
    same = np.full((1, 1, 3), 255, np.uint8)
    np.testing.assert_array_equal(comp.composite_adobe(same, same, np.array([[123]], np.uint8)), [[[254] * 3]])


def test_composite_adobe_matches_the_per_pixel_loop():
    rng = np.random.default_rng(2)
    alpha = np.arange(256, dtype=np.uint8).reshape(16, 16)
    fg = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    bg = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    bg[::2] = fg[::2]  # equal fg and bg hit the truncation quirk
    fast = comp.composite_adobe(fg, bg, alpha)
    np.testing.assert_array_equal(fast, _adobe_slow(fg, bg, alpha))
    assert (fast[::2].astype(int) - fg[::2] == -1).any()  # the quirk happened
    assert not np.array_equal(fast, comp.composite_reference(fg, bg, alpha))


# ---------------------------------------------------------------- validation


@pytest.fixture
def synth(tmp_path):
    return make_dataset(str(tmp_path / "data"), num_fg=3, num_test_fg=2, size=40, seed=5)


def _run(paths, **kw):
    kw = dict(dict(train_bg_per_fg=paths["train_bg_per_fg"], test_bg_per_fg=paths["test_bg_per_fg"]), **kw)
    return comp.composite_dataset(paths["root_dir"], paths["train_bg_dir"], paths["test_bg_dir"], **kw)


def test_missing_files_are_all_reported(synth):
    root = synth["root_dir"]
    fg_gone = synth["train_fg_names"][1]
    src = next(s for s in ("Adobe-licensed images", "Other")
               if os.path.isfile(os.path.join(root, "Training_set", s, "fg", fg_gone)))
    os.remove(os.path.join(root, "Training_set", src, "fg", fg_gone))
    alpha_gone = synth["train_fg_names"][2]
    src2 = next(s for s in ("Adobe-licensed images", "Other")
                if os.path.isfile(os.path.join(root, "Training_set", s, "alpha", alpha_gone)))
    os.remove(os.path.join(root, "Training_set", src2, "alpha", alpha_gone))
    bg_gone = sorted(os.listdir(synth["train_bg_dir"]))[:2]
    for name in bg_gone:
        os.remove(os.path.join(synth["train_bg_dir"], name))
    with pytest.raises(UserError) as err:
        _run(synth, only="train")
    msg = str(err.value)
    assert "4 listed files are missing" in msg and "\n" not in msg
    assert fg_gone in msg and alpha_gone in msg and all(n in msg for n in bg_gone)
    assert not os.path.exists(os.path.join(root, "Training_set", "comp"))  # nothing written


def test_many_missing_files_are_truncated(synth):
    trimaps = os.path.join(synth["root_dir"], "Test_set", "Adobe-licensed images", "trimaps")
    for name in os.listdir(trimaps):
        os.remove(os.path.join(trimaps, name))
    lst = os.path.join(synth["root_dir"], "Test_set", "test_bg_names.txt")
    lines = open(lst).read().split()
    with open(lst, "w") as f:  # 4 backgrounds per fg -> 2 x 4 = 8 trimaps expected, all missing
        f.write("\n".join(lines * 2) + "\n")
    with pytest.raises(UserError) as err:
        _run(synth, only="test", test_bg_per_fg=4)
    msg = str(err.value)
    assert msg.startswith("test set: 8 listed files are missing: ") and msg.endswith(" and 3 more")
    assert msg.count(".png") == 5


def test_line_count_mismatch_names_both_numbers(synth):
    lst = os.path.join(synth["root_dir"], "Training_set", "training_bg_names.txt")
    lines = open(lst).read().split()
    with open(lst, "w") as f:
        f.write("\n".join(lines[:-1]) + "\n")
    with pytest.raises(UserError, match=r"has 5 lines .* 3 foregrounds x 2 backgrounds each = 6"):
        _run(synth, only="train")
    with pytest.raises(UserError, match=r"has 4 lines .* 2 foregrounds x 3 backgrounds each = 6"):
        _run(synth, only="test", test_bg_per_fg=3)


def test_missing_name_list_and_bg_dir(synth, tmp_path):
    with pytest.raises(UserError, match="--test_bg_dir is required"):
        comp.composite_dataset(synth["root_dir"], synth["train_bg_dir"], None, only="test")
    with pytest.raises(UserError, match="not a folder"):
        comp.composite_dataset(synth["root_dir"], str(tmp_path / "nope"), None, only="train")
    os.remove(os.path.join(synth["root_dir"], "Test_set", "test_fg_names.txt"))
    with pytest.raises(UserError, match="test_fg_names.txt: name list not found"):
        _run(synth, only="test")


@pytest.mark.parametrize("method", ["reference", "adobe"])
def test_fg_alpha_size_mismatch(synth, method):
    name = synth["test_fg_names"][0]
    path = os.path.join(synth["root_dir"], "Test_set", "Adobe-licensed images", "alpha", name)
    cv2.imwrite(path, np.zeros((7, 9), np.uint8))
    with pytest.raises(UserError, match=rf"1 foreground/alpha pairs are unusable: .*{name}: foreground is "
                                        rf"\d+x\d+ but its alpha .* is 9x7"):
        _run(synth, only="test", method=method)


def test_methods_are_not_mixed_in_one_folder(synth):
    _run(synth, only="test")
    with pytest.raises(UserError, match="was made with .*reference.* not .*adobe"):
        _run(synth, only="test", method="adobe")
    assert _run(synth, only="test", method="adobe", comp_name="comp_adobe")["test"]["written"] == 4


# ---------------------------------------------------------------- full runs


def _files(folder):
    out = {}
    for base, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(base, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, folder)] = f.read()
    return out


def test_reference_run_on_synthetic_set(synth):
    root = synth["root_dir"]
    summary = _run(synth)
    assert summary["train"]["written"] == 6 and summary["test"]["written"] == 4
    upscaled = 0
    for which, names, n in (("Training_set", synth["train_fg_names"], 2), ("Test_set", synth["test_fg_names"], 2)):
        out = os.path.join(root, which, "comp")
        bg_list = open(os.path.join(root, which, "training_bg_names.txt" if which == "Training_set"
                                    else "test_bg_names.txt")).read().split()
        expected = sorted(f"{name[:-4]}_{k}.png" for name in names for k in range(n))
        assert sorted(os.listdir(os.path.join(out, "image"))) == expected
        for i, fg_name in enumerate(names):
            src = next(os.path.join(root, which, s) for s in ("Adobe-licensed images", "Other")
                       if os.path.isfile(os.path.join(root, which, s, "fg", fg_name)))
            fg = cv2.imread(os.path.join(src, "fg", fg_name))
            alpha = cv2.imread(os.path.join(src, "alpha", fg_name))
            for k in range(n):
                name = f"{fg_name[:-4]}_{k}.png"
                bg_name = bg_list[i * n + k]
                bg_dir = synth["train_bg_dir"] if which == "Training_set" else synth["test_bg_dir"]
                bg = cv2.imread(os.path.join(bg_dir, bg_name.replace("COCO_train2014_", "")))
                upscaled += bg.shape[0] < fg.shape[0] or bg.shape[1] < fg.shape[1]
                fitted = comp.fit_background_reference(bg, *fg.shape[:2])
                blend = fg * (alpha / 255.0) + fitted * (1 - alpha / 255.0)
                read = lambda d: cv2.imread(os.path.join(out, d, name), cv2.IMREAD_UNCHANGED)  # noqa: E731
                np.testing.assert_array_equal(read("image"), comp.round_to_uint8(blend))
                np.testing.assert_array_equal(read("fg"), fg)
                np.testing.assert_array_equal(read("bg"), fitted)
                np.testing.assert_array_equal(read("alpha"), alpha[:, :, 0])
                if which == "Test_set":
                    tri = os.path.join(src, "trimaps", name)
                    assert open(tri, "rb").read() == open(os.path.join(out, "trimap", name), "rb").read()
    assert upscaled > 0  # the bilinear upscaling branch ran
    gathered = _files(os.path.join(root, "Training_set", "all"))
    assert sorted(gathered) == sorted(os.path.join(k, n) for k in ("alpha", "fg") for n in synth["train_fg_names"])
    # a rerun finds everything done
    again = _run(synth)
    assert again["train"]["written"] == 0 and again["train"]["skipped"] == 6


def test_adobe_run_matches_the_per_pixel_loop_and_no_copies(synth):
    root = synth["root_dir"]
    _run(synth, only="test", method="adobe", copies=False)
    out = os.path.join(root, "Test_set", "comp")
    assert sorted(os.listdir(out)) == [".composite.json", "alpha", "image", "trimap"]
    fg_name = synth["test_fg_names"][1]
    src = os.path.join(root, "Test_set", "Adobe-licensed images")
    fg = np.asarray(Image.open(os.path.join(src, "fg", fg_name)).convert("RGB"))
    alpha = np.asarray(Image.open(os.path.join(src, "alpha", fg_name)))
    alpha = alpha[..., 0] if alpha.ndim == 3 else alpha
    bg_name = open(os.path.join(root, "Test_set", "test_bg_names.txt")).read().split()[2]  # fg 1, k = 0
    bg = np.asarray(Image.open(os.path.join(synth["test_bg_dir"], bg_name)).convert("RGB"))
    fitted = comp.fit_background_adobe(bg, *fg.shape[:2])
    image = cv2.imread(os.path.join(out, "image", f"{fg_name[:-4]}_0.png"))[:, :, ::-1]
    np.testing.assert_array_equal(image, _adobe_slow(fg, fitted, alpha))
    np.testing.assert_array_equal(cv2.imread(os.path.join(out, "alpha", f"{fg_name[:-4]}_0.png"), -1), alpha)


def test_interrupted_run_resumes_to_the_files_of_a_clean_run(tmp_path, monkeypatch):
    clean = make_dataset(str(tmp_path / "clean"), num_fg=2, num_test_fg=1, size=40, seed=9)
    _run(clean)
    broken = make_dataset(str(tmp_path / "broken"), num_fg=2, num_test_fg=1, size=40, seed=9)
    real_write = comp.write_bytes_atomic
    calls = {"n": 0}

    def dying_write(path, data):
        calls["n"] += 1
        if calls["n"] == 20:  # killed mid-write: a half temp file stays behind
            folder, base = os.path.split(path)
            with open(os.path.join(folder, f".{base}.x1y2.tmp"), "wb") as f:
                f.write(data[: len(data) // 2])
            raise KeyboardInterrupt
        real_write(path, data)

    # composite.py writes through core.imageio (directly and via write_image)
    monkeypatch.setattr(comp, "write_bytes_atomic", dying_write)
    monkeypatch.setattr(core.imageio, "write_bytes_atomic", dying_write)
    with pytest.raises(KeyboardInterrupt):
        _run(broken)
    monkeypatch.undo()
    partial = _files(os.path.dirname(broken["root_dir"]))
    assert any(k.endswith(".tmp") for k in partial)
    _run(broken)
    resumed = _files(os.path.dirname(broken["root_dir"]))
    assert not any(k.endswith(".tmp") for k in resumed)
    assert resumed == _files(os.path.dirname(clean["root_dir"]))  # every file, byte for byte


@pytest.mark.parametrize("launcher", [["tools/composite.py"], ["-m", "tools.composite"]])
def test_cli_reports_user_errors_in_one_line(tmp_path, launcher):
    res = subprocess.run([sys.executable, *launcher, "--root_dir", str(tmp_path / "missing")],
                         cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip() == f"error: --root_dir {tmp_path / 'missing'}: not a folder"


def test_worker_processes_write_the_same_files(tmp_path):
    one = make_dataset(str(tmp_path / "one"), num_fg=2, num_test_fg=1, size=32, seed=4)
    two = make_dataset(str(tmp_path / "two"), num_fg=2, num_test_fg=1, size=32, seed=4)
    _run(one, workers=1)
    assert _run(two, workers=2)["train"]["written"] == 4
    assert _files(os.path.dirname(one["root_dir"])) == _files(os.path.dirname(two["root_dir"]))
