"""core/train.py's orchestration with a tiny stand-in network (tests/tiny_model.py).

Resume with batches, the learning-rate schedule in force, every resume refusal,
pending tests, non-finite weights, stopping, AMP scaler state: behaviours that
do not depend on the network's size, so each run here takes well under a second.
tests/test_train.py checks the same code with the real network.
"""

import os
import signal

import pytest
import torch

import core.train as train
from core import data
from core.checkpoint import read_checkpoint, save_checkpoint
from core.utils import UserError, setup_logging
from tests.test_train import LossSpy, base_args, tensors_equal, write_dataset
from tests.tiny_model import TinyDIM, tiny_build_model


@pytest.fixture(autouse=True)
def tiny(monkeypatch):
    monkeypatch.setattr(train, "build_model", tiny_build_model)


@pytest.fixture(scope="module")
def data4(tmp_path_factory):
    """Four training samples (and the one-image test set)."""
    return write_dataset(tmp_path_factory.mktemp("data4"), n_train=4)


@pytest.fixture
def seen(monkeypatch):
    """The dataset indices loaded, in order (the runs load in the main process: --threads 0)."""
    indices = []
    real = data.CompositedDataset.__getitem__

    def getitem(self, i):
        indices.append(int(i))
        return real(self, i)

    monkeypatch.setattr(data.CompositedDataset, "__getitem__", getitem)
    return indices


def test_resume_mid_epoch_with_batches_continues_at_the_next_sample(data4, seen, tmp_path, monkeypatch):
    save = tmp_path / "run"
    args = base_args(data4, save, "--nEpochs", "1", "--batchSize", "2")
    monkeypatch.setattr(train, "stage_loss", LossSpy(at=2, action="sigterm"))  # stop in iteration 2 of 2
    assert train.main(args) == 143
    order = list(seen)  # the epoch's order: iteration 1 (kept) and 2 (discarded by the stop)
    assert sorted(order) == [0, 1, 2, 3]
    stopped = read_checkpoint(save / "ckpt_last.pth")
    assert stopped["train_state"]["iteration"] == 1 and stopped["train_state"]["batchSize"] == 2
    stopped_path = tmp_path / "stopped.pth"
    stopped_path.write_bytes((save / "ckpt_last.pth").read_bytes())
    monkeypatch.setattr(train, "stage_loss", LossSpy())

    seen.clear()
    assert train.main(args + ["--resume", str(stopped_path)]) == 0
    assert seen == order[2:]  # the second batch only: 1 iteration × 2 samples were done

    # another batch size, or another process count, cannot continue mid-epoch: the epoch restarts
    log = save / "train.log"
    seen.clear()
    assert train.main(base_args(data4, save, "--nEpochs", "1", "--resume", str(stopped_path))) == 0
    assert seen == order
    assert "with another process count or batch size: that epoch restarts from its beginning" in log.read_text()
    other_world = tmp_path / "world2.pth"
    ckpt = torch.load(stopped_path, weights_only=True)
    ckpt["train_state"]["world_size"] = 2
    torch.save(ckpt, other_world)
    seen.clear()
    assert train.main(args + ["--resume", str(other_world)]) == 0
    assert seen == order
    assert log.read_text().count("that epoch restarts from its beginning") == 2


