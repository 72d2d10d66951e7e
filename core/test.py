"""Predict alpha mattes for a folder of images and trimaps, and score them (SPEC §9).

    python core/test.py --imgDir DATA/Test_set/comp/image --trimapDir DATA/Test_set/comp/trimap \\
        --alphaDir DATA/Test_set/comp/alpha --saveDir result/comp1k \\
        --resume model/stage1_skip_sad_52.9.pth --stage 1 --crop_or_resize whole --max_size 1600 --cuda

Images and trimaps pair by file name (extension may differ); every pair is
checked (exists, decodes, same size, trimap values) before anything is
predicted. Each matte is written to ``--saveDir`` as an 8-bit PNG named like
its image (``.png``). With ``--alphaDir`` each saved matte (the exact 8-bit
array written) is scored with the Composition-1k metrics (``core.metrics``:
SAD, MSE, Grad, Conn as the official MATLAB code computes them, ground truth
read as ``evaluate.m`` reads it); the table is printed and written to
``metrics.csv`` and ``metrics.json`` in ``--saveDir``.

Under ``torchrun`` (``--nproc_per_node N``, also across machines) each rank
predicts every N-th pair on the GPU ``LOCAL_RANK`` names, or the CPU; rank 0
gathers the scores and writes what one process writes (``core.sharding``).

This file is the command line only: the flags and their checks are
``core.options``, the pairing, checking, prediction and scoring ``core.folder``
(shared with ``core/demo.py``, ``tools/app.py`` and training-time validation).
"""

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse

from core.cutout import cutout_options
from core.folder import predict_and_score
from core.options import InferenceOptions, add_inference_args
from core.outputs import add_force_arg
from core.sharding import add_dist_args, start
from core.utils import UserError, run_cli


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Predict alpha mattes for a folder of images and trimaps "
                                                 "and, with --alphaDir, score them (Composition-1k metrics).")
    parser.add_argument("--imgDir", required=True, help="folder of images")
    parser.add_argument("--trimapDir", required=True, help="folder of trimaps (0/128/255), same file names")
    parser.add_argument("--alphaDir", default="", help="folder of ground-truth alphas: score the saved mattes")
    parser.add_argument("--saveDir", required=True, help="folder to write the mattes (and metrics) to")
    add_force_arg(parser)
    add_inference_args(parser)
    add_dist_args(parser)
    parser.add_argument("--stage_setting", help=argparse.SUPPRESS)  # deploy.sh: name STAGE=… in messages
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    options = InferenceOptions.from_args(args)
    cutout = cutout_options(args)  # a bad --background fails before anything is predicted
    if os.path.exists(args.saveDir) and not os.path.isdir(args.saveDir):
        raise UserError(f"{args.saveDir}: --saveDir exists and is not a folder")
    ranks = start(args.dist_timeout)  # one process, or this rank of torchrun's
    try:
        return predict_and_score(options, args.imgDir, args.trimapDir, args.alphaDir or None, args.saveDir, cutout,
                                 ranks, force=args.force)
    finally:
        ranks.close()


if __name__ == "__main__":
    run_cli(main)
