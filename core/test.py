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

The loop (:func:`find_pairs`, :func:`check_pairs`, :func:`predict_folder`) is
shared with ``core/demo.py`` and training-time validation.
"""

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import math
import time
from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor

from tqdm import tqdm

from core.checkpoint import RELEASE_URL, load_model, unwrap
from core.data import list_images
from core.imageio import read_gray, read_image, write_image
from core.cutout import add_cutout_args, cutout_options, write_cutouts
from core.inference import MODES, check_trimap, predict_matte, setup_backend, whole_size
from core.ops.capabilities import PRECISIONS, check_precision
from core.release import download_if_missing
from core.tiling import check_tile_args
from core.metrics import (compute_metrics, format_table, mean_metrics, read_alpha, read_trimap, write_metrics_csv,
                          write_metrics_json)
from core.utils import UserError, plural, preview, run_cli, select_device, setup_logging

RELEASED_MODEL = "stage1_skip_sad_52.9.pth"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

Pair = namedtuple("Pair", "name image trimap alpha")
Pair.__doc__ = """One test item. ``name``: the matte's file name (image stem + ``.png``);
``image``, ``trimap``: paths; ``alpha``: ground-truth path or None."""


def _no_bar(progress):
    """tqdm's ``disable``: no bar when asked, or when stderr is not a terminal (logs stay clean)."""
    return None if progress else True


# --------------------------------------------------------------------------- #
# Pairing and checking
# --------------------------------------------------------------------------- #
def find_pairs(img_dir, trimap_dir, alpha_dir=None, alpha_required=True):
    """Pair every image of ``img_dir`` with the trimap (and alpha) of the same file stem.

    Returns ``[Pair]`` sorted by name. Extra trimaps/alphas are ignored. Raises
    :class:`UserError` naming the folder and the image(s) without a trimap, or
    without an alpha when ``alpha_dir`` is given and ``alpha_required``
    (otherwise such pairs get ``alpha=None``).
    """
    images = list_images(img_dir, "image")
    trimaps = list_images(trimap_dir, "trimap")
    alphas = list_images(alpha_dir, "ground-truth alpha") if alpha_dir else {}
    missing = [os.path.join(img_dir, images[s]) for s in images if s not in trimaps]
    if missing:
        raise UserError(f"{trimap_dir}: no trimap for {len(missing)} image(s): {preview(missing, 3)} "
                        "(trimaps pair with images by file name)")
    if alpha_dir and alpha_required:
        missing = [os.path.join(img_dir, images[s]) for s in images if s not in alphas]
        if missing:
            raise UserError(f"{alpha_dir}: no ground-truth alpha for {len(missing)} image(s): {preview(missing, 3)}")
    return [Pair(name=stem + ".png", image=os.path.join(img_dir, images[stem]),
                 trimap=os.path.join(trimap_dir, trimaps[stem]),
                 alpha=os.path.join(alpha_dir, alphas[stem]) if stem in alphas else None)
            for stem in sorted(images)]


def _check_one(pair, mode, max_size):
    """Decode one pair fully (a truncated file fails here, not mid-run) and check sizes."""
    h, w = read_image(pair.image).shape[:2]
    trimap = read_gray(pair.trimap)
    if trimap.shape != (h, w):
        raise UserError(f"{pair.trimap}: trimap is {trimap.shape[1]}×{trimap.shape[0]} but its image "
                        f"{pair.image} is {w}×{h}")
    check_trimap(trimap, pair.trimap)
    if pair.alpha is not None:
        gh, gw = read_alpha(pair.alpha).shape
        if (gh, gw) != (h, w):
            raise UserError(f"{pair.alpha}: ground-truth alpha is {gw}×{gh} but its image {pair.image} is {w}×{h}")
        # Scoring reads it as evaluate.m does (8-bit only): fail now, not mid-run. No second warning about
        # odd values (check_trimap gave it), and no catch_warnings: this runs in threads.
        read_trimap(pair.trimap, warn=False)
    if mode in ("whole", "tile"):  # tile mode needs only both sides >= 32
        try:
            whole_size(h, w, max_size if mode == "whole" else max(h, w, 32))
        except ValueError as exc:
            raise UserError(f"{pair.image}: {exc}") from None