def test_the_step_schedule_sets_the_optimizer_lr(data4, tmp_path, monkeypatch):
    lrs = []
    real_step = torch.optim.Adam.step

    def step(self, *a, **k):
        lrs.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    save = tmp_path / "lr"
    assert train.main(base_args(data4, save, "--nEpochs", "2", "--step", "2", "--lr", "1e-3",
                                "--ckptSaveFreq", "1")) == 0
    assert lrs == pytest.approx([1e-3] * 4 + [1e-4] * 4, rel=1e-12)
    assert read_checkpoint(save / "ckpt_last.pth")["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-4)
    assert "Stage1-Epoch[2/2](4/4) Lr:0.00010000" in (save / "train.log").read_text()
    # resuming into the decayed epochs: the checkpoint's optimizer holds 1e-3, epoch 2 runs at 1e-4
    lrs.clear()
    assert train.main(base_args(data4, save, "--nEpochs", "2", "--step", "2", "--lr", "1e-3",
                                "--resume", str(save / "ckpt_e1.pth"))) == 0
    assert lrs == pytest.approx([1e-4] * 4, rel=1e-12)


def make_trainer(d, save, *extra):
    args = train.parse_args(base_args(d, save, *extra))
    return train.Trainer(args, 0, 1, torch.device("cpu"), setup_logging(args.log, 0))


def test_non_finite_weights_are_never_saved(data4, tmp_path):
    trainer = make_trainer(data4, tmp_path / "nan")
    trainer.build()
    assert trainer.save("ok.pth", 2) == str(tmp_path / "nan" / "ok.pth")
    with torch.no_grad():
        trainer.model.deconv1.weight[0, 0, 1, 1] = float("inf")
    assert trainer.save("bad.pth", 2) is None
    trainer.last_ckpt = "ok.pth"
    with pytest.raises(UserError, match=r"the weights hold NaN or inf after epoch 1: training diverged .*"
                                        r"last good checkpoint: ok.pth"):
        trainer.end_epoch(1)
    assert sorted(os.listdir(tmp_path / "nan")) == ["ok.pth", "train.log"]
    assert "not writing " + str(tmp_path / "nan" / "bad.pth") + ": the weights hold NaN or inf" in \
        (tmp_path / "nan" / "train.log").read_text()


@pytest.mark.parametrize("saved, flags, match", [
    ({"refine": True}, ["--stage", "1"], r"the file holds a refinement head \(refine_\* weights, a stage 2/3 "
                                         r"model\) that --stage 1 would ignore: use --stage 2 or 3"),
    ({"refine": False}, ["--stage", "3"], r"--stage 3 needs a refinement head, but the file has no refine_\* "
                                          r"weights \(a stage 0/1 model\): use --stage 1, or train stage 2 from it "
                                          r"with --pretrain"),
    ({"skip": False}, [], r"was trained without skip connections \(checkpoint metadata\): resume with --no_skip"),
    ({"skip": True}, ["--no_skip"], r"was trained with skip connections \(checkpoint metadata\): resume with --skip"),
    ({"epoch": None}, [], r"no epoch stored \(a bare state dict\?\): start from it with --pretrain instead"),
    ({"optimizer": "other"}, [], r"its optimizer state does not fit this model"),
])
def test_resume_refusals(data4, tmp_path, saved, flags, match):
    model = TinyDIM(refine=saved.get("refine", False), skip=saved.get("skip", True))
    path = tmp_path / "ckpt.pth"
    opt = None
    if saved.get("optimizer"):  # Adam over one tensor only: its parameter group does not fit the model
        opt = torch.optim.Adam([model.conv1_1.weight])
    save_checkpoint(path, model, epoch=2, best_sad=None, optimizer=opt)
    if "epoch" in saved:
        torch.save({"state_dict": model.state_dict()}, path)
    with pytest.raises(UserError, match=match) as err:
        train.main(base_args(data4, tmp_path / "out", "--resume", str(path), *flags))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out" / "ckpt_last.pth").exists()


def test_pretrain_beside_resume_is_ignored(data4, tmp_path):
    torch.manual_seed(1)
    save_checkpoint(tmp_path / "resume.pth", TinyDIM(), epoch=2, best_sad=None)
    torch.manual_seed(2)
    save_checkpoint(tmp_path / "pretrain.pth", TinyDIM(), epoch=1, best_sad=None)
    trainer = make_trainer(data4, tmp_path / "out", "--resume", str(tmp_path / "resume.pth"),
                           "--pretrain", str(tmp_path / "pretrain.pth"))
    trainer.build()
    assert tensors_equal(trainer.model.state_dict(), read_checkpoint(tmp_path / "resume.pth")["state_dict"])
    assert trainer.start_epoch == 2
    log = (tmp_path / "out" / "train.log").read_text()
    assert f"--pretrain {tmp_path / 'pretrain.pth'} ignored: --resume {tmp_path / 'resume.pth'} holds the weights" in log
    assert "pretrain " + str(tmp_path / "pretrain.pth") + ": loaded" not in log


def test_a_test_cut_short_by_a_stop_runs_first_on_resume(data4, tmp_path, monkeypatch):
    save = tmp_path / "pt"
    test_flags = ["--testImgDir", data4["test_image"], "--testTrimapDir", data4["test_trimap"],
                  "--testAlphaDir", data4["test_alpha"], "--testFreq", "1"]
    real = train.predict_folder

    def stopped_test(*a, **k):  # SIGTERM arrives as the test starts
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)

    monkeypatch.setattr(train, "predict_folder", stopped_test)
    assert train.main(base_args(data4, save, "--nEpochs", "1", *test_flags)) == 143
    last = read_checkpoint(save / "ckpt_last.pth")
    assert last["epoch"] == 2 and last["train_state"]["pending_test"] is True
    assert not (save / "ckpt_best.pth").exists()
    monkeypatch.setattr(train, "predict_folder", real)
    spy = LossSpy()
    monkeypatch.setattr(train, "stage_loss", spy)
    assert train.main(base_args(data4, save, "--nEpochs", "1", "--resume", str(save / "ckpt_last.pth"),
                                *test_flags)) == 0
    assert spy.calls == 0  # nothing left to train, only the test
    log = (save / "train.log").read_text()
    assert "test after epoch 1 interrupted" in log and "Test epoch 1: SAD" in log
    best = read_checkpoint(save / "ckpt_best.pth")
    assert best["epoch"] == 2 and best["best_sad"] is not None


