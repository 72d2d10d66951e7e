import collections
import io
import os
import pickle
import pickletools
import subprocess
import sys

import numpy as np
import pytest
import torch

from core.checkpoint import load_model, load_partial, read_checkpoint, save_checkpoint
from core.network import DIMNet
from core.utils import UserError
from tests.conftest import ROOT
from tests.py2_legacy import save_py2_legacy


@pytest.fixture(scope="module")
def small_state():
    torch.manual_seed(1)
    return DIMNet(conv6_kernel=1).state_dict()


def test_python2_legacy_checkpoint_loads_exactly(tmp_path, small_state):
    path = tmp_path / "stage1_sad_57.1.pth"
    state = collections.OrderedDict(small_state)
    save_py2_legacy({"state_dict": state, "epoch": 12, "best_sad": np.float64(57.1234)}, path)
    raw = path.read_bytes()
    assert raw[:2] == b"\x80\x02" and b"PK\x03\x04" not in raw[:4]
    assert b"U\nstate_dict" in raw  # SHORT_BINSTRING, the way Python 2 wrote str
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):  # torch.load refuses the numpy scalar
        torch.load(path, weights_only=True)
    ckpt = read_checkpoint(path)
    assert ckpt["epoch"] == 12 and type(ckpt["best_sad"]) is float and ckpt["best_sad"] == 57.1234
    assert list(ckpt["state_dict"]) == list(state)
    assert all(torch.equal(ckpt["state_dict"][k], v) for k, v in state.items())
    model, info = load_model(path, stage=1)
    assert info["arch"] == {"conv6_kernel": 1, "refine": False, "skip": False}
    assert info["skip_source"] == "release file name"


def test_long_binstring_and_shared_storage(tmp_path):
    # A >255-byte string takes the BINSTRING opcode; views share one storage.
    base = torch.arange(10.0)
    obj = {"state_dict": {"a" * 300: base[2:5], "b": base}, "epoch": 1}
    save_py2_legacy(obj, tmp_path / "x.pth")
    ckpt = read_checkpoint(tmp_path / "x.pth")
    assert torch.equal(ckpt["state_dict"]["a" * 300], torch.tensor([2.0, 3.0, 4.0]))
    assert torch.equal(ckpt["state_dict"]["b"], base)


class Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.mark.parametrize("legacy", [True, False])
def test_code_in_pickle_is_refused_and_never_runs(tmp_path, legacy, monkeypatch):
    monkeypatch.chdir(tmp_path)
    obj = {"state_dict": {"conv1_1.weight": torch.zeros(1)}, "epoch": Payload()}
    path = tmp_path / "evil.pth"
    if legacy:
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        torch.save(obj, path)
    with pytest.raises(UserError, match="refusing to load") as err:
        read_checkpoint(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])  # DDP, torch.compile, both
def test_bare_state_dict_with_wrapper_prefixes(tmp_path, small_state, prefix):
    if prefix != "module.":  # the names are what matters: small tensors keep this fast
        torch.save({prefix + k: torch.full((1,), float(i)) for i, k in enumerate(small_state)}, tmp_path / "c.pth")
        state = read_checkpoint(tmp_path / "c.pth")["state_dict"]
        assert list(state) == list(small_state) and state["conv1_2.weight"].item() == 2
        return
    torch.save({prefix + k: v for k, v in small_state.items()}, tmp_path / "ddp.pth")
    assert list(read_checkpoint(tmp_path / "ddp.pth")["state_dict"]) == list(small_state)
    model, info = load_model(tmp_path / "ddp.pth", skip=False)
    assert info["skip_source"] == "command line" and not model.skip
    assert torch.equal(model.state_dict()["deconv1.weight"], small_state["deconv1.weight"])


