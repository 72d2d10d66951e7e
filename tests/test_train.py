"""core/train.py end to end on a tiny synthetic dataset (CPU, 32×32 samples).

The full-size network (28 M parameters) is used throughout, so runs are kept to a
handful of iterations; one module-scoped reference run is shared by the tests.
"""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import core.train as train
from core.checkpoint import load_model, read_checkpoint
from core.inference import predict_matte
from core.metrics import compute_metrics
from core.network import build_model
from core.utils import UserError, run_cli

ROOT = Path(__file__).resolve().parents[1]


def soft_alpha(h, w, cy, cx, r):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.clip((r - np.hypot(yy - cy, xx - cx)) * 40, 0, 255).astype(np.uint8)


def write_dataset(root, n_train=2, rng_seed=0):
    """Offline composites (as tools/composite.py writes them) and a test set, tiny."""
    rng = np.random.default_rng(rng_seed)
    dirs = {k: root / "train" / k for k in ("image", "fg", "bg", "alpha")}
    dirs.update({f"test_{k}": root / "test" / k for k in ("image", "trimap", "alpha")})
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        h, w = 40, 48
        fg = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        bg = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        a = soft_alpha(h, w, 18 + i, 22, 11)
        img = np.clip(fg * (a[..., None] / 255.0) + bg * (1 - a[..., None] / 255.0), 0, 255).round().astype(np.uint8)
        for key, im in (("image", img), ("fg", fg), ("bg", bg), ("alpha", np.dstack([a] * 3))):
            cv2.imwrite(str(dirs[key] / f"s{i}.png"), im)
    h, w = 64, 70
    a = soft_alpha(h, w, 30, 33, 20)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    tri = np.full((h, w), 128, np.uint8)
    tri[a == 0], tri[a == 255] = 0, 255
    cv2.imwrite(str(dirs["test_image"] / "t0.png"), img)
    cv2.imwrite(str(dirs["test_trimap"] / "t0.png"), tri)
    cv2.imwrite(str(dirs["test_alpha"] / "t0.png"), a)
    return {k: str(v) for k, v in dirs.items()}


def base_args(d, save_dir, *extra):
    return ["--imgDir", d["image"], "--fgDir", d["fg"], "--bgDir", d["bg"], "--alphaDir", d["alpha"],
            "--crop_h", "32", "--crop_w", "32", "--size_h", "32", "--size_w", "32", "--threads", "0",
            "--printFreq", "1", "--ckptSaveFreq", "0", "--testFreq", "0", "--saveDir", str(save_dir),
            "--seed", "7", *extra]


def tensors_equal(a, b):
    assert a.keys() == b.keys()
    return all(torch.equal(a[k], b[k]) for k in a)


def assert_same_optimizer(o1, o2):
    assert o1["param_groups"][0]["params"] == o2["param_groups"][0]["params"]
    assert o1["state"].keys() == o2["state"].keys() and o1["state"]
    for k in o1["state"]:
        s1, s2 = o1["state"][k], o2["state"][k]
        assert torch.equal(s1["step"], s2["step"])
        assert torch.equal(s1["exp_avg"], s2["exp_avg"]) and torch.equal(s1["exp_avg_sq"], s2["exp_avg_sq"])


class LossSpy:
    """Wraps core.train.stage_loss: counts calls, and on call ``at`` sends SIGTERM or returns NaN."""

    def __init__(self, at=None, action=None):
        self.calls, self.at, self.action, self.real = 0, at, action, train.stage_loss

    def __call__(self, *a, **kw):
        self.calls += 1
        out = self.real(*a, **kw)
        if self.calls == self.at and self.action == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        if self.calls == self.at and self.action == "nan":
            out["loss"] = out["loss"] * float("nan")
        return out


