"""Predict alpha mattes for the examples in ``result/example/`` (or your own images).

    python core/demo.py                                  # result/example/{image,trimap} → result/example/pred
    python core/demo.py --image me.jpg --trimap me_trimap.png --saveDir out
    python core/demo.py --imgDir photos --trimapDir trimaps --saveDir out --cuda

Needs ``model/stage1_skip_sad_52.9.pth`` (the released model; see README) or a
checkpoint given with ``--resume``. Writes each matte as ``<saveDir>/<name>.png``
(8-bit, as ``core/test.py`` writes it) and a labelled side-by-side picture
``<saveDir>/side_by_side/<name>.png``: image | trimap | prediction | ground
truth (the last panel when an alpha of the same name is in ``--alphaDir``,
``result/example/alpha`` for the examples; those are also scored).
"""

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse

import cv2
import numpy as np

from core.imageio import read_gray, read_image, write_image
from core.metrics import format_table, read_alpha, read_prediction
from core.cutout import cutout_options
from core.test import (REPO_ROOT, RELEASED_MODEL, Pair, add_inference_args, check_inference_args, check_pairs,
                       find_pairs, inference_kwargs, load_for_inference, log_cutouts, log_speed, predict_folder)
from core.utils import UserError, plural, run_cli, setup_logging

EXAMPLE_DIR = os.path.join(REPO_ROOT, "result", "example")
SIDE_DIR = "side_by_side"
PANEL_MAX_HEIGHT = 480
LABEL_HEIGHT = 28
GAP = 4


def _label(panel, text):
    """A dark strip with ``text`` above ``panel`` (BGR uint8)."""
    strip = np.full((LABEL_HEIGHT, panel.shape[1], 3), 40, np.uint8)
    cv2.putText(strip, text, (6, LABEL_HEIGHT - 9), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1,
                cv2.LINE_AA)
    return np.vstack([strip, panel])


def side_by_side(panels):
    """Labelled panels in a row: ``panels`` = [(label, H×W×3 BGR or H×W gray uint8)], all the same size.

    Panels taller than 480 px are scaled down (area averaging). Returns BGR uint8.
    """
    h, w = panels[0][1].shape[:2]
    scale = min(1.0, PANEL_MAX_HEIGHT / h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    row = []
    for label, img in panels:
        if img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        if scale < 1:
            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        if row:
            row.append(np.full((size[1] + LABEL_HEIGHT, GAP, 3), 255, np.uint8))
        row.append(_label(img, label))
    return np.hstack(row)


def write_side_by_side(pairs, save_dir):
    """One picture per pair in ``save_dir/side_by_side/``, from the files on disk; returns the paths."""
    paths = []
    for pair in pairs:
        panels = [("image", read_image(pair.image)), ("trimap", read_gray(pair.trimap)),
                  ("prediction", read_prediction(os.path.join(save_dir, pair.name)))]
        if pair.alpha:
            panels.append(("ground truth", read_alpha(pair.alpha)))
        path = os.path.join(save_dir, SIDE_DIR, pair.name)
        write_image(path, side_by_side(panels))
        paths.append(path)
    return paths


def demo_pairs(args):
    """The pairs to predict: one --image/--trimap pair, or the folders."""
    if args.image or args.trimap:
        if not (args.image and args.trimap):
            raise UserError("--image and --trimap go together (or use --imgDir/--trimapDir)")
        name = os.path.splitext(os.path.basename(args.image))[0] + ".png"
        return [Pair(name, args.image, args.trimap, args.alpha)]
    alpha_dir = args.alphaDir
    if alpha_dir is not None and not os.path.isdir(alpha_dir):
        raise UserError(f"{alpha_dir}: --alphaDir is not a folder")
    example_alpha = os.path.join(EXAMPLE_DIR, "alpha")
    if alpha_dir is None and os.path.abspath(args.imgDir) == os.path.join(EXAMPLE_DIR, "image") \
            and os.path.isdir(example_alpha):
        alpha_dir = example_alpha  # the examples' ground truth
    return find_pairs(args.imgDir, args.trimapDir, alpha_dir, alpha_required=False)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Alpha mattes and side-by-side pictures for a few images "
                                                 "(default: the examples in result/example).")
    parser.add_argument("--imgDir", default=os.path.join(EXAMPLE_DIR, "image"), help="folder of images "
                        "(default: result/example/image)")
    parser.add_argument("--trimapDir", default=os.path.join(EXAMPLE_DIR, "trimap"),
                        help="folder of trimaps, same file names (default: result/example/trimap)")
    parser.add_argument("--alphaDir", help="optional ground-truth alphas, same file names: the last panel and "
                                           "scores (default: result/example/alpha for the examples)")
    parser.add_argument("--image", help="one image instead of --imgDir")
    parser.add_argument("--trimap", help="its trimap (with --image)")
    parser.add_argument("--alpha", help="its ground-truth alpha (optional, with --image)")
    parser.add_argument("--saveDir", default=os.path.join(EXAMPLE_DIR, "pred"),
                        help="output folder (default: result/example/pred)")
    add_inference_args(parser, resume_default=os.path.join(REPO_ROOT, "model", RELEASED_MODEL))
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logger = setup_logging()
    check_inference_args(args)
    cutout = cutout_options(args)
    model, _ = load_for_inference(args, logger)  # first: a missing model is the likeliest problem
    pairs = demo_pairs(args)
    check_pairs(pairs, args.crop_or_resize, args.max_size, progress=False)
    result = predict_folder(model, pairs, args.saveDir, score=True, cutout=cutout, **inference_kwargs(args))
    log_speed(logger, result.seconds)
    sides = write_side_by_side(pairs, args.saveDir)
    logger.info(f"wrote {plural(len(pairs), 'matte')} to {args.saveDir} and "
                f"{plural(len(sides), 'side-by-side picture')} to {os.path.dirname(sides[0])}")
    log_cutouts(logger, result.cutouts, cutout)
    if result.rows:  # the pairs with ground truth
        print(format_table(result.rows, result.means))
    return 0


if __name__ == "__main__":
    run_cli(main)
