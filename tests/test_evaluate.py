"""tools/evaluate.py: folder scoring, reports, CLI errors, and agreement on the real
Composition-1k examples with an independent float64 implementation (scipy)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.metrics import compute_metrics, mean_metrics
from core.utils import run_cli
from tests.metric_by_hand import sad_mse_by_hand
from tools.evaluate import main

REPO = Path(__file__).resolve().parents[1]


def make_folders(tmp_path, sizes=((20, 30), (24, 18), (16, 16))):
    """pred/alpha/trimap folders of random maps; the last trimap has no unknown pixel.
    Ground truths are RGB PNGs like Composition-1k's."""
    rng = np.random.default_rng(0)
    dirs = {d: tmp_path / d for d in ("pred", "alpha", "trimap")}
    for d in dirs.values():
        d.mkdir()
    arrays = {}
    for i, (h, w) in enumerate(sizes):
        name = f"img{i}.png"
        field = cv2.resize(rng.random((3, 4)), (w, h), interpolation=cv2.INTER_LINEAR)
        gt = np.clip((field - 0.2) * 1.6 * 255, 0, 255).astype(np.uint8)
        pred = np.clip(gt.astype(int) + rng.integers(-40, 41, (h, w)), 0, 255).astype(np.uint8)
        trimap = rng.choice(np.array([0, 128, 255], np.uint8), (h, w))
        if i == len(sizes) - 1:
            trimap[trimap == 128] = 0
        cv2.imwrite(str(dirs["pred"] / name), pred)
        cv2.imwrite(str(dirs["alpha"] / name), cv2.merge([gt, gt, gt]))
        cv2.imwrite(str(dirs["trimap"] / name), trimap)
        arrays[name] = (pred, gt, trimap)
    argv = ["--predDir", str(dirs["pred"]), "--alphaDir", str(dirs["alpha"]), "--trimapDir", str(dirs["trimap"])]
    return argv, dirs, arrays


def test_scores_folder_and_writes_reports(tmp_path, capsys):
    argv, _, arrays = make_folders(tmp_path)
    js, cs = tmp_path / "m.json", tmp_path / "m.csv"
    assert main(argv + ["--json", str(js), "--csv", str(cs)]) == 0
    doc = json.loads(js.read_text())
    assert list(doc["images"]) == sorted(arrays)
    for name, (pred, gt, trimap) in arrays.items():
        want = compute_metrics(pred, gt, trimap)
        got = doc["images"][name]
        by_hand = sad_mse_by_hand(pred, gt, trimap)
        assert got["sad"] == pytest.approx(by_hand[0], rel=1e-6)
        assert (got["mse"] is None) if math.isnan(by_hand[1]) else got["mse"] == pytest.approx(by_hand[1], rel=1e-6)
        assert got["sad"] == want["sad"] and got["grad"] == want["grad"] and got["conn"] == want["conn"]
        assert got["mse"] == (None if math.isnan(want["mse"]) else want["mse"])
    assert doc["mean"]["n"] == 3 and doc["mean"]["mse_count"] == 2
    assert doc["mean"]["sad"] == pytest.approx(np.mean([r["sad"] for r in doc["images"].values()]))
    assert cs.read_text().splitlines()[-1].startswith("mean,")
    out = capsys.readouterr().out
    assert "img0.png" in out and "mean (3)" in out and "MSE mean over 2 of 3 images" in out


def test_workers_give_identical_results(tmp_path):
    argv, _, _ = make_folders(tmp_path)
    one, two = tmp_path / "1.json", tmp_path / "2.json"
    main(argv + ["--json", str(one)])
    main(argv + ["--json", str(two), "--workers", "2"])
    assert one.read_text() == two.read_text()


def cli_error(argv, capsys):
    with pytest.raises(SystemExit) as info:
        run_cli(main, argv)
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after any progress bar
    assert info.value.code == 2 and err.startswith("error: ")
    return err


