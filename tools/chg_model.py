"""Convert torchvision's ImageNet VGG-16 into the network's initial weights (SPEC §4).

    python tools/chg_model.py                      # reads torchvision's cache file
    python tools/chg_model.py --vgg vgg16-397923af.pth --out model/vgg_state_dict.pth

torchvision's ``features.{0,2,5,…,28}`` convolutions become ``conv1_1`` …
``conv5_3`` in order; ``conv1_1`` is widened to 4 input channels with a zero
4th (trimap) channel, the usual practice in matting. conv6 and the decoder are
not converted: VGG's fc6 is a 4096×512×7×7 layer that has no counterpart in the
512×512×3×3 (or 1×1) conv6, so they keep their Xavier initialisation.
The output is ``{'state_dict': …, 'epoch': 0}``, loaded by train.py's --pretrain.
"""

import argparse
import hashlib
import os
import re
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from core.checkpoint import atomic_torch_save, read_checkpoint
from core.network import ENCODER_NAMES
from core.utils import UserError, run_cli

VGG_FILE = "vgg16-397923af.pth"
VGG_URL = "https://download.pytorch.org/models/" + VGG_FILE
# torchvision's configuration "D" (VGG-16): channel counts, "M" = max-pool.
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def default_vgg_path():
    """Where torchvision caches the file: $TORCH_HOME/hub/checkpoints/vgg16-397923af.pth."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", VGG_FILE)


def vgg16_conv_indices(cfg=VGG16_CFG):
    """Indices of the convolutions in torchvision's ``vgg16().features``.

    Each conv is followed by a ReLU (two modules); each "M" is one module.
    """
    indices, i = [], 0
    for v in cfg:
        if v == "M":
            i += 1
        else:
            indices.append(i)
            i += 2
    return indices


def convert(vgg_state, path="VGG-16 file"):
    """torchvision VGG-16 state dict → DIM encoder state dict; returns (state, mapping)."""
    indices = vgg16_conv_indices()
    assert len(indices) == len(ENCODER_NAMES) == 13
    channels = [v for v in VGG16_CFG if v != "M"]
    state, mapping = {}, []
    cin = 3
    for idx, name, cout in zip(indices, ENCODER_NAMES, channels):
        for kind, shape in (("weight", (cout, cin, 3, 3)), ("bias", (cout,))):
            src = f"features.{idx}.{kind}"
            if src not in vgg_state:
                raise UserError(f"{path}: {src} missing: not torchvision's VGG-16 "
                                f"(keys like {', '.join(sorted(vgg_state)[:3])})")
            t = vgg_state[src]
            if tuple(t.shape) != shape:
                raise UserError(f"{path}: {src} has shape {tuple(t.shape)}, expected {shape}: not VGG-16")
            t = t.detach().to(torch.float32).clone()
            if name == "conv1_1" and kind == "weight":
                # 4th input channel (the trimap) starts at zero: at initialisation
                # the encoder behaves exactly like ImageNet VGG-16 on the RGB part.
                t = torch.cat([t, torch.zeros(cout, 1, 3, 3)], dim=1)
            state[f"{name}.{kind}"] = t
            mapping.append((src, f"{name}.{kind}", tuple(t.shape)))
        cin = cout
    return state, mapping


def check_hash(path):
    """If the file name carries torchvision's SHA-256 prefix (``name-<hex>.pth``), verify it."""
    m = re.search(r"-([a-f0-9]{8,})\.", os.path.basename(path))
    if not m:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if not digest.hexdigest().startswith(m.group(1)):
        raise UserError(f"{path}: SHA-256 does not start with {m.group(1)} as its name says: "
                        "the download is corrupt or incomplete; fetch it again")
    return m.group(1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vgg", default=None,
                   help=f"torchvision VGG-16 weights (default: torchvision's cache, {default_vgg_path()})")
    p.add_argument("--out", default="model/vgg_state_dict.pth", help="output file")
    p.add_argument("--download", action="store_true",
                   help="download the file into torchvision's cache first if it is missing")
    args = p.parse_args(argv)

    path = args.vgg or default_vgg_path()
    if not os.path.isfile(path):
        if args.download and args.vgg is None:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            print(f"downloading {VGG_URL} to {path}")
            try:
                torch.hub.download_url_to_file(VGG_URL, path, hash_prefix="397923af")
            except Exception as exc:  # no network, proxy, disk full
                raise UserError(f"could not download {VGG_URL}: {exc}") from None
        else:
            raise UserError(f"{path}: VGG-16 weights not found; download {VGG_URL} and put it there "
                            "(or pass --vgg PATH, or run with --download to fetch it into torchvision's cache)")
    if check_hash(path):
        print(f"{path}: SHA-256 prefix verified")
    state, mapping = convert(read_checkpoint(path)["state_dict"], path)
    for src, dst, shape in mapping:
        print(f"  {src:<20} -> {dst:<16} {'x'.join(map(str, shape))}")
    print("  conv6_1 and the decoder are not in VGG-16: they keep their random (Xavier) initialisation")
    atomic_torch_save({"state_dict": state, "epoch": 0}, args.out)
    print(f"wrote {args.out} ({len(state)} tensors)")
    return 0


if __name__ == "__main__":
    run_cli(main)
