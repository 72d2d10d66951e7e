"""Prediction and compositing on several ranks: real ``torchrun`` (gloo, CPU) against one process.

The five real Composition-1k examples at 1/8 size, a random-weight DIMNet: the
mattes must be the same bytes and metrics.json the same numbers as one process
writes, with even (2 ranks) and uneven (3 ranks over 5 images) shares; a bad
image stops every rank with one process's line; composite shards add up to one run.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from reference_impl import init_unsaturated  # noqa: E402
from test_composite import _files, _run  # noqa: E402

from core import composite as comp  # noqa: E402
from core.checkpoint import save_checkpoint  # noqa: E402
from core.imageio import remove_stale_temps  # noqa: E402
from core.network import DIMNet  # noqa: E402
from core.sharding import parse_shard, share, speed_lines, unshard  # noqa: E402
from core.utils import UserError  # noqa: E402
from tools.make_synthetic import make_dataset  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
BAD = "light-bulb-376930_1920_11.png"
# rank 1 is still busy checking when rank 0 has waited --dist_timeout 0.1 minutes (6 s)
SLOW_RANK = """
import os, sys, time
sys.path.insert(0, {root!r})
import core.folder as F
from core import test as T
from core.utils import run_cli
real = F.pair_problems
def slow(*a, **k):
    if os.environ["RANK"] == "1":
        time.sleep(90)
    return real(*a, **k)
