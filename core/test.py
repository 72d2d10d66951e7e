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

from core.cutout import cutout_options
from core.folder import (find_pairs, load_for_inference, log_cutouts, log_speed, pair_problems, predict_pairs,
                         raise_problems, require_checkpoint, summarize, write_scores)
from core.metrics import format_table
from core.options import InferenceOptions, add_inference_args
from core.sharding import Clock, add_dist_args, bar_options, speed_lines, start, unshard
from core.utils import UserError, plural, run_cli, setup_logging


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Predict alpha mattes for a folder of images and trimaps "
                                                 "and, with --alphaDir, score them (Composition-1k metrics).")
    parser.add_argument("--imgDir", required=True, help="folder of images")
    parser.add_argument("--trimapDir", required=True, help="folder of trimaps (0/128/255), same file names")
    parser.add_argument("--alphaDir", default="", help="folder of ground-truth alphas: score the saved mattes")
    parser.add_argument("--saveDir", required=True, help="folder to write the mattes (and metrics) to")
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
        return predict_and_score(args, options, cutout, ranks)
    finally:
        ranks.close()


def predict_and_score(args, options, cutout, ranks):
    """Each rank predicts its share of the pairs and writes those mattes; rank 0 scores and summarises all.

    Every step that can fail runs on every rank and stops them all with the
    same line (:meth:`core.sharding.Ranks.run_all`); the per-image results come
    back in the pairs' order, so rank 0 writes what one process writes.
    """
    logger = setup_logging(rank=ranks.rank)
    # one download per machine (the first rank there); then every rank finds the file
    ranks.run_all(lambda: require_checkpoint(options, logger) if ranks.local_rank == 0 else None, "fetching the model")
    pairs = ranks.run_all(lambda: find_pairs(args.imgDir, args.trimapDir, args.alphaDir or None), "pairing")
    mine = ranks.share(pairs)
    raise_problems(ranks.in_order(lambda: pair_problems(mine, options.mode, options.max_size), "checking the pairs"))
    model, _ = ranks.run_all(lambda: load_for_inference(options, logger, ranks.local_rank), "loading the model")
    on = f" on {ranks.world} ranks" if ranks.distributed else ""
    logger.info(f"{len(pairs)} images{on}, mode {options.mode}; writing to {args.saveDir}")

    def predict():
        clock = Clock()
        results, _ = predict_pairs(model, mine, args.saveDir, score=bool(args.alphaDir), cutout=cutout,
                                   bar=bar_options(ranks, "predicting"), **options.predict_kwargs())
        return results, clock.report(ranks, len(results), next(model.parameters()).device)

    answers = ranks.run_all(predict, "predicting", gather=True)
    if not ranks.main:
        return 0
    result = summarize(unshard([results for results, _ in answers]))
    log_speed(logger, result.seconds)
    for line in speed_lines([report for _, report in answers]):
        logger.info(line)
    logger.info(f"wrote {plural(len(pairs), 'matte')} to {args.saveDir}")
    log_cutouts(logger, result.cutouts, cutout)
    if args.alphaDir:
        print(format_table(result.rows, result.means))
        csv_path, json_path = write_scores(args.saveDir, result.rows, result.means)
        logger.info(f"wrote {csv_path} and {json_path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