def check_pairs(pairs, mode="whole", max_size=1600, workers=None, progress=True):
    """Check every pair before anything is predicted.

    Each image, trimap and alpha is decoded (in a few threads: OpenCV releases
    the GIL); image and trimap (and alpha) must have the same size, ``whole``
    mode needs both sides ≥ 32. Trimap values other than 0/128/255 only warn
    (:func:`core.inference.check_trimap`). Raises one :class:`UserError`
    naming every bad file (the first eight in full), so one run shows them all.
    """
    workers = workers or min(8, os.cpu_count() or 1)
    bad = []
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(_check_one, p, mode, max_size) for p in pairs]
        try:
            for fut in tqdm(futures, desc="checking", unit="img", disable=_no_bar(progress), leave=False):
                try:
                    fut.result()
                except UserError as exc:
                    bad.append(str(exc))
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    if len(bad) == 1:
        raise UserError(bad[0])
    if bad:
        raise UserError(f"{len(bad)} of {len(pairs)} pairs are unusable: " + "; ".join(bad[:8])
                        + (f"; … and {len(bad) - 8} more" if len(bad) > 8 else ""))


def check_outputs(pairs, save_dir):
    """Refuse to write a matte over one of the inputs (e.g. ``--saveDir`` = ``--imgDir`` with PNG images)."""
    for pair in pairs:
        target = os.path.join(save_dir, pair.name)
        if not os.path.exists(target):
            continue
        for src in (pair.image, pair.trimap, pair.alpha):
            if src and os.path.exists(src) and os.path.samefile(src, target):
                raise UserError(f"{target}: writing the matte there would overwrite an input; "
                                "choose another --saveDir")


# --------------------------------------------------------------------------- #
# Predicting and scoring
# --------------------------------------------------------------------------- #
FolderResult = namedtuple("FolderResult", "seconds rows means stopped cutouts", defaults=((),))
FolderResult.__doc__ = """What :func:`predict_folder` did. ``seconds``: per predicted image (prediction
only); ``rows``: ``{name: {"sad", "mse", "grad", "conn"}}`` for the scored pairs;
``means``: :func:`core.metrics.mean_metrics` of ``rows`` (None when nothing was
scored or the loop stopped early); ``stopped``: ``should_stop()`` ended the loop;
``cutouts``: the cut-out files written."""


def score_matte(pair, matte):
    """The four metrics of ``matte`` (uint8 H×W, the array written to disk) against ``pair.alpha``.

    Ground truth and trimap are read as the official ``evaluate.m`` reads them
    (``core.metrics.read_alpha``/``read_trimap``), so this equals scoring the saved PNG.
    """
    gt = read_alpha(pair.alpha)
    trimap = read_trimap(pair.trimap, warn=False)  # check_pairs already warned about odd values once per file
    if gt.shape != matte.shape or trimap.shape != matte.shape:
        raise UserError(f"{pair.alpha}: ground truth {gt.shape[1]}×{gt.shape[0]}, trimap {pair.trimap} "
                        f"{trimap.shape[1]}×{trimap.shape[0]} and image {pair.image} {matte.shape[1]}×{matte.shape[0]} "
                        "differ in size")
    return compute_metrics(matte, gt, trimap)


def predict_folder(model, pairs, save_dir=None, mode="whole", max_size=1600, size=(320, 320), stage=None, amp=False,
                   tile_size=512, tile_overlap=64, score=False, progress=True, should_stop=None, cutout=None,
                   precision="fp32"):
    """Predict every pair; write its 8-bit matte to ``save_dir/pair.name``; optionally score it.

    The one loop behind ``core/test.py``, ``core/demo.py`` and training-time validation.

    Args:
        model: a DIMNet (DDP/compile wrappers are stripped) on any device; it is
            put in eval mode and its train/eval mode restored afterwards.
        pairs: ``[Pair]`` from :func:`find_pairs` (call :func:`check_pairs` once first).
        save_dir: folder for the mattes (written atomically), or None to write nothing.
        mode, max_size, size, stage, amp, tile_size, tile_overlap, precision: as :func:`core.inference.predict`.
        score: score each pair that has ``alpha`` with :func:`score_matte` (the
            exact uint8 array written, i.e. what the saved PNG holds).
        should_stop: optional callable, asked before each image; True ends the loop.
        cutout: None, or keyword arguments of :func:`core.cutout.write_cutouts`
            (from :func:`core.cutout.cutout_options`): RGBA cut-outs beside the mattes.
    Returns:
        :class:`FolderResult`.
    """
    if save_dir is not None:
        check_outputs(pairs, save_dir)
        os.makedirs(save_dir, exist_ok=True)
    net = unwrap(model)
    was_training = net.training
    net.eval()
    seconds, rows, cutouts = [], {}, []
    try:
        bar = tqdm(pairs, desc="predicting", unit="img", disable=_no_bar(progress))
        for pair in bar:
            if should_stop is not None and should_stop():
                return FolderResult(seconds, rows, None, True, cutouts)
            image, trimap = read_image(pair.image), read_gray(pair.trimap)
            start = time.perf_counter()
            matte = predict_matte(net, image, trimap, mode=mode, max_size=max_size, size=size, stage=stage, amp=amp,
                                  tile_size=tile_size, tile_overlap=tile_overlap, precision=precision)
            seconds.append(time.perf_counter() - start)  # predict_matte returns a CPU array: GPU work is done
            if save_dir is not None:
                write_image(os.path.join(save_dir, pair.name), matte)
                if cutout:
                    cutouts += write_cutouts(save_dir, pair.name, image, matte, **cutout)
            if score and pair.alpha:
                rows[pair.name] = score_matte(pair, matte)
            bar.set_postfix(s_per_img=f"{seconds[-1]:.3f}")
    finally:
        net.train(was_training)
    return FolderResult(seconds, rows, mean_metrics(rows) if rows else None, False, cutouts)