def test_second_ctrl_c_aborts_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with train.StopRequest() as stop:
        assert not stop()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop() and stop.signum == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)  # a second SIGTERM only repeats the request
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C after a stop request: abort without saving
    with train.StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_amp_scaler_steps_and_its_state_is_saved_and_resumed(data4, tmp_path, monkeypatch):
    # float16 --amp (with its GradScaler) is CUDA only; a CPU GradScaler stands in for the CUDA one
    # (float16 autocast runs on the CPU too), so train_epoch's scaler path and the scaler state in
    # checkpoints run here.
    scale = {"init": 256.0}
    monkeypatch.setattr(torch.amp, "GradScaler",
                        lambda device: torch.amp.grad_scaler.GradScaler("cpu", init_scale=scale["init"]))
    save = tmp_path / "amp"
    trainer = make_trainer(data4, save, "--nEpochs", "1", "--amp")
    trainer.amp, trainer.amp_dtype = True, torch.float16
    assert trainer.run() == 0
    state = read_checkpoint(save / "ckpt_last.pth")["train_state"]["scaler"]
    assert state["scale"] == 256.0 and state["_growth_tracker"] == 4  # 4 scaled steps without inf
    scale["init"] = 1.0
    resumed = make_trainer(data4, save, "--nEpochs", "1", "--amp", "--resume", str(save / "ckpt_last.pth"))
    resumed.amp, resumed.amp_dtype = True, torch.float16
    resumed.build()
    assert resumed.scaler.get_scale() == 256.0 and resumed.scaler.state_dict()["_growth_tracker"] == 4
    # without a GPU, --amp alone trains in bfloat16 (float32's range: no scaler) and says so
    cpu = make_trainer(data4, tmp_path / "cpu", "--nEpochs", "1", "--amp")
    assert cpu.run() == 0 and cpu.scaler is None
    assert "mixed precision (torch.bfloat16)" in (tmp_path / "cpu" / "train.log").read_text()
    assert read_checkpoint(tmp_path / "cpu" / "ckpt_last.pth")["train_state"]["scaler"] is None