# On tiny inputs the 28 M-parameter network is memory-bound: one thread is faster.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def straight(dataset, tmp_path_factory):
    """Reference run: 2 epochs of 2 iterations, one loader worker, test and ckpt_e after epoch 2."""
    save = tmp_path_factory.mktemp("straight")
    res = save / "pred"
    status = train.main(base_args(dataset, save, "--nEpochs", "2", "--threads", "1", "--ckptSaveFreq", "2",
                                  "--testFreq", "2", "--testImgDir", dataset["test_image"], "--testTrimapDir",
                                  dataset["test_trimap"], "--testAlphaDir", dataset["test_alpha"],
                                  "--testResDir", str(res)))
    assert status == 0
    return save


def test_reference_run_checkpoints_config_and_log(straight, dataset):
    e2, last, best = (read_checkpoint(straight / n) for n in ("ckpt_e2.pth", "ckpt_last.pth", "ckpt_best.pth"))
    # the reference stores the next epoch to run
    assert (e2["epoch"], last["epoch"], best["epoch"]) == (3, 3, 3) and not (straight / "ckpt_e1.pth").exists()
    assert "optimizer" in e2 and "optimizer" not in best
    assert tensors_equal(e2["state_dict"], last["state_dict"]) and tensors_equal(e2["state_dict"], best["state_dict"])
    assert all(not k.startswith("module.") for k in last["state_dict"])
    cfg = json.loads((straight / "config.json").read_text())
    assert cfg["lr"] == 1e-5 and cfg["stage"] == 1 and cfg["crop_sizes"] == [[32, 32]]
    assert last["config"] == cfg
    assert last["train_state"]["iteration"] == 0
    # 2 iterations per epoch → Adam has taken 4 steps
    assert all(s["step"].item() == 4 for s in last["optimizer"]["state"].values())
    log = (straight / "train.log").read_text()
    assert "Stage1-Epoch[2/2](2/2) Lr:0.00001000 Loss:" in log and " Alpha:" in log and "Exa(h:m:s):" in log
    # best SAD is the official SAD of the matte written for the test image, by the best checkpoint
    model, info = load_model(straight / "ckpt_best.pth")
    image = cv2.imread(os.path.join(dataset["test_image"], "t0.png"))
    trimap = cv2.imread(os.path.join(dataset["test_trimap"], "t0.png"))[:, :, 0]
    gt = cv2.imread(os.path.join(dataset["test_alpha"], "t0.png"), cv2.IMREAD_GRAYSCALE)
    matte = predict_matte(model, image, trimap, mode="whole", max_size=1600)
    assert info["best_sad"] == compute_metrics(matte, gt, trimap)["sad"]
    logged = [line.split("SAD ")[1].split()[0] for line in log.splitlines() if "Test epoch 2: SAD" in line]
    assert logged == [f"{info['best_sad']:.3f}"]
    assert np.array_equal(cv2.imread(str(straight / "pred" / "t0.png"), cv2.IMREAD_GRAYSCALE), matte)


def test_interrupt_and_resume_match_the_straight_run_bitwise(straight, dataset, tmp_path, monkeypatch):
    save = tmp_path / "run"
    # SIGTERM during epoch 1, iteration 2: iteration 1 is kept, the run exits 128 + 15
    spy = LossSpy(at=2, action="sigterm")
    monkeypatch.setattr(train, "stage_loss", spy)
    assert train.main(base_args(dataset, save, "--nEpochs", "2")) == 143
    stopped = read_checkpoint(save / "ckpt_last.pth")
    assert stopped["epoch"] == 1 and stopped["train_state"]["iteration"] == 1
    assert all(s["step"].item() == 1 for s in stopped["optimizer"]["state"].values())
    monkeypatch.setattr(train, "stage_loss", train.stage_loss.real)
    # finish epoch 1 only: the 1 remaining iteration
    spy = LossSpy()
    monkeypatch.setattr(train, "stage_loss", spy)
    assert train.main(base_args(dataset, save, "--nEpochs", "1", "--resume", str(save / "ckpt_last.pth"))) == 0
    assert spy.calls == 1
    after1 = read_checkpoint(save / "ckpt_last.pth")
    assert after1["epoch"] == 2 and after1["train_state"]["iteration"] == 0
    assert all(s["step"].item() == 2 for s in after1["optimizer"]["state"].values())
    # then epoch 2 from the epoch boundary (1 + 1 epochs)
    spy.calls = 0
    assert train.main(base_args(dataset, save, "--nEpochs", "2", "--resume", str(save / "ckpt_last.pth"))) == 0
    assert spy.calls == 2
    after2 = read_checkpoint(save / "ckpt_last.pth")
    ref2 = read_checkpoint(straight / "ckpt_last.pth")
    assert after2["epoch"] == 3 and tensors_equal(after2["state_dict"], ref2["state_dict"])
    assert_same_optimizer(after2["optimizer"], ref2["optimizer"])
    assert "resumed" in (save / "train.log").read_text()


