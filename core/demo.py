"""Predict alpha mattes for the examples in ``result/example/`` (or your own images).

    python core/demo.py                                  # result/example/{image,trimap} → result/example/pred
    python core/demo.py --image photo.jpg --rgba         # trimap made here, cut-out written, into result/own
    python core/demo.py --image me.jpg --trimap me_trimap.png --saveDir out
    python core/demo.py --imgDir photos --maskDir masks --saveDir out --cuda

Uses ``model/stage1_skip_sad_52.9.pth`` (the released model, downloaded there
on first use unless ``--no_download``; its weights are for non-commercial use
only) or a checkpoint given with ``--resume``. A photo without a trimap gets
one (:func:`core.trimap.photo_trimap`): the subject is its alpha channel, else
``--mask``/``--maskDir``, else what ``--segmenter`` (a torchvision network,
weights cached under ``$TORCH_HOME``) finds of ``--classes``; the band of
``tools/gen_trimap.py`` (``--width``/``--width_frac``) makes the trimap,
written to ``<saveDir>/trimap/<name>.png`` to look at and correct. Writes each
matte as ``<saveDir>/<name>.png`` (8-bit, as ``core/test.py`` writes it) and a
labelled side-by-side picture ``<saveDir>/side_by_side/<name>.png``: image |
trimap | prediction | ground truth (the last panel when an alpha of the same
name is in ``--alphaDir``, ``result/example/alpha`` for the examples; those
are also scored). Under ``torchrun`` a folder run is shared out over the ranks
(``core.sharding``), with the same outputs. In a folder run a photo that cannot be matted is reported
and the others are still written (exit status 2).

The examples keep the reference's defaults (``whole``, ``result/example/pred``);
your own photos (``--image``/``--imgDir``) default to ``auto`` (whole when a
photo fits ``--max_size``, tile beyond) and ``result/own``. Whole mode says in
one line when it shrinks a photo. ``<saveDir>/made_by.json`` records which model,
mode and precision made the files (``core.outputs``): another model's folder
is refused without ``--force``.
"""

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse

import cv2
import numpy as np
from tqdm import tqdm

from core.data import list_images
from core.imageio import read_gray, read_image, write_image
from core.metrics import format_table, read_alpha, read_prediction
from core.cutout import cutout_names, cutout_options
from core.folder import (Pair, check_outputs, find_pairs, load_for_inference, log_cutouts, log_speed, pair_problems,
                         predict_pairs, raise_problems, require_checkpoint, summarize)
from core.inference import AUTO, MODES
from core.options import MODE_HELP, REPO_ROOT, RELEASED_MODEL, InferenceOptions, add_inference_args
from core.outputs import add_force_arg, check_outputs_maker, model_maker, record_outputs
from core.segment import Segmenter, WeightsError, add_segmenter_args
from core.sharding import Clock, Ranks, add_dist_args, bar_options, speed_lines, start, unshard
from core.trimap import DEFAULT_WIDTH_FRAC, photo_trimap
from core.utils import UserError, plural, run_cli, select_device, setup_logging

EXAMPLE_DIR = os.path.join(REPO_ROOT, "result", "example")
OWN_DIR = os.path.join(REPO_ROOT, "result", "own")  # own photos' default output: never mixed with the examples'
SIDE_DIR = "side_by_side"
TRIMAP_DIR = "trimap"
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


def _is_example(args):
    return os.path.abspath(args.imgDir) == os.path.join(EXAMPLE_DIR, "image")


def _own_photos(args):
    return bool(args.image) or not _is_example(args)


def resolve_defaults(args):
    """--saveDir and --crop_or_resize when not given: the examples keep the reference's ``whole`` and
    ``result/example/pred``; own photos get ``auto`` (whole when a photo fits --max_size, tile beyond,
    as the page) and ``result/own``."""
    own = _own_photos(args)
    if args.saveDir is None:
        args.saveDir = OWN_DIR if own else os.path.join(EXAMPLE_DIR, "pred")
    if args.crop_or_resize is None:
        args.crop_or_resize = AUTO if own else "whole"
    return args


