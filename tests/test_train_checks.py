"""train.py checks what it is given: --pretrain fit, size flags, a reference checkpoint's best_sad.

Each case runs the real entry point and checks the exit status, the one-line
message and that nothing was written.
"""

import logging
import subprocess
import sys

import pytest
import torch

import core.train as train
from core.network import ENCODER_NAMES, DIMNet, build_model
from core.utils import UserError, run_cli
from tests.conftest import ROOT
from tests.test_train import base_args, write_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def encoder_part():
    """conv1_1 of a network (fits any variant) and conv6_1 of a 1×1-conv6 one, small to write."""
    torch.manual_seed(0)
    return {"conv1_1.weight": torch.randn(64, 4, 3, 3), "conv1_1.bias": torch.randn(64),
            "conv6_1.weight": torch.randn(512, 512, 1, 1)}


def run_train(args, cwd=ROOT):
    return subprocess.run([sys.executable, "core/train.py", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def assert_refused(proc, *words, save_dir):
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr
    assert not save_dir.exists()  # no log, no config, no checkpoint


def test_pretrain_that_does_not_fit_stops_before_anything_is_written(dataset, tmp_path, encoder_part):
    # conv6 kernel: the file's 1×1 conv6_1 against the default 3×3
    conv6 = tmp_path / "stage1_conv6_1.pth"
    torch.save({"state_dict": encoder_part, "epoch": 12}, conv6)
    save = tmp_path / "run"
    proc = run_train(base_args(dataset, save, "--pretrain", str(conv6)))
    assert_refused(proc, f"{conv6}: 1 tensor(s) of the file do not fit the network being built: "
                         "conv6_1.weight (512, 512, 1, 1) vs (512, 512, 3, 3) (likely cause: the file was trained "
                         "with --conv6_kernel 1: pass --conv6_kernel 1)", "--pretrain_partial", save_dir=save)
    # skip, from this project's metadata
    meta = tmp_path / "meta.pth"
    torch.save({"state_dict": {k: encoder_part[k] for k in ("conv1_1.weight", "conv1_1.bias")},
                "arch": {"skip": False, "conv6_kernel": 3}, "format_version": 1}, meta)
    proc = run_train(base_args(dataset, save, "--pretrain", str(meta)))
    assert_refused(proc, f"{meta}: it was trained without skip connections (checkpoint metadata) but the network "
                         "being built has them: pass --no_skip", save_dir=save)
    # --pretrain_partial lets the same file through the check (here the run then stops at a missing data folder)
    proc = run_train(base_args(dataset, save, "--pretrain", str(conv6), "--pretrain_partial", "--imgDir",
                               str(tmp_path / "no_images")))
    assert proc.returncode == 2 and "no_images" in proc.stderr and "conv6" not in proc.stderr, proc.stderr


def test_size_flags_are_checked_first(dataset, tmp_path, capsys):
    save = tmp_path / "run"
    proc = run_train(base_args(dataset, save, "--max_size", "1000"))
    assert_refused(proc, "--max_size must be a positive multiple of 32 (the network's input sides are), got 1000",
                   save_dir=save)
    # the other size flags through the same main() in-process (each subprocess costs a torch import)
    for flag, value, words in (("--size_w", "100", "--size_h/--size_w must be positive multiples of 32"),
                               ("--crop_w", "320,abc", "--crop_w='320,abc': expected comma-separated integers"),
                               ("--crop_h", "320,0", "--crop_h='320,0': expected positive integers"),
                               ("--cache_backgrounds", None, "--cache_backgrounds needs --online and --cache_dir")):
        with pytest.raises(SystemExit) as exc:
            run_cli(train.main, base_args(dataset, save, flag, *([] if value is None else [value])))
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.count("\n") == 1 and words in err, err
        assert not save.exists()


def whole_encoder():
    """Zero conv1_1 … conv5_3 weights and biases: what a start must provide (STYLE §8)."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in DIMNet().state_dict().items() if k.rsplit(".", 1)[0] in ENCODER_NAMES}
    return {k: torch.zeros(s) for k, s in shapes.items()}


def test_release_name_tells_the_skip_setting(tmp_path):
    # SPEC §3: stage1_sad_54.4 was trained without skip connections (and a 3×3 conv6)
    release = tmp_path / "stage1_sad_54.4.pth"
    torch.save({"state_dict": whole_encoder(), "epoch": 9}, release)
    with pytest.raises(UserError) as err:
        train.apply_pretrain(build_model(1), str(release), logging.getLogger("test_train_checks"))
    assert str(err.value) == (f"{release}: it was trained without skip connections (release file name) but the "
                              "network being built has them: pass --no_skip (or --pretrain_partial to load only "
                              "what fits)")
    train.apply_pretrain(build_model(1, skip=False), str(release), logging.getLogger("test_train_checks"))


def test_partial_pretrain_loads_what_fits_and_warns(tmp_path, encoder_part, caplog):
    path = tmp_path / "p.pth"
    torch.save({"state_dict": encoder_part, "epoch": 0}, path)
    model = build_model(1)
    log = logging.getLogger("test_train_checks")
    with pytest.raises(UserError, match="conv6_1.weight"):
        train.apply_pretrain(model, str(path), log)
    with caplog.at_level(logging.INFO, logger="test_train_checks"):
        loaded, random, skipped = train.apply_pretrain(model, str(path), log, partial=True)
    assert loaded == ["conv1_1.bias", "conv1_1.weight"] and "conv6_1.weight" in random
    assert skipped == {"conv6_1.weight": "shape (512, 512, 1, 1) vs (512, 512, 3, 3)"}
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 2 and "--conv6_kernel 1" in warning[0]
    assert "24 encoder tensor(s) of the network are not in the file: conv1_2.bias, conv1_2.weight, conv2_1.bias" \
        in warning[1] and "--pretrain_partial: loading only what fits" in warning[1]
    assert torch.equal(model.conv1_1.weight, encoder_part["conv1_1.weight"])


def test_reference_best_sad_is_disregarded_on_resume(dataset, tmp_path):
    torch.manual_seed(0)
    state = DIMNet().state_dict()
    ref = tmp_path / "ref.pth"  # the reference's format: no format_version, whole-image float SAD
    torch.save({"state_dict": state, "epoch": 3, "best_sad": 52990.5}, ref)
    save = tmp_path / "run"
    proc = run_train(base_args(dataset, save, "--resume", str(ref), "--nEpochs", "2"))
    assert proc.returncode == 0, proc.stderr
    log = (save / "train.log").read_text()
    assert (f"{ref}: best_sad 52990.5 is in the reference's format (whole-image float SAD, not the official /1000 "
            "scale): disregarded, the next test sets the best") in log
    assert "continuing at epoch 3, iteration 1, not tested yet" in log and "nothing to do" in log
    assert sorted(p.name for p in save.iterdir()) == ["config.json", "train.log"]