def test_stage2_trains_only_the_refinement_head(straight, dataset, tmp_path):
    save = tmp_path / "s2"
    pre = straight / "ckpt_last.pth"
    assert train.main(base_args(dataset, save, "--stage", "2", "--nEpochs", "1", "--pretrain", str(pre),
                                "--lr", "1e-3")) == 0
    before = read_checkpoint(pre)["state_dict"]
    after = read_checkpoint(save / "ckpt_last.pth")
    changed = [k for k in after["state_dict"] if k in before and not torch.equal(after["state_dict"][k], before[k])]
    assert changed == []  # every encoder-decoder tensor bit-identical
    refine = [k for k in after["state_dict"] if k.startswith("refine_")]
    assert len(refine) == 8 and set(after["state_dict"]) == set(before) | set(refine)
    # the optimizer holds only the refinement head's 8 tensors, each stepped twice
    assert len(after["optimizer"]["state"]) == 8
    assert all(s["step"].item() == 2 for s in after["optimizer"]["state"].values())
    log = (save / "train.log").read_text()
    assert f"pretrain {pre}: loaded {len(before)} tensors" in log
    assert "8 tensors keep their initialisation (refine_conv1, refine_conv2, refine_conv3, refine_pred)" in log
    model, info = load_model(save / "ckpt_last.pth", stage=2)
    assert info["arch"]["refine"] is True


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    one = write_dataset(tmp_path / "data", n_train=1)
    save = tmp_path / "nan"
    spy = LossSpy(at=2, action="nan")  # epoch 2, iteration 1
    monkeypatch.setattr(train, "stage_loss", spy)
    with pytest.raises(UserError, match=r"loss is nan at epoch 2, iteration 1: training diverged") as err:
        train.main(base_args(one, save, "--nEpochs", "3", "--stage", "0"))
    assert str(save / "ckpt_last.pth") in str(err.value) and "\n" not in str(err.value)
    kept = read_checkpoint(save / "ckpt_last.pth")
    assert kept["epoch"] == 2 and kept["train_state"]["iteration"] == 0
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values())
    assert spy.calls == 2