def _trimap_dir(args):
    """The folder of trimaps for a folder run: --trimapDir, the examples' own, or None (trimaps are made)."""
    return args.trimapDir or (os.path.join(EXAMPLE_DIR, "trimap") if _is_example(args) and not args.maskDir else None)


def demo_pairs(args, logger, ranks=None, before_writing=None):
    """The photos to predict, in order: a :class:`Pair` for each, or the line saying why it was refused.

    ``--image`` (with or without ``--trimap``), or the folders. A photo without
    a trimap gets one from :func:`core.trimap.photo_trimap` (alpha channel,
    ``--mask``/``--maskDir``, else ``--segmenter``), written to
    ``<saveDir>/trimap/<name>``. One photo: its problem is raised; a folder:
    each refusal is a line in the list and the other photos go on. Under
    torchrun (``ranks``) each rank makes the trimaps of its share and every
    rank gets the whole list. ``before_writing(names)``: called with the
    mattes' names before any file is written (on every rank, once).
    """
    ranks = ranks or Ranks()
    before_writing = before_writing or (lambda names: None)
    if args.trimap and not args.image:
        raise UserError("--trimap goes with --image (or use --imgDir/--trimapDir)")
    if args.mask and not args.image:
        raise UserError("--mask goes with --image (or use --imgDir/--maskDir)")
    if args.image:
        name = os.path.splitext(os.path.basename(args.image))[0] + ".png"
        before_writing([name])
        if args.trimap:
            return [Pair(name, args.image, args.trimap, args.alpha)]
        return auto_pairs([(name, args.image, args.mask, args.alpha)], args, logger, ranks)
    alpha_dir = args.alphaDir
    if alpha_dir is not None and not os.path.isdir(alpha_dir):
        raise UserError(f"{alpha_dir}: --alphaDir is not a folder")
    example_alpha = os.path.join(EXAMPLE_DIR, "alpha")
    if alpha_dir is None and _is_example(args) and os.path.isdir(example_alpha):
        alpha_dir = example_alpha  # the examples' ground truth
    trimap_dir = _trimap_dir(args)
    if trimap_dir:
        pairs = find_pairs(args.imgDir, trimap_dir, alpha_dir, alpha_required=False)
        before_writing([p.name for p in pairs])
        return pairs
    images = list_images(args.imgDir, "image")
    masks = list_images(args.maskDir, "mask") if args.maskDir else {}
    alphas = list_images(alpha_dir, "ground-truth alpha") if alpha_dir else {}
    items = [(stem + ".png", os.path.join(args.imgDir, images[stem]),
              os.path.join(args.maskDir, masks[stem]) if stem in masks else None,
              os.path.join(alpha_dir, alphas[stem]) if stem in alphas else None) for stem in sorted(images)]
    before_writing([item[0] for item in items])
    return auto_pairs(items, args, logger, ranks)


def auto_pairs(items, args, logger, ranks=None):
    """Make and write the trimaps of ``items`` = [(name, image, mask or None, alpha or None)]: a
    :class:`Pair` or the refusal line for each item (see :func:`demo_pairs`)."""
    ranks = ranks or Ranks()
    mine = ranks.share(items)

    def make():
        segmenter = None
        if mine and not (args.mask or args.maskDir):  # names were checked in main
            segmenter = Segmenter(args.segmenter, args.classes, select_device(args.cuda, ranks.local_rank),
                                  download=not args.no_download)
        outcomes = []
        for name, image, mask, alpha in tqdm(mine, desc="trimaps", unit="img",
                                             disable=True if len(mine) < 2 else None):
            try:
                trimap, source = photo_trimap(image, mask, segmenter, args.width, args.width_frac)
            except WeightsError:
                raise
            except UserError as exc:
                if len(items) == 1:
                    raise
                logger.warning(f"skipped: {exc}")
                outcomes.append(str(exc))
                continue
            path = os.path.join(args.saveDir, TRIMAP_DIR, name)
            write_image(path, trimap)
            logger.info(f"{path}: trimap from {source}")
            outcomes.append(Pair(name, image, path, alpha))
        return outcomes

    outcomes = ranks.in_order(make, "making trimaps")
    refused = [o for o in outcomes if not isinstance(o, Pair)]
    if len(refused) == len(outcomes):
        raise UserError(f"no photo could be matted: {'; '.join(refused[:3])}" + (" …" if len(refused) > 3 else ""))
    return outcomes