def test_missing_files_are_all_reported_before_scoring(tmp_path, capsys):
    argv, dirs, _ = make_folders(tmp_path)
    (dirs["pred"] / "img0.png").unlink()
    (dirs["pred"] / "img2.png").unlink()
    (dirs["trimap"] / "img1.png").unlink()
    err = cli_error(argv, capsys)
    assert f"2 predictions missing in {dirs['pred']}: img0.png, img2.png" in err
    assert f"1 trimaps missing in {dirs['trimap']}: img1.png" in err


def test_size_mismatch_names_the_file(tmp_path, capsys):
    argv, dirs, _ = make_folders(tmp_path)
    cv2.imwrite(str(dirs["trimap"] / "img1.png"), np.zeros((5, 7), np.uint8))
    err = cli_error(argv, capsys)
    assert str(dirs["trimap"] / "img1.png") in err and "7×5, ground truth 18×24" in err


def test_three_channel_prediction_is_an_error(tmp_path, capsys):
    argv, dirs, arrays = make_folders(tmp_path)
    pred = arrays["img1.png"][0]
    cv2.imwrite(str(dirs["pred"] / "img1.png"), cv2.merge([pred, pred, pred]))
    err = cli_error(argv, capsys)
    assert str(dirs["pred"] / "img1.png") in err and "not a single-channel 8-bit PNG" in err
    # Not a PNG: caught when read.
    (dirs["pred"] / "img1.png").unlink()
    cv2.imwrite(str(dirs["pred"] / "img1.bmp"), cv2.merge([pred, pred, pred]))
    (dirs["pred"] / "img1.bmp").rename(dirs["pred"] / "img1.png")
    err = cli_error(argv, capsys)
    assert str(dirs["pred"] / "img1.png") in err and "3 channels" in err