F.pair_problems = slow
run_cli(T.main)
"""


def test_shares_are_strided_and_unshard_restores_the_order():
    items = list(range(5))
    shares = [share(items, r, 3) for r in range(3)]
    assert shares == [[0, 3], [1, 4], [2]]
    assert unshard(shares) == items and unshard([items]) == items
    assert parse_shard("1/2") == (0, 2) and parse_shard("3/3") == (2, 3)
    for bad in ("0/2", "3/2", "2", "a/b"):
        with pytest.raises(UserError, match="--shard"):
            parse_shard(bad)
    lines = speed_lines([{"rank": 0, "host": "h", "device": "cpu", "images": 3, "wall": 2.0},
                         {"rank": 1, "host": "h", "device": "cpu", "images": 2, "wall": 2.5}])
    assert lines[-1].startswith("5 images on 2 ranks in 2.5 s: 2.00 images/s overall")


def small_examples(full, root):
    """The examples at 1/8 size (image, trimap nearest, alpha), in a temporary folder."""
    for f in sorted((full / "image").iterdir()):
        img = cv2.imread(str(f))
        size = (img.shape[1] // 8, img.shape[0] // 8)
        for kind, interp in (("image", cv2.INTER_AREA), ("trimap", cv2.INTER_NEAREST), ("alpha", cv2.INTER_AREA)):
            (root / kind).mkdir(parents=True, exist_ok=True)
            src = img if kind == "image" else cv2.imread(str(full / kind / f.name))
            cv2.imwrite(str(root / kind / f.name), cv2.resize(src, size, interpolation=interp))
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory, dim_examples):
    """Every run at once (they share the machine's import time): {key: (status, stdout, stderr, saveDir)}."""
    tmp = tmp_path_factory.mktemp("dist")
    data = small_examples(dim_examples, tmp / "data")
    bad = small_examples(dim_examples, tmp / "bad")
    (bad / "image" / BAD).write_bytes(b"not an image")
    ckpt = tmp / "random.pth"
    save_checkpoint(ckpt, init_unsaturated(DIMNet(refine=False, skip=True, conv6_kernel=3), seed=5), epoch=3,
                    best_sad=1.0)

    def test_args(root, out):
        return ["core/test.py", "--imgDir", str(root / "image"), "--trimapDir", str(root / "trimap"),
                "--alphaDir", str(root / "alpha"), "--resume", str(ckpt), "--max_size", "160",
                "--saveDir", str(tmp / out), "--dist_timeout", "2"]

    def demo_args(out):  # trimaps made from masks (the alphas): each rank makes its share's
        return ["core/demo.py", "--imgDir", str(data / "image"), "--maskDir", str(data / "alpha"),
                "--alphaDir", str(data / "alpha"), "--resume", str(ckpt), "--max_size", "160",
                "--saveDir", str(tmp / out)]

    commands = {
        "one": [sys.executable, *test_args(data, "one")],
        "two": [*TORCHRUN, "--nproc_per_node=2", *test_args(data, "two")],
        "three": [*TORCHRUN, "--nproc_per_node=3", *test_args(data, "three")],
        "bad_one": [sys.executable, *test_args(bad, "bad_one")],
        "bad_two": [*TORCHRUN, "--nproc_per_node=2", *test_args(bad, "bad_two")],
        "demo_one": [sys.executable, *demo_args("demo_one")],
        "demo_two": [*TORCHRUN, "--nproc_per_node=2", *demo_args("demo_two")],
    }
    probe = tmp / "slow_rank.py"
    probe.write_text(SLOW_RANK.format(root=str(REPO)))
    slow = [*TORCHRUN, "--nproc_per_node=2", str(probe), *test_args(data, "slow")[1:]]
    commands["slow"] = slow[:slow.index("--dist_timeout") + 1] + ["0.1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = {k: subprocess.Popen(c, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k, c in commands.items()}
    out = {}
    try:
        for k, p in procs.items():
            stdout, stderr = p.communicate(timeout=240)  # a hang fails here instead of blocking the suite
            out[k] = (p.returncode, stdout, stderr, tmp / k)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.communicate()
    return out


@pytest.mark.parametrize("key", ["two", "three"])
def test_ranks_write_one_process_mattes_and_scores(runs, key):
    status, stdout, stderr, out = runs[key]
    assert status == 0, stderr[-3000:]
    assert runs["one"][0] == 0, runs["one"][2][-3000:]
    one = runs["one"][3]
    names = sorted(p.name for p in one.glob("*.png"))
    assert len(names) == 5 and sorted(p.name for p in out.glob("*.png")) == names
    for name in names:
        assert (out / name).read_bytes() == (one / name).read_bytes(), name
    assert json.loads((out / "metrics.json").read_text()) == json.loads((one / "metrics.json").read_text())
    assert (out / "metrics.csv").read_bytes() == (one / "metrics.csv").read_bytes()
    ranks = 2 if key == "two" else 3
    assert f"5 images on {ranks} ranks in " in stdout and "images/s overall" in stdout
    assert "rank 1 (" in stdout  # one line per rank, on rank 0
    assert stdout.count("mean (5)") == 1  # only rank 0 prints the table


def test_a_bad_image_stops_every_rank_with_one_process_line(runs):
    status, _, stderr, out = runs["bad_one"]
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert status == 2 and len(lines) == 1 and BAD in lines[0]
    status, stdout, stderr, out = runs["bad_two"]
    got = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert status != 0 and got and set(got) == set(lines)  # every rank that spoke said one process's line
    assert f'{REPO / "core"}' not in stderr  # torchrun's own report only, no traceback from the project
    assert not out.exists() or not list(out.glob("*.png"))  # refused before anything was predicted


def test_a_rank_that_does_not_answer_stops_the_others_within_the_timeout(runs):
    status, _, stderr, out = runs["slow"]
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert status != 0 and lines
    assert lines[0].startswith("error: rank 0: another rank did not answer within 6 s while checking the pairs")
    assert "unbound_buffer" not in lines[0] and not list(out.glob("*.png"))


def test_demo_folder_run_is_shared_out(runs):
    (s1, _, e1, one), (s2, stdout, e2, two) = runs["demo_one"], runs["demo_two"]
    assert s1 == 0 and s2 == 0, (e1[-2000:], e2[-2000:])
    assert _files(one) == _files(two) and len(_files(two)) == 16  # mattes, trimaps, side-by-side pictures, made_by.json
    assert "5 images on 2 ranks" in stdout


def test_composite_shards_make_one_run(tmp_path):
    one = make_dataset(str(tmp_path / "one"), num_fg=3, num_test_fg=2, size=32, seed=4)
    two = make_dataset(str(tmp_path / "two"), num_fg=3, num_test_fg=2, size=32, seed=4)
    _run(one)
    first = _run(two, shard=(0, 2))
    assert first["train"]["composites"] == 4 and first["test"]["composites"] == 2  # foregrounds 0 and 2; 0
    # shard 0's file being written is left alone by shard 1; shard 1's own stale temporary goes
    folder = os.path.join(two["root_dir"], "Training_set", "comp", "image")
    names = two["train_fg_names"]
    theirs = os.path.join(folder, f".{comp.composite_name(names[0], 0)}.abc123.tmp")
    stale = os.path.join(folder, f".{comp.composite_name(names[1], 0)}.def456.tmp")
    for path in (theirs, stale):
        open(path, "wb").close()
    second = _run(two, shard=(1, 2))
    assert second["train"]["written"] == 2 and os.path.exists(theirs) and not os.path.exists(stale)
    os.remove(theirs)
    assert _files(os.path.dirname(one["root_dir"])) == _files(os.path.dirname(two["root_dir"]))
    again = _run(two, shard=(1, 2))  # kill-and-rerun: a finished shard skips everything
    assert again["train"]["written"] == 0 and again["train"]["skipped"] == 2


def test_remove_stale_temps_by_name(tmp_path):
    for name in (".a.png.x1.tmp", ".b.png.y2.tmp", "c.png"):
        (tmp_path / name).write_bytes(b"")
    remove_stale_temps(tmp_path, {"a.png"})
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.png.y2.tmp", "c.png"]
    remove_stale_temps(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png"]


def test_composite_cli_shards_under_torchrun_and_by_flag(tmp_path):
    one = make_dataset(str(tmp_path / "one"), num_fg=2, num_test_fg=1, size=32, seed=3)
    two = make_dataset(str(tmp_path / "two"), num_fg=2, num_test_fg=1, size=32, seed=3)
    three = make_dataset(str(tmp_path / "three"), num_fg=2, num_test_fg=1, size=32, seed=3)

    def flags(d):
        return ["tools/composite.py", "--root_dir", d["root_dir"], "--train_bg_dir", d["train_bg_dir"],
                "--test_bg_dir", d["test_bg_dir"], "--train_bg_per_fg", str(d["train_bg_per_fg"]),
                "--test_bg_per_fg", str(d["test_bg_per_fg"]), "--workers", "1"]

    env = dict(os.environ, OMP_NUM_THREADS="1")
    _run(one)
    proc = subprocess.run([*TORCHRUN, "--nproc_per_node=2", *flags(two)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 2 ranks in" in proc.stdout and "composites/s overall" in proc.stdout
    for k in ("1/2", "2/2"):
        proc = subprocess.run([sys.executable, *flags(three), "--shard", k], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"(shard {k})" in proc.stdout
    expected = _files(os.path.dirname(one["root_dir"]))
    assert _files(os.path.dirname(two["root_dir"])) == expected == _files(os.path.dirname(three["root_dir"]))