def test_a_few_iterations_lower_the_loss_on_a_fixed_batch(dataset):
    from core.data import CompositedDataset, training_batch

    torch.manual_seed(0)
    ds = CompositedDataset(dataset["image"], dataset["fg"], dataset["bg"], dataset["alpha"], ((32, 32),), (32, 32))
    batch = training_batch(torch.utils.data.default_collate([ds[0]]), "cpu")
    model = build_model(1)
    train.init_weights(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    losses = []
    for _ in range(3):
        alpha, refined = model(batch["input"])
        loss = train.stage_loss(1, alpha, refined, batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.9, losses


def test_xavier_init_and_pretrain_report(tmp_path, caplog):
    torch.manual_seed(0)
    model = build_model(1)
    train.init_weights(model)
    w = model.deconv5_1.weight  # 512→512, 5×5: xavier-normal std = sqrt(2 / (fan_in + fan_out))
    assert w.std().item() == pytest.approx(math.sqrt(2 / (2 * 512 * 25)), rel=0.01)
    b = model.deconv5_1.bias  # PyTorch's default bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert 0.5 / math.sqrt(512 * 25) < b.abs().max().item() <= 1 / math.sqrt(512 * 25)
    # a VGG-like file: conv1_1 fits, conv6_1's 1×1 kernel does not, fc6 is foreign
    path = tmp_path / "vgg.pth"
    state = {"conv1_1.weight": torch.ones(64, 4, 3, 3), "conv1_1.bias": torch.zeros(64),
             "conv6_1.weight": torch.ones(512, 512, 1, 1), "fc6.weight": torch.ones(3)}
    torch.save({"state_dict": state, "epoch": 0}, path)
    import logging
    log = logging.getLogger("test_train_pretrain")
    with caplog.at_level(logging.INFO, logger="test_train_pretrain"):
        loaded, random, skipped = train.apply_pretrain(model, str(path), log, partial=True)
    assert loaded == ["conv1_1.bias", "conv1_1.weight"]
    assert torch.equal(model.conv1_1.weight, torch.ones(64, 4, 3, 3))
    assert "conv6_1.weight" in random and set(skipped) == {"conv6_1.weight", "fc6.weight"}
    assert "loaded 2 tensors (conv1_1)" in caplog.text and "keep their initialisation (conv1_2, conv2_1," in caplog.text
    torch.save({"state_dict": {"foo.weight": torch.ones(2)}}, tmp_path / "bad.pth")
    with pytest.raises(UserError, match="bad.pth"):
        train.apply_pretrain(model, str(tmp_path / "bad.pth"), log)


def test_lr_schedule_and_eta():
    assert [train.lr_at(e, 1e-5, -1) for e in (1, 12)] == [1e-5, 1e-5]
    assert [train.lr_at(e, 1.0, 3) for e in (1, 2, 3, 4)] == [1.0, 1.0, 0.1, 0.1]
    assert train.format_eta(3725.9) == "Exa(h:m:s):01:02:05"


def test_bad_flags_are_one_line_errors(dataset, tmp_path, capsys):
    cases = [(["--resume", str(tmp_path / "missing.pth")], "--resume"),
             (["--pretrain", str(tmp_path / "missing.pth")], "--pretrain"),
             (["--size_h", "100"], "multiples of 32"),
             (["--crop_h", "320,480"], "--crop_h"),
             (["--testImgDir", dataset["test_image"]], "--testTrimapDir")]
    for extra, word in cases:
        with pytest.raises(SystemExit) as exc:
            run_cli(train.main, base_args(dataset, tmp_path / "x", *extra))
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.startswith("error: ") and word in err and err.count("\n") == 1, err
    with pytest.raises(UserError, match="--imgDir"):
        train.parse_args(["--fgDir", "x"])


@pytest.mark.parametrize("how", [["core/train.py"], ["-m", "core.train"]])
def test_entry_point_runs_both_ways(how, tmp_path):
    proc = subprocess.run([sys.executable, *how, "--imgDir", "a", "--fgDir", "b", "--bgDir", "c", "--alphaDir", "d",
                           "--resume", str(tmp_path / "nope.pth")], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == f"error: --resume {tmp_path / 'nope.pth'}: no such checkpoint file\n"


def test_every_flag_but_log_passes_through_torchrun():
    from torch.distributed.run import get_args_parser

    opts = sorted({o for a in train.build_parser()._actions for o in a.option_strings if o.startswith("--")})
    assert "--logFile" in opts and "--max_size" in opts
    runner = get_args_parser()
    for opt in opts:
        if opt in ("--log", "--help"):
            continue
        parsed = runner.parse_args(["--nproc_per_node=2", "core/train.py", f"{opt}=1"])
        assert parsed.training_script_args == [f"{opt}=1"], opt
    with pytest.raises(SystemExit):  # torchrun claims --log… for itself (ambiguous abbreviation)
        runner.parse_args(["--nproc_per_node=2", "core/train.py", "--log=x.txt"])


PROBE = """
import json, os, signal, sys
sys.path.insert(0, {root!r})
import torch
import torch.distributed as dist
import core.train as T
from core import data
from core.checkpoint import unwrap
from core.utils import run_cli
from tests.tiny_model import tiny_build_model

T.build_model = tiny_build_model  # the orchestration under test does not depend on the network's size
seen, calls = [], [0]
real_getitem, real_loss, real_run = data.CompositedDataset.__getitem__, T.stage_loss, T.Trainer.run


def getitem(self, i):
    seen.append((self.epoch, int(i)))
    return real_getitem(self, i)


def loss(*a, **k):  # rank 1 alone is stopped, in its first iteration of epoch 2
    calls[0] += 1
    if calls[0] == {stop_at} and os.environ["RANK"] == "1":
        os.kill(os.getpid(), signal.SIGTERM)
    return real_loss(*a, **k)


def run(self):
    status = real_run(self)
    torch.save({{k: v.detach().clone() for k, v in unwrap(self.model).state_dict().items()}},
               {out!r} + f"/rank{{self.rank}}.pt")
    with open({out!r} + f"/rank{{self.rank}}.json", "w") as f:
        json.dump({{"status": status, "seen": seen, "calls": calls[0]}}, f)
    dist.barrier()  # both results written before either process exits
    return 0


data.CompositedDataset.__getitem__, T.stage_loss, T.Trainer.run = getitem, loss, run
run_cli(T.main)
"""


def test_two_process_gloo_run(tmp_path):
    """Two ranks split each epoch's samples between them, train the same weights, and stop together."""
    six = write_dataset(tmp_path / "data", n_train=6)
    probe = tmp_path / "probe.py"
    probe.write_text(textwrap.dedent(PROBE.format(root=str(ROOT), out=str(tmp_path), stop_at=4)))
    save = tmp_path / "ddp"
    log = tmp_path / "ddp.log"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(probe),
           *base_args(six, save, "--nEpochs", "3", "--dist_timeout", "1", f"--logFile={log}")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    # epoch 1: each rank gets 3 of the 6 samples, none twice, none left out
    e1 = [sorted(i for e, i in r["seen"] if e == 1) for r in (r0, r1)]
    assert len(e1[0]) == len(e1[1]) == 3 and sorted(e1[0] + e1[1]) == list(range(6))
    # rank 1's SIGTERM stops both ranks after the same iteration (epoch 2, iteration 1): 3 + 1 steps each
    assert r0["status"] == r1["status"] == 143 and r0["calls"] == r1["calls"] == 4
    w0, w1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert tensors_equal(w0, w1)
    raw = torch.load(save / "ckpt_last.pth", weights_only=True)
    assert all(not k.startswith("module.") for k in raw["state_dict"])
    assert raw["epoch"] == 2 and raw["train_state"]["iteration"] == 0 and raw["train_state"]["world_size"] == 2
    assert tensors_equal(raw["state_dict"], w0) and raw["config"]["world_size"] == 2
    text = log.read_text()
    assert "2 process(es)" in text and "3 iterations per epoch and process" in text
    assert "stopped by SIGTERM" in text


def test_train_sh_passes_the_reference_settings(tmp_path):
    root = tmp_path / "Combined_Dataset"
    for sub in ("image", "fg", "bg", "alpha"):
        (root / "Training_set" / "comp" / sub).mkdir(parents=True)
    (root / "Test_set" / "comp" / "image").mkdir(parents=True)
    # prints the command line instead of training; the device choice (`-m core.utils device …`) runs the real
    # core.utils with a GPU seen when STUB_GPU=0
    probe = ("import os, sys, core.utils as u; "
             "u.script_device.__defaults__ = (lambda: os.environ.get('STUB_GPU', '1') == '0',); "
             "u.run_cli(u._device_command, sys.argv[3:])")
    stub = tmp_path / "python"
    stub.write_text(f"#!/bin/sh\nif [ \"$1\" = -m ] && [ \"$2\" = core.utils ]; then\n"
                    f"  exec {sys.executable} -c \"{probe}\" \"$@\"\nfi\n"
                    "for a in \"$@\"; do echo \"$a\"; done\n")
    stub.chmod(0o755)

    def sh(*extra, **env):
        e = {k: v for k, v in os.environ.items()
             if k not in ("DATA_ROOT", "PRETRAIN", "NPROC", "CUDA", "STAGE", "COCO_DIR", "CACHE_DIR", "THREADS")}
        e.update(PYTHON=str(stub), **env)
        return subprocess.run(["bash", str(ROOT / "train.sh"), *extra, "--nEpochs=2"], capture_output=True, text=True,
                              env=e, cwd=tmp_path, timeout=60)

    proc = sh()
    assert proc.returncode == 2 and "DATA_ROOT" in proc.stderr
    proc = sh(DATA_ROOT=str(root), PRETRAIN="", SAVE_DIR="runs/s1", STUB_GPU="0")  # CUDA unset, a GPU: --cuda
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines()[0] == "train.sh: training on the GPU (torch sees one; CUDA=0 for the CPU)"
    args = proc.stdout.split("\n")
    assert args[0] == str(ROOT / "core" / "train.py") and args[-2] == "--nEpochs=2"
    for flag in ("--crop_h=320,480,640", "--size_h=320", "--batchSize=1", "--nEpochs=12", "--step=-1", "--lr=0.00001",
                 "--wl_weight=0.5", "--threads=4", "--printFreq=10", "--ckptSaveFreq=1", "--seed=123", "--stage=1",
                 "--cuda", "--testFreq=1", "--max_size=1600", "--crop_or_resize=whole", "--saveDir=runs/s1",
                 "--logFile=runs/s1/train.log", f"--imgDir={root}/Training_set/comp/image",
                 f"--testImgDir={root}/Test_set/comp/image"):
        assert flag in args, flag
    assert not any(a.startswith("--pretrain") for a in args)
    # the flags parse as core/train.py's (the trailing --nEpochs=2 wins)
    parsed = train.build_parser().parse_args(args[1:-1])
    assert (parsed.nEpochs, parsed.lr, parsed.stage, parsed.log) == (2, 1e-5, 1, "runs/s1/train.log")
    proc = sh(DATA_ROOT=str(root), PRETRAIN="", NPROC="2", CUDA="0", STAGE="3")
    args = proc.stdout.split("\n")
    assert args[:4] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert "--cuda" not in args and "--stage=3" in args
    proc = sh(DATA_ROOT=str(root), PRETRAIN="", CUDA="0", CACHE_DIR="cache dir", THREADS="auto")
    args = proc.stdout.split("\n")
    assert proc.returncode == 0 and "--cache_dir=cache dir" in args and "--threads=auto" in args
    assert train.build_parser().parse_args(args[1:-1]).threads == "auto"
    # CUDA unset and no GPU: the CPU, said first; CUDA=1 without a GPU names the setting
    proc = sh(DATA_ROOT=str(root), PRETRAIN="")
    assert proc.returncode == 0 and "--cuda" not in proc.stdout.split("\n")
    assert proc.stderr.splitlines()[0] == "train.sh: training on the CPU (torch sees no GPU)"
    proc = sh(DATA_ROOT=str(root), PRETRAIN="", CUDA="1")
    assert proc.returncode == 2 and proc.stdout == "" and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: CUDA=1 but torch sees no CUDA device") and "--cuda" not in proc.stderr
    # --online: the Adobe set and COCO instead of Training_set/comp, which it does not need
    online = tmp_path / "online" / "Combined_Dataset"
    (online / "Training_set").mkdir(parents=True)
    proc = sh("--online", DATA_ROOT=str(online), PRETRAIN="", CUDA="0", COCO_DIR="coco")
    assert proc.returncode == 0, proc.stderr
    args = proc.stdout.split("\n")
    assert "--online" in args and f"--adobeDir={online}" in args and "--cocoDir=coco" in args
    assert not any(a.startswith(("--imgDir", "--fgDir", "--bgDir", "--alphaDir")) for a in args)
    proc = sh("--online", DATA_ROOT=str(online), PRETRAIN="", CUDA="0")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "COCO_DIR=DIR or pass --cocoDir" in proc.stderr
    proc = sh(DATA_ROOT=str(online), PRETRAIN="", CUDA="0")  # offline without composites: says what online needs
    assert proc.returncode == 2 and "Training_set/comp/image is missing" in proc.stderr and "--online" in proc.stderr
    if not (ROOT / "model" / "stage1" / "ckpt_best.pth").exists():  # stage 2's default --pretrain
        proc = sh(DATA_ROOT=str(root), STAGE="2")
        assert proc.returncode == 2 and "train stage 1 first" in proc.stderr


def test_a_second_run_into_the_same_save_dir_is_refused_and_overwrite_replaces_it(straight, dataset, tmp_path,
                                                                                 capsys):
    """The straight run's files are another run's: refused in one line, byte for byte untouched."""
    before = {p.name: p.read_bytes() for p in straight.iterdir() if p.is_file()}
    run_id = json.loads((straight / "config.json").read_text())["run_id"]
    assert read_checkpoint(straight / "ckpt_best.pth")["config"]["run_id"] == run_id
    assert f"(new best of run {run_id})" in (straight / "train.log").read_text()
    with pytest.raises(SystemExit) as exc:
        run_cli(train.main, base_args(dataset, straight, "--nEpochs", "1"))
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err == (f"error: {straight} holds the files of run {run_id} (ckpt_best.pth, ckpt_e2.pth, ckpt_last.pth, "
                   f"config.json): continue it with --resume {straight / 'ckpt_last.pth'}, choose another --saveDir "
                   "(train.sh: SAVE_DIR=DIR), or pass --overwrite to replace them\n")
    assert {p.name: p.read_bytes() for p in straight.iterdir() if p.is_file()} == before
    # a checkpoint of another run cannot be resumed into it either
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"run_id": "20000101-000000-abcdef"}))
    with pytest.raises(UserError, match=rf"^--resume .*ckpt_last.pth is a checkpoint of run {run_id}, but {other} "
                                        "holds the files of run 20000101-000000-abcdef: resume into another"):
        train.main(base_args(dataset, other, "--nEpochs", "1", "--resume", str(straight / "ckpt_last.pth")))
    # --overwrite: the earlier run's checkpoints and config go, a new run id is written everywhere
    (other / "ckpt_e7.pth").write_bytes(b"old")
    (other / "ckpt_best.pth").write_bytes(b"old")
    assert train.main(base_args(dataset, other, "--nEpochs", "1", "--overwrite")) == 0
    assert sorted(p.name for p in other.iterdir()) == ["ckpt_last.pth", "config.json", "train.log"]
    new_id = json.loads((other / "config.json").read_text())["run_id"]
    assert new_id not in (run_id, "20000101-000000-abcdef")
    assert read_checkpoint(other / "ckpt_last.pth")["config"]["run_id"] == new_id
    log = (other / "train.log").read_text()
    assert ("--overwrite: removed ckpt_best.pth, ckpt_e7.pth, config.json of run 20000101-000000-abcdef from "
            f"{other}") in log and f"run {new_id} (new) in {other}" in log