def write_scores(save_dir, rows, means):
    """Write ``metrics.csv`` and ``metrics.json`` into ``save_dir``; returns their paths."""
    csv_path, json_path = os.path.join(save_dir, "metrics.csv"), os.path.join(save_dir, "metrics.json")
    write_metrics_csv(csv_path, rows, means)
    write_metrics_json(json_path, rows, means)
    return csv_path, json_path


# --------------------------------------------------------------------------- #
# Command line (shared with core/demo.py)
# --------------------------------------------------------------------------- #
def add_inference_args(parser, resume_default=None):
    """The reference's model and sizing flags, plus --skip/--no_skip and --amp."""
    parser.add_argument("--resume", default=resume_default, required=resume_default is None,
                        help="checkpoint to test" + (" (default: %(default)s)" if resume_default else "")
                        + "; a missing released model (SPEC §3) is downloaded to that path")
    parser.add_argument("--no_download", action="store_true", help="never download a missing released model")
    parser.add_argument("--stage", type=int, choices=(0, 1, 2, 3), default=None,
                        help="0/1: encoder-decoder alpha, 2/3: refined alpha (default: from the checkpoint)")
    parser.add_argument("--skip", dest="skip", action="store_true", default=None,
                        help="the model has skip connections (default: from the checkpoint or its file name)")
    parser.add_argument("--no_skip", dest="skip", action="store_false", help="the model has no skip connections")
    parser.add_argument("--crop_or_resize", choices=MODES, default="whole",
                        help="whole: one pass at the size rounded down to /32 and capped at --max_size; "
                             "crop: --size_h×--size_w tiles; resize: one pass at --size_h×--size_w; "
                             "tile: full resolution in overlapping --tile_size windows, bounded memory (default: whole)")
    parser.add_argument("--max_size", type=int, default=1600, help="cap on each side in whole mode (default: 1600)")
    parser.add_argument("--size_h", type=int, default=320, help="tile/resize height for crop/resize (default: 320)")
    parser.add_argument("--size_w", type=int, default=320, help="tile/resize width for crop/resize (default: 320)")
    parser.add_argument("--cuda", action="store_true", help="run on the GPU (default: CPU)")
    parser.add_argument("--amp", action="store_true", help="mixed precision (autocast) on the GPU")
    add_precision_arg(parser)
    parser.add_argument("--tile_size", type=int, default=512,
                        help="window side for --crop_or_resize tile, a multiple of 32 (default: 512)")
    parser.add_argument("--tile_overlap", type=int, default=64,
                        help="minimum overlap of neighbouring windows in tile mode (default: 64)")
    add_cutout_args(parser)


def check_inference_args(args):
    """Flag values the network cannot use are user errors, not crashes mid-run."""
    if args.crop_or_resize == "whole" and (args.max_size < 32 or args.max_size % 32):
        raise UserError(f"--max_size must be a positive multiple of 32 (the network's input sides are), "
                        f"got {args.max_size}")
    if args.crop_or_resize == "tile":
        try:
            check_tile_args(args.tile_size, args.tile_overlap)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    elif args.crop_or_resize != "whole":
        for flag, value in (("--size_h", args.size_h), ("--size_w", args.size_w)):
            if value < 32 or value % 32:
                raise UserError(f"{flag} must be a positive multiple of 32, got {value}")


def add_precision_arg(parser):
    """``--precision``: the exact float32 path (default) or the reduced-precision forward of core.ops.reduced."""
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp32 (default): the exact path; bf16 (CPU with AVX-512 BF16/AMX, or CUDA) and fp16 "
                             "(CUDA): encoder in float32, the rest in the reduced type; somewhat faster, less "
                             "memory, mattes about 0.2 grey levels from fp32 (see README, Performance)")


