"""Cut-outs from a photo and a matte you already have, without running the network again.

    python tools/cutout.py --image photo.jpg --matte out/photo.png --rgba
    python tools/cutout.py --image photo.jpg --matte out/photo.png --background beach.jpg --background "#2080ff"

Writes ``<saveDir>/cutout/<photo stem>_rgba.png`` (``--rgba``, the default when
no ``--background`` is given) and ``<photo stem>_bg_<bg>.png`` for each
``--background`` (``<bg>``: the colour's name or hex digits, or the image's
file stem), ``--saveDir`` defaulting to the matte's folder, i.e. where
``core/demo.py --rgba/--background`` puts them. The foreground colours are
estimated once (``core.cutout``) and reused for every background. Prints each
file written and the estimator used. The folder's ``made_by.json`` records
which model made the matte (``core.outputs``): cut-outs of another model's
matte are not written among that folder's files without ``--force``.
"""

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse

from core.cutout import add_cutout_args, cutout_names, cutout_options, write_cutouts
from core.imageio import read_gray, read_image
from core.outputs import add_force_arg, check_outputs_maker, file_sha256, maker_of, record_outputs
from core.utils import UserError, run_cli


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="RGBA cut-outs and new backgrounds from a photo and its matte.")
    parser.add_argument("--image", required=True, help="the photo")
    parser.add_argument("--matte", required=True, help="its alpha matte, an 8-bit grey image of the same size "
                                                      "(e.g. what core/demo.py or core/test.py wrote)")
    parser.add_argument("--saveDir", help="write into <saveDir>/cutout/ (default: the matte's folder)")
    add_force_arg(parser)
    add_cutout_args(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not args.background:
        args.rgba = True  # nothing else asked for: the cut-out itself
    options = cutout_options(args)  # a bad --background fails before anything is read or written
    image, matte = read_image(args.image), read_gray(args.matte)
    if image.shape[:2] != matte.shape:
        raise UserError(f"{args.matte}: the matte is {matte.shape[1]}×{matte.shape[0]} but the image {args.image} "
                        f"is {image.shape[1]}×{image.shape[0]}")
    save_dir = args.saveDir if args.saveDir is not None else os.path.dirname(os.path.abspath(args.matte))
    # the cut-outs' maker is the matte's (the model core/demo.py or core/test.py recorded), else the matte itself
    matte_dir, matte_name = os.path.split(os.path.abspath(args.matte))
    maker = maker_of(matte_dir, matte_name) or {"matte": os.path.abspath(args.matte), "sha256": file_sha256(args.matte)}
    targets = cutout_names(os.path.basename(args.image), **options)
    check_outputs_maker(save_dir, targets, maker, args.force)
    record_outputs(save_dir, targets, maker)
    print(f"foreground colours: {options['backend']} (multi-level estimation, Germer et al. 2020)")
    for path in write_cutouts(save_dir, os.path.basename(args.image), image, matte, **options):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
