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

This file is the command line only: the flags and their checks are
``core.options``, the pairing, checking, prediction and scoring ``core.folder``
(shared with ``core/demo.py``, ``tools/app.py`` and training-time validation).
"""

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse

from core.cutout import cutout_names, cutout_options
from core.folder import (check_outputs, check_pairs, find_pairs, load_for_inference, log_cutouts, log_speed,
                         predict_folder, require_checkpoint, write_scores)
from core.metrics import format_table
from core.options import InferenceOptions, add_inference_args
from core.outputs import add_force_arg, check_outputs_maker, model_maker, record_outputs
from core.utils import UserError, plural, run_cli, setup_logging


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Predict alpha mattes for a folder of images and trimaps "
                                                 "and, with --alphaDir, score them (Composition-1k metrics).")
    parser.add_argument("--imgDir", required=True, help="folder of images")
    parser.add_argument("--trimapDir", required=True, help="folder of trimaps (0/128/255), same file names")
    parser.add_argument("--alphaDir", default="", help="folder of ground-truth alphas: score the saved mattes")
    parser.add_argument("--saveDir", required=True, help="folder to write the mattes (and metrics) to")
    add_force_arg(parser)
    add_inference_args(parser)
    parser.add_argument("--stage_setting", help=argparse.SUPPRESS)  # deploy.sh: name STAGE=… in messages
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logger = setup_logging()
    options = InferenceOptions.from_args(args)
    cutout = cutout_options(args)  # a bad --background fails before anything is predicted
    if os.path.exists(args.saveDir) and not os.path.isdir(args.saveDir):
        raise UserError(f"{args.saveDir}: --saveDir exists and is not a folder")
    require_checkpoint(options, logger)
    pairs = find_pairs(args.imgDir, args.trimapDir, args.alphaDir or None)
    shrunk = check_pairs(pairs, options.mode, options.max_size)
    if shrunk:  # the reference's protocol (Composition-1k is tested this way), but said
        logger.info(f"whole mode shrinks {plural(len(shrunk), 'image')} of {len(pairs)} to fit --max_size "
                    f"{options.max_size}; e.g. {shrunk[0][0].image}: {shrunk[0][1]}")
    model, info = load_for_inference(options, logger)
    # another model's mattes in --saveDir are neither replaced nor mixed in (core.outputs)
    maker = model_maker(options, info)
    targets = [f for p in pairs for f in (p.name, *cutout_names(p.name, **(cutout or {})))]
    targets += ["metrics.csv", "metrics.json"] if args.alphaDir else []
    check_outputs_maker(args.saveDir, targets, maker, args.force)
    check_outputs(pairs, args.saveDir)  # never over an input, even with --force
    record_outputs(args.saveDir, targets, maker)
    logger.info(f"{len(pairs)} images, mode {options.mode}; writing to {args.saveDir}")
    result = predict_folder(model, pairs, args.saveDir, score=bool(args.alphaDir), cutout=cutout,
                            **options.predict_kwargs())
    log_speed(logger, result.seconds)
    logger.info(f"wrote {plural(len(pairs), 'matte')} to {args.saveDir}")
    log_cutouts(logger, result.cutouts, cutout)
    if args.alphaDir:
        print(format_table(result.rows, result.means))
        csv_path, json_path = write_scores(args.saveDir, result.rows, result.means)
        logger.info(f"wrote {csv_path} and {json_path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