def check_precision_arg(precision, device):
    """A precision the device cannot run is a user error (one line); warns once where bf16 will be slow."""
    try:
        check_precision(precision, device)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def inference_kwargs(args):
    """Keyword arguments of :func:`predict_folder` from the parsed flags."""
    return dict(mode=args.crop_or_resize, max_size=args.max_size, size=(args.size_h, args.size_w),
                stage=args.stage, amp=args.amp, tile_size=args.tile_size, tile_overlap=args.tile_overlap,
                precision=args.precision)


def missing_checkpoint_hint(path):
    """The one-line message for a checkpoint that is not there."""
    return (f"{path}: no such checkpoint. Download the released model {RELEASED_MODEL} from {RELEASE_URL} "
            f"into model/, or train one here with `bash train.sh` (or the CPU smoke run in the README)")


def require_checkpoint(args, logger):
    """Download ``--resume`` when it is a missing release (unless --no_download); else it must exist."""
    found = os.path.isfile(args.resume) if args.no_download else download_if_missing(args.resume, logger.info)
    if not found:
        raise UserError(missing_checkpoint_hint(args.resume))


def load_for_inference(args, logger):
    """Device and model from the flags: ``(model in eval mode, info)``."""
    require_checkpoint(args, logger)
    device = select_device(args.cuda)
    if args.amp and device.type != "cuda":
        logger.info("--amp has no effect on the CPU")
    check_precision_arg(args.precision, device)
    stage_flag = f"{args.stage_setting}={{}}" if getattr(args, "stage_setting", None) else "--stage {}"
    model, info = load_model(args.resume, stage=args.stage, skip=args.skip, device=device, stage_flag=stage_flag)
    # cuDNN autotuning pays only when every forward has the same size (crop/resize; tile windows)
    setup_backend(device, benchmark=args.crop_or_resize in ("crop", "resize", "tile"))
    arch = info["arch"]
    logger.info(f"model {args.resume}: skip={arch['skip']} ({info['skip_source']}), conv6 {arch['conv6_kernel']}×"
                f"{arch['conv6_kernel']}, refinement head {'yes' if arch['refine'] else 'no'}, "
                f"{trained_for(info)}; device {device}")
    return model, info


def trained_for(info):
    """``trained 2 epochs, best SAD 15.612`` from :func:`core.checkpoint.load_model`'s info.

    Checkpoints store ``epoch`` = the next epoch to run (the reference's convention),
    so a model after 2 epochs holds 3.
    """
    epoch, best = info.get("epoch"), info.get("best_sad")
    parts = [f"trained {plural(int(epoch) - 1, 'epoch')}" if isinstance(epoch, (int, float)) else "epochs unknown"]
    if best is not None and math.isfinite(float(best)):
        parts.append(f"best SAD {float(best):.3f}")
    return ", ".join(parts)


def log_cutouts(logger, paths, cutout):
    """The summary line of the cut-outs: how many, where, and which foreground estimator made them."""
    if paths:
        folder = os.path.dirname(paths[0])
        logger.info(f"wrote {plural(len(paths), 'cut-out')} to {folder} (foreground colours: {cutout['backend']}; "
                    f"{', '.join(os.path.basename(p) for p in paths[:4])}{' …' if len(paths) > 4 else ''})")


def log_speed(logger, seconds):
    if seconds:
        logger.info(f"{sum(seconds) / len(seconds):.3f} s per image on average over {plural(len(seconds), 'image')} "
                    "(prediction only, without reading and writing files)")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Predict alpha mattes for a folder of images and trimaps "
                                                 "and, with --alphaDir, score them (Composition-1k metrics).")
    parser.add_argument("--imgDir", required=True, help="folder of images")
    parser.add_argument("--trimapDir", required=True, help="folder of trimaps (0/128/255), same file names")
    parser.add_argument("--alphaDir", default="", help="folder of ground-truth alphas: score the saved mattes")
    parser.add_argument("--saveDir", required=True, help="folder to write the mattes (and metrics) to")
    add_inference_args(parser)
    parser.add_argument("--stage_setting", help=argparse.SUPPRESS)  # deploy.sh: name STAGE=… in messages
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logger = setup_logging()
    check_inference_args(args)
    cutout = cutout_options(args)  # a bad --background fails before anything is predicted
    if os.path.exists(args.saveDir) and not os.path.isdir(args.saveDir):
        raise UserError(f"{args.saveDir}: --saveDir exists and is not a folder")
    require_checkpoint(args, logger)
    pairs = find_pairs(args.imgDir, args.trimapDir, args.alphaDir or None)
    check_pairs(pairs, args.crop_or_resize, args.max_size)
    model, _ = load_for_inference(args, logger)
    logger.info(f"{len(pairs)} images, mode {args.crop_or_resize}; writing to {args.saveDir}")
    result = predict_folder(model, pairs, args.saveDir, score=bool(args.alphaDir), cutout=cutout,
                            **inference_kwargs(args))
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