def test_bad_folders_and_flags(tmp_path, capsys):
    argv, dirs, _ = make_folders(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no image files" in cli_error(argv[:2] + ["--alphaDir", str(empty)] + argv[4:], capsys)
    assert "folder not found" in cli_error(["--predDir", str(tmp_path / "x")] + argv[2:], capsys)
    assert "--workers must be at least 1" in cli_error(argv + ["--workers", "0"], capsys)


@pytest.mark.parametrize("how", [["tools/evaluate.py"], ["-m", "tools.evaluate"]])
def test_runs_as_script_and_module(tmp_path, how):
    argv, _, _ = make_folders(tmp_path, sizes=((12, 12),))
    proc = subprocess.run([sys.executable, *how, *argv], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "img0.png" in proc.stdout and "mean (1)" in proc.stdout


# --------------------------------------------------------------------------- #
# Real Composition-1k predictions vs an independent float64 implementation
# --------------------------------------------------------------------------- #
def reference_metrics(pred, gt, trimap, ndimage):
    """METRICS.md §4 in float64 with scipy: 2-D convolution with the formula kernel,
    exact integer thresholds, scipy labelling with an explicit column-major tie-break."""
    P, G = pred.astype(np.float64), gt.astype(np.float64)
    U = trimap == 128
    p, g = P / 255, G / 255

    s, e = 1.4, 0.01
    h = math.ceil(s * math.sqrt(-2 * math.log(math.sqrt(2 * math.pi) * s * e)))
    u = np.arange(-h, h + 1)[:, None]
    v = np.arange(-h, h + 1)[None, :]
    hx = np.exp(-u ** 2 / (2 * s * s)) * (-v * np.exp(-v ** 2 / (2 * s * s)) / s ** 2) / (2 * math.pi * s * s)
    hx /= np.sqrt((hx ** 2).sum())

    def magnitude(x):
        if x.min() == x.max():
            return np.zeros_like(x)
        x = (x - x.min()) / (x.max() - x.min())
        return np.hypot(ndimage.convolve(x, hx, mode="nearest"), ndimage.convolve(x, hx.T, mode="nearest"))

    L = np.ones(P.shape)  # pixels never dropped keep 1
    unassigned = np.ones(P.shape, bool)
    P10, G10 = 10 * pred.astype(np.int32), 10 * gt.astype(np.int32)
    for k in range(1, 11):
        labels, n = ndimage.label((P10 >= 255 * k) & (G10 >= 255 * k))  # default: 4-connectivity
        omega = np.zeros(P.shape, bool)
        if n:
            sizes = np.bincount(labels.ravel())[1:]
            tied = np.flatnonzero(sizes == sizes.max()) + 1
            if len(tied) > 1:
                column_major = labels.T.ravel()
                tied = [min(tied, key=lambda lab: np.argmax(column_major == lab))]
            omega = labels == tied[0]
        dropped = unassigned & ~omega
        L[dropped] = (k - 1) / 10
        unassigned &= omega

    def phi(a):
        d = a - L
        return 1 - d * (d >= 0.15)

    return {"sad": np.abs(p - g)[U].sum() / 1000, "mse": ((p - g) ** 2)[U].mean(),
            "grad": ((magnitude(P) - magnitude(G)) ** 2)[U].sum() / 1000,
            "conn": np.abs(phi(p) - phi(g))[U].sum() / 1000}


# The official MATLAB code (evaluate.m and the four metric functions) run under GNU
# Octave 7.3 + octave-image 2.14 on the five examples; 9 significant digits identify a
# float32 exactly. Order: SAD, MSE, Grad, Conn.
OCTAVE_REAL = {
    "boy-1518482_1920_12.png": (19.6842823, 0.0134802666, 10.3685074, 18.4707756),
    "dandelion-1335575_1920_1.png": (95.7325592, 0.0233037025, 37.8195381, 101.553139),
    "light-bulb-376930_1920_11.png": (151.102707, 0.0320861563, 70.5580826, 143.921509),
    "sieve-641426_1920_1.png": (116.355934, 0.0445099324, 113.269516, 117.036797),
    "spring-289527_1920_15.png": (40.8601723, 0.0176580455, 27.1911964, 40.9346008),
}


@pytest.fixture(scope="module")
def real_scores(tmp_path_factory, dim_examples):
    """tools/evaluate.py's JSON for the five real examples (scored once per module)."""
    examples = dim_examples
    js = tmp_path_factory.mktemp("real") / "m.json"
    main(["--predDir", str(examples / "pred"), "--alphaDir", str(examples / "alpha"),
          "--trimapDir", str(examples / "trimap"), "--json", str(js)])
    return examples, json.loads(js.read_text())


def test_real_examples_bit_exact_with_official_code(real_scores):
    examples, doc = real_scores
    assert list(doc["images"]) == sorted(os.listdir(examples / "alpha")) == sorted(OCTAVE_REAL)
    for name, want in OCTAVE_REAL.items():
        got = doc["images"][name]
        assert [np.float32(got[k]) for k in ("sad", "mse", "grad", "conn")] == [np.float32(v) for v in want]


def test_real_examples_match_independent_implementation(real_scores):
    ndimage = pytest.importorskip("scipy.ndimage")
    examples, doc = real_scores
    want_rows = {}
    for name in doc["images"]:
        pred = cv2.imread(str(examples / "pred" / name), cv2.IMREAD_UNCHANGED)
        gt = cv2.imread(str(examples / "alpha" / name), cv2.IMREAD_UNCHANGED)[:, :, 2]
        trimap = cv2.imread(str(examples / "trimap" / name), cv2.IMREAD_UNCHANGED)
        want_rows[name] = want = reference_metrics(pred, gt, trimap, ndimage)
        for key, value in want.items():
            assert doc["images"][name][key] == pytest.approx(value, rel=1e-5), (name, key)
    means = mean_metrics(want_rows)
    for key in ("sad", "mse", "grad", "conn"):
        assert doc["mean"][key] == pytest.approx(means[key], rel=1e-5)
