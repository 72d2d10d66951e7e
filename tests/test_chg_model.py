import hashlib
import subprocess
import sys

import pytest
import torch
import torchvision

from core.checkpoint import load_partial, read_checkpoint
from core.network import DIMNet
from core.utils import UserError
from tests.conftest import ROOT
from tools import chg_model

CONV_INDICES = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]  # written out by hand from torchvision
NAMES = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
         "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3"]


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    torch.manual_seed(0)
    model = torchvision.models.vgg16(weights=None)
    state = model.state_dict()
    path = tmp_path_factory.mktemp("vgg") / "vgg16.pth"
    torch.save(state, path)
    return path, {k: v for k, v in state.items() if k.startswith("features.")}


def test_indices_derived_from_config_match_torchvision():
    convs = [i for i, m in enumerate(torchvision.models.vgg16(weights=None).features) if isinstance(m, torch.nn.Conv2d)]
    assert chg_model.vgg16_conv_indices() == convs == CONV_INDICES


def test_conversion_maps_every_conv_and_zero_fourth_channel(vgg_file, tmp_path, capsys):
    path, features = vgg_file
    out = tmp_path / "vgg_state_dict.pth"
    assert chg_model.main(["--vgg", str(path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "features.28.weight" in printed and "conv5_3.weight" in printed
    ckpt = read_checkpoint(out)
    assert ckpt["epoch"] == 0 and len(ckpt["state_dict"]) == 26
    for idx, name in zip(CONV_INDICES, NAMES):
        w = ckpt["state_dict"][f"{name}.weight"]
        src = features[f"features.{idx}.weight"]
        assert torch.equal(ckpt["state_dict"][f"{name}.bias"], features[f"features.{idx}.bias"])
        if name == "conv1_1":
            assert w.shape == (64, 4, 3, 3)
            assert torch.equal(w[:, :3], src) and torch.count_nonzero(w[:, 3]) == 0
        else:
            assert torch.equal(w, src)
    model = DIMNet()
    loaded, random, skipped = load_partial(model, out)
    assert len(loaded) == 26 and not skipped
    assert set(random) == {k for k in model.state_dict() if not k.startswith(tuple(NAMES))}


def test_wrong_file_and_hash(vgg_file, tmp_path):
    path, features = vgg_file
    bad = dict(features)
    bad["features.5.weight"] = torch.zeros(128, 64, 5, 5)
    torch.save(bad, tmp_path / "bad.pth")
    r = subprocess.run([sys.executable, "tools/chg_model.py", "--vgg", str(tmp_path / "bad.pth"), "--out",
                        str(tmp_path / "o.pth")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "features.5.weight has shape (128, 64, 5, 5)" in r.stderr
    assert r.stderr.count("\n") == 1 and not (tmp_path / "o.pth").exists()
    # A file named like torchvision's download must carry the SHA-256 its name promises.
    named = tmp_path / "vgg16-397923af.pth"
    named.write_bytes(b"x")
    with pytest.raises(UserError, match="SHA-256 does not start with 397923af"):
        chg_model.check_hash(str(named))
    digest = hashlib.sha256(b"x").hexdigest()[:8]
    ok = tmp_path / f"vgg16-{digest}.pth"
    ok.write_bytes(b"x")
    assert chg_model.check_hash(str(ok)) == digest


def test_missing_file_says_where_to_put_it(tmp_path):
    env = {"TORCH_HOME": str(tmp_path / "th"), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "tools.chg_model"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert r.returncode == 2
    assert str(tmp_path / "th" / "hub" / "checkpoints" / "vgg16-397923af.pth") in r.stderr
    assert "download.pytorch.org/models/vgg16-397923af.pth" in r.stderr
    assert not (tmp_path / "th").exists()  # nothing downloaded or created silently