def _per_photo(outcomes, values):
    """``values`` (one per :class:`Pair` of ``outcomes``) spread over ``outcomes``: None for a refused photo."""
    values = iter(values)
    return [next(values) if isinstance(o, Pair) else None for o in outcomes]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Alpha mattes and side-by-side pictures for a few images "
                                                 "(default: the examples in result/example).")
    parser.add_argument("--imgDir", default=os.path.join(EXAMPLE_DIR, "image"), help="folder of images "
                        "(default: result/example/image)")
    parser.add_argument("--trimapDir", help="folder of trimaps, same file names (default: result/example/trimap "
                                            "for the examples; otherwise trimaps are made, see --maskDir)")
    parser.add_argument("--alphaDir", help="optional ground-truth alphas, same file names: the last panel and "
                                           "scores (default: result/example/alpha for the examples)")
    parser.add_argument("--image", help="one image instead of --imgDir")
    parser.add_argument("--trimap", help="its trimap (with --image; without one a trimap is made)")
    parser.add_argument("--alpha", help="its ground-truth alpha (optional, with --image)")
    parser.add_argument("--saveDir", help="output folder (default: result/example/pred for the examples, "
                                           "result/own for your own photos)")
    add_force_arg(parser)
    auto = parser.add_argument_group("automatic trimaps (a photo without a trimap)",
                                     "the subject is the photo's alpha channel, else --mask/--maskDir, else what "
                                     "--segmenter finds; the trimap is written to <saveDir>/trimap/")
    auto.add_argument("--mask", help="the subject mask of --image (binary or soft, white = subject)")
    auto.add_argument("--maskDir", help="folder of subject masks, same file names as --imgDir")
    add_segmenter_args(auto)
    width = auto.add_mutually_exclusive_group()
    width.add_argument("--width", type=int, default=None, help="unknown band reach in pixels to each side of the edge")
    width.add_argument("--width_frac", type=float, default=DEFAULT_WIDTH_FRAC,
                       help=f"the reach as a fraction of the photo's diagonal (default {DEFAULT_WIDTH_FRAC})")
    add_inference_args(parser, resume_default=os.path.join(REPO_ROOT, "model", RELEASED_MODEL),
                       modes=(*MODES, AUTO), mode_default=None,
                       mode_help=MODE_HELP.replace(" (default: whole)", "; auto: whole when both sides fit --max_size, "
                                                   "else tile (default: whole for the examples, the reference's "
                                                   "demo; auto for your own photos)"))
    add_dist_args(parser)
    return resolve_defaults(parser.parse_args(argv))


def check_auto_args(args):
    """Band and segmenter flags are checked before anything is downloaded or predicted."""
    if args.width is not None and args.width < 1:
        raise UserError(f"--width must be at least 1 pixel, got {args.width}")
    if args.width is None and not 0 < args.width_frac < 1:
        raise UserError(f"--width_frac must be between 0 and 1, got {args.width_frac}")
    makes_trimaps = not args.trimap if args.image else _trimap_dir(args) is None
    if makes_trimaps and not (args.mask or args.maskDir):
        Segmenter(args.segmenter, args.classes)


def output_names(names, cutout):
    """What a run writes into --saveDir for the mattes ``names`` (relative paths): the record's targets."""
    return [f for name in names for f in (name, f"{SIDE_DIR}/{name}", *cutout_names(name, **(cutout or {})))]


