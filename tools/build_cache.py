"""Decode a training set into a ``--cache_dir`` ahead of training, with a progress bar.

    python tools/build_cache.py --online --adobeDir DATA/Combined_Dataset --cocoDir DATA/train2017 \\
        --cache_dir DATA/dim-cache
    python tools/build_cache.py --online --adobeDir DATA/Combined_Dataset --cocoDir DATA/train2017 \\
        --cache_dir DATA/dim-cache --cache_backgrounds      # the 43,100 backgrounds too (about 40 GB)
    python tools/build_cache.py --imgDir D/image --fgDir D/fg --bgDir D/bg --alphaDir D/alpha --cache_dir C

The data flags are core/train.py's; pass the same ones, and the same
``--cache_dir``, to training. Training fills the cache as it goes anyway; this
only moves the decoding before the first epoch. Interrupting is safe (entries
are written whole or not at all) and a rerun decodes only what is missing.
"""

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse

from core import data
from core.utils import UserError, run_cli


def build_parser():
    p = argparse.ArgumentParser(description="Decode the training images into a cache folder (core/train.py "
                                            "--cache_dir) ahead of training.")
    p.add_argument("--cache_dir", required=True, metavar="DIR", help="the cache folder (created if needed)")
    p.add_argument("--online", action="store_true", help="the online set: --adobeDir and --cocoDir")
    p.add_argument("--adobeDir", help="the extracted Combined_Dataset folder")
    p.add_argument("--cocoDir", help="MS-COCO train2017 images")
    p.add_argument("--bgPerFg", type=int, default=100, help="backgrounds per foreground in the name lists")
    p.add_argument("--cache_backgrounds", action="store_true", help="with --online: the backgrounds too")
    p.add_argument("--imgDir", help="offline composites (Training_set/comp/image)")
    p.add_argument("--fgDir", help="Training_set/comp/fg")
    p.add_argument("--bgDir", help="Training_set/comp/bg")
    p.add_argument("--alphaDir", help="Training_set/comp/alpha")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="decoding threads (%(default)s)")
    return p


def main(argv=None):
    a = build_parser().parse_args(argv)
    if a.workers < 1:
        raise UserError("--workers must be at least 1")
    if a.online:
        if not (a.adobeDir and a.cocoDir):
            raise UserError("--online needs --adobeDir and --cocoDir")
        ds = data.OnlineCompositeDataset(a.adobeDir, a.cocoDir, a.bgPerFg, cache_dir=a.cache_dir,
                                         cache_backgrounds=a.cache_backgrounds)
    else:
        dirs = (a.imgDir, a.fgDir, a.bgDir, a.alphaDir)
        if not all(dirs):
            raise UserError("give --imgDir, --fgDir, --bgDir and --alphaDir, or --online with --adobeDir and --cocoDir")
        ds = data.CompositedDataset(*dirs, cache_dir=a.cache_dir)
    print(ds.cache_report())
    decoded, present = data.build_cache(ds, a.workers)
    print(f"decoded {decoded}, {present} already there")
    print(ds.cache_report())
    return 0


if __name__ == "__main__":
    run_cli(main)