def test_our_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = DIMNet(refine=True, skip=False, conv6_kernel=3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    path = tmp_path / "ckpt_e3.pth"
    save_checkpoint(path, model, epoch=4, best_sad=np.float64(51.5), optimizer=opt, config={"lr": 1e-5})
    raw = torch.load(path, weights_only=True)  # plain torch can read it safely
    assert raw["epoch"] == 4 and raw["best_sad"] == 51.5 and type(raw["best_sad"]) is float
    assert raw["arch"] == {"refine": True, "skip": False, "conv6_kernel": 3}
    assert raw["config"] == {"lr": 1e-5} and raw["format_version"] == 1
    assert not any(k.startswith("module.") for k in raw["state_dict"])
    loaded, info = load_model(path, stage=3)
    assert info["skip_source"] == "checkpoint metadata" and info["epoch"] == 4
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    opt2 = torch.optim.Adam(loaded.parameters(), lr=1e-5)
    opt2.load_state_dict(raw["optimizer"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert sorted(os.listdir(tmp_path)) == ["ckpt_e3.pth"]  # no temporary file left beside it


def test_save_is_atomic_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    model = DIMNet(conv6_kernel=1)
    save_checkpoint(path, model, epoch=1, best_sad=10.0)
    before = path.read_bytes()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, epoch=2, best_sad=9.0)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["ckpt.pth"]


def test_errors_name_the_file(tmp_path, small_state):
    with pytest.raises(UserError, match="no such checkpoint"):
        read_checkpoint(tmp_path / "missing.pth")
    good = tmp_path / "good.pth"
    torch.save({"state_dict": small_state, "epoch": 1}, good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UserError, match="cut.pth: truncated or corrupt"):
        read_checkpoint(cut)
    legacy = tmp_path / "legacy.pth"
    save_py2_legacy({"state_dict": small_state, "epoch": 1}, legacy)
    cut_legacy = tmp_path / "cut_legacy.pth"
    cut_legacy.write_bytes(legacy.read_bytes()[:-1000])
    with pytest.raises(UserError, match="cut_legacy.pth: truncated or corrupt"):
        read_checkpoint(cut_legacy)
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(UserError, match="not a PyTorch checkpoint"):
        read_checkpoint(text)


def test_torchvision_vgg_is_recognised(tmp_path):
    vgg = {"features.0.weight": torch.zeros(64, 3, 3, 3), "classifier.0.weight": torch.zeros(2, 2)}
    torch.save(vgg, tmp_path / "vgg16-397923af.pth")
    with pytest.raises(UserError, match="torchvision's ImageNet VGG-16.*chg_model"):
        load_model(tmp_path / "vgg16-397923af.pth")


def test_mismatched_stage_and_shapes(tmp_path, small_state):
    path = tmp_path / "s1.pth"
    torch.save({"state_dict": small_state}, path)
    with pytest.raises(UserError, match="needs a refinement head"):
        load_model(path, stage=2)
    torch.manual_seed(2)
    refined = DIMNet(refine=True, conv6_kernel=1).state_dict()
    torch.save({"state_dict": refined}, path)
    for stage in (0, 1):
        with pytest.raises(UserError, match=f"s1.pth: the file holds a refinement head .* that --stage {stage} "
                                            "would ignore: use --stage 2 or 3"):
            load_model(path, stage=stage)
    assert load_model(path, stage=2)[1]["arch"]["refine"] is True
    bad = dict(small_state)
    bad["deconv5_1.weight"] = torch.zeros(512, 512, 3, 3)
    del bad["deconv4_1.bias"]
    bad["extra.weight"] = torch.zeros(1)
    torch.save({"state_dict": bad}, path)
    with pytest.raises(UserError) as err:
        load_model(path)
    msg = str(err.value)
    assert "missing deconv4_1.bias" in msg and "unexpected extra.weight" in msg and "deconv5_1.weight (512, 512, 3, 3)" in msg


def test_load_partial_reports(tmp_path):
    enc = {"conv1_1.weight": torch.ones(64, 4, 3, 3), "conv6_1.weight": torch.ones(512, 512, 1, 1), "foo": torch.ones(1)}
    torch.save({"state_dict": enc, "epoch": 0}, tmp_path / "p.pth")
    model = DIMNet(conv6_kernel=3)
    with pytest.raises(UserError, match="conv6_1.weight .*--conv6_kernel 1"):
        load_partial(model, tmp_path / "p.pth")
    loaded, random, skipped = load_partial(model, tmp_path / "p.pth", partial=True)
    assert loaded == ["conv1_1.weight"] and torch.equal(model.conv1_1.weight, enc["conv1_1.weight"])
    assert "conv6_1.weight" in random and set(skipped) == {"conv6_1.weight", "foo"}
    torch.save({"x": torch.ones(1)}, tmp_path / "none.pth")
    with pytest.raises(UserError, match="no weight of this file fits"):
        load_partial(model, tmp_path / "none.pth")


def test_load_partial_refuses_missing_encoder_keys(tmp_path):
    """STYLE §8: a start without some encoder tensor is refused unless partial loading is asked for."""
    torch.manual_seed(2)
    full = DIMNet(conv6_kernel=1).state_dict()
    encoder = {k: v for k, v in full.items() if k.startswith("conv") and not k.startswith("conv6")}
    assert len(encoder) == 26  # 13 convolutions, weight and bias
    torch.save({"state_dict": encoder}, tmp_path / "enc.pth")
    model = DIMNet(conv6_kernel=1)
    loaded, random, skipped = load_partial(model, tmp_path / "enc.pth")  # the whole encoder: accepted
    assert loaded == sorted(encoder) and not skipped and "conv6_1.weight" in random
    without = {k: v for k, v in encoder.items() if not k.startswith("conv5_3")}
    torch.save({"state_dict": without}, tmp_path / "part.pth")
    model = DIMNet(conv6_kernel=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError) as err:
        load_partial(model, tmp_path / "part.pth")
    assert str(err.value) == (f"{tmp_path / 'part.pth'}: 2 encoder tensor(s) of the network are not in the file: "
                              "conv5_3.bias, conv5_3.weight (they would keep their random initialisation) "
                              "(or --pretrain_partial to load only what fits)")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing loaded
    warned = []
    loaded, random, _ = load_partial(model, tmp_path / "part.pth", partial=True, warn=warned.append)
    assert loaded == sorted(without) and {"conv5_3.weight", "conv5_3.bias"} <= set(random)
    assert len(warned) == 1 and "conv5_3.bias, conv5_3.weight" in warned[0]
    assert torch.equal(model.conv5_2.weight, full["conv5_2.weight"])


def test_cli_error_is_one_line(tmp_path):
    code = "from core.checkpoint import load_model; from core.utils import run_cli; run_cli(lambda a: load_model('nope.pth'))"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr == "error: nope.pth: no such checkpoint file\n"


@pytest.mark.parametrize("name", ["stage0_norm_e12_sad_69.1.pth", "my_stage0_sad_72.9.pth"])
def test_unsupported_early_releases_are_refused(tmp_path, name):
    torch.save({"state_dict": {"conv1_1.weight": torch.zeros(1)}, "epoch": 12}, tmp_path / name)  # refused by name
    with pytest.raises(UserError, match=f"{name}: this early release came from code whose input handling "
                                        "differed; it is not supported"):
        load_model(tmp_path / name)


def test_encoder_only_file_is_explained(tmp_path, small_state):
    # VGG-16's 13 convolutions, as tools/chg_model.py writes them (conv6_1 is not VGG's)
    encoder = {k: v[:1] for k, v in small_state.items() if k.startswith("conv") and not k.startswith("conv6")}
    torch.save(encoder, tmp_path / "vgg_state_dict.pth")
    with pytest.raises(UserError, match=r"vgg_state_dict.pth: this holds only VGG-16 encoder weights \(as written "
                                        r"by tools/chg_model.py\), not a trained matting model; use it for "
                                        r"training with --pretrain"):
        load_model(tmp_path / "vgg_state_dict.pth")


def test_zip_checkpoint_with_numpy_scalars(tmp_path):
    # numpy-era scripts store best_sad/epoch as numpy scalars; torch.save keeps them as such
    path = tmp_path / "np.pth"
    torch.save({"state_dict": {"conv1_1.weight": torch.ones(2)}, "epoch": np.int64(7), "best_sad": np.float64(52.99),
                "loss": np.float32(0.25)}, path)
    ckpt = read_checkpoint(path)
    assert ckpt["epoch"] == 7 and type(ckpt["epoch"]) is int
    assert ckpt["best_sad"] == 52.99 and type(ckpt["best_sad"]) is float and ckpt["loss"] == np.float32(0.25)


# --------------------------------------------------------------------------- #
# The legacy reader's refusals, on files spliced from a valid legacy file

def split_legacy(raw):
    """A legacy file's five pickles (magic, protocol, sys info, object, storage keys) and the storage bytes."""
    f = io.BytesIO(raw)
    parts = []
    for _ in range(5):
        start = f.tell()
        for _op in pickletools.genops(f):  # reads up to and including this pickle's STOP
            pass
        parts.append(raw[start:f.tell()])
    return parts, raw[f.tell():]


@pytest.fixture
def legacy_parts(tmp_path):
    save_py2_legacy({"state_dict": {"w": torch.arange(6.0)}, "epoch": 1}, tmp_path / "ok.pth")
    parts, storage = split_legacy((tmp_path / "ok.pth").read_bytes())
    assert read_checkpoint(tmp_path / "ok.pth")["epoch"] == 1  # the unspliced file loads
    return parts, storage


def write_parts(path, parts, storage):
    path.write_bytes(b"".join(parts) + storage)
    return path


class BuildOnScalar:
    """Pickles as an allowed global (numpy's scalar) followed by BUILD on the float it returns."""

    def __reduce__(self):
        return (np.float64(0).__reduce__()[0], (np.dtype("f8"), np.float64(1.5).tobytes()), {"attr": 1})


@pytest.mark.parametrize("case, match", [
    ("text dtype", r"refusing to load: unpickling it would call numpy dtype 'U1' is not allowed"),
    ("build on a scalar", r"refusing to load: unpickling it would call BUILD on float64"),
    ("storage size", r"corrupt checkpoint \(storage \w+: 7 elements, expected 6\)"),
    ("big-endian", r"corrupt checkpoint \(big-endian files are not supported\)"),
])
def test_legacy_reader_refusals(tmp_path, legacy_parts, case, match):
    parts, storage = legacy_parts
    parts = list(parts)
    if case == "text dtype":
        save_py2_legacy({"state_dict": {"w": torch.zeros(1)}, "epoch": 1, "best_sad": np.str_("x")}, tmp_path / "x.pth")
        parts, storage = split_legacy((tmp_path / "x.pth").read_bytes())
    elif case == "build on a scalar":
        save_py2_legacy({"state_dict": {"w": torch.zeros(1)}, "epoch": BuildOnScalar()}, tmp_path / "x.pth")
        parts, storage = split_legacy((tmp_path / "x.pth").read_bytes())
    elif case == "storage size":
        storage = (7).to_bytes(8, "little") + storage[8:]
    else:
        info = pickle.loads(parts[2])
        assert info["little_endian"] is True
        parts[2] = pickle.dumps(dict(info, little_endian=False), protocol=2)
    path = write_parts(tmp_path / "spliced.pth", parts, storage)
    with pytest.raises(UserError, match=match) as err:
        read_checkpoint(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)