def main(argv=None):
    args = parse_args(argv)
    options = InferenceOptions.from_args(args, modes=("whole", "tile") if args.crop_or_resize == AUTO else ())
    cutout = cutout_options(args)
    check_auto_args(args)
    ranks = start(args.dist_timeout)  # one process, or this rank of torchrun's: a folder run is shared out
    try:
        return run_demo(args, options, cutout, ranks)
    finally:
        ranks.close()


def run_demo(args, options, cutout, ranks):
    """Each rank makes the trimaps, mattes and side-by-side pictures of its share; rank 0 reports them all."""
    logger = setup_logging(rank=ranks.rank)
    # first: a missing model is the likeliest problem; one download per machine
    ranks.run_all(lambda: require_checkpoint(options, logger) if ranks.local_rank == 0 else None, "fetching the model")
    model, info = ranks.run_all(lambda: load_for_inference(options, logger, ranks.local_rank), "loading the model")
    maker, names = model_maker(options, info), []

    def guard(found):  # before the first file (a trimap) is written
        names.extend(found)
        ranks.run_all(lambda: check_outputs_maker(args.saveDir, output_names(names, cutout), maker, args.force),
                      "checking the output folder")

    outcomes = demo_pairs(args, logger, ranks, guard)
    pairs = [o for o in outcomes if isinstance(o, Pair)]
    refused = [o for o in outcomes if not isinstance(o, Pair)]
    mine = [o for o in ranks.share(outcomes) if isinstance(o, Pair)]
    problems = ranks.in_order(lambda: _per_photo(ranks.share(outcomes), pair_problems(mine, options.mode,
                                                                                      options.max_size,
                                                                                      progress=False)),
                              "checking the pairs")
    notes = raise_problems([p for o, p in zip(outcomes, problems) if isinstance(o, Pair)])
    ranks.run_all(lambda: check_outputs(pairs, args.saveDir), "checking the output folder")  # never over an input
    ranks.run_all(lambda: record_outputs(args.saveDir, output_names([p.name for p in pairs], cutout), maker)
                  if ranks.main else None, "recording the outputs")
    if ranks.main:
        for pair, note in zip(pairs, notes):
            if note:
                logger.info(f"{pair.image}: {note}")
        logger.info(f"{plural(len(pairs), 'photo')}, mode {options.mode}"
                    + (" (whole when a photo fits --max_size, else tile)" if options.mode == AUTO else "")
                    + f"; writing to {args.saveDir} (which model made them: "
                      f"{os.path.join(args.saveDir, 'made_by.json')})")

    def predict():
        clock = Clock()
        results, _ = predict_pairs(model, mine, args.saveDir, score=True, cutout=cutout,
                                   bar=bar_options(ranks, "predicting"), **options.predict_kwargs())
        write_side_by_side(mine, args.saveDir)
        return _per_photo(ranks.share(outcomes), results), clock.report(ranks, len(results),
                                                                         next(model.parameters()).device)

    answers = ranks.run_all(predict, "predicting", gather=True)
    if ranks.main:
        result = summarize([r for r in unshard([part for part, _ in answers]) if r is not None])
        log_speed(logger, result.seconds)
        for line in speed_lines([report for _, report in answers]):
            logger.info(line)
        logger.info(f"wrote {plural(len(pairs), 'matte')} to {args.saveDir} and "
                    f"{plural(len(pairs), 'side-by-side picture')} to {os.path.join(args.saveDir, SIDE_DIR)}")
        log_cutouts(logger, result.cutouts, cutout)
        if result.rows:  # the pairs with ground truth
            print(format_table(result.rows, result.means))
    if refused:
        raise UserError(f"{len(refused)} of {len(outcomes)} photos refused ({len(pairs)} mattes written): "
                        + "; ".join(refused[:3]) + (" …" if len(refused) > 3 else ""))
    return 0


if __name__ == "__main__":
    run_cli(main)
