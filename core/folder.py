"""The folder workflow: pair images with trimaps, check them, predict and score every pair (SPEC §9).

Images and trimaps pair by file name (extension may differ); every pair is
checked (exists, decodes, same size, trimap values) before anything is
predicted. Each matte is written as an 8-bit PNG named like its image
(``.png``); with ground truth the saved matte (the exact 8-bit array written)
is scored with the Composition-1k metrics (``core.metrics``).

Used by ``core/test.py``, ``core/demo.py``, ``tools/app.py`` (model loading)
and training-time validation. :func:`predict_pairs` is the loop over any list
of pairs and returns one :class:`ImageResult` per image; :func:`summarize`
turns those into a :class:`FolderResult`, so a caller that splits the pairs
(one share per process) can gather the per-image results and summarise once.
"""

import math
import os
import time
from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor

from tqdm import tqdm

from core.checkpoint import RELEASE_URL, load_model, unwrap
from core.cutout import cutout_names, write_cutouts
from core.data import list_images
from core.imageio import read_gray, read_image, write_image
from core.inference import check_trimap, choose_mode, predict_matte, setup_backend, shrink_note, whole_size
from core.metrics import (compute_metrics, format_table, mean_metrics, read_alpha, read_trimap, write_metrics_csv,
                          write_metrics_json)
from core.options import RELEASED_MODEL
from core.outputs import check_outputs_maker, model_maker, record_outputs
from core.release import TRAIN_HINT, download_if_missing
from core.sharding import Clock, Ranks, bar_options, speed_lines, unshard
from core.utils import UserError, plural, preview, select_device, setup_logging

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
    mode = choose_mode(mode, h, w, max_size)
    if mode in ("whole", "tile"):  # tile mode needs only both sides >= 32
        try:
            whole_size(h, w, max_size if mode == "whole" else max(h, w, 32))
        except ValueError as exc:
            raise UserError(f"{pair.image}: {exc}") from None
    return shrink_note(h, w, max_size) if mode == "whole" else None


def pair_problems(pairs, mode="whole", max_size=1600, workers=None, progress=True):
    """What is wrong with each pair, in order: ``(problem, note)`` per pair (see :func:`check_pairs`), where
    ``problem`` is the refusal line or None and ``note`` the line saying how whole mode shrinks it, or None.

    Ranks that split the pairs check their share each and gather these lists
    (``core.sharding``), so :func:`raise_problems` gives one process's line.
    """
    workers = workers or min(8, os.cpu_count() or 1)
    problems = []
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(_check_one, p, mode, max_size) for p in pairs]
        try:
            for fut in tqdm(futures, desc="checking", unit="img", disable=_no_bar(progress), leave=False):
                try:
                    problems.append((None, fut.result()))
                except UserError as exc:
                    problems.append((str(exc), None))
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return problems


def raise_problems(problems):
    """One :class:`UserError` naming every bad pair of :func:`pair_problems`' list (the first eight in full);
    without one, the shrink notes, one (or None) per pair."""
    bad = [p for p, _ in problems if p is not None]
    if len(bad) == 1:
        raise UserError(bad[0])
    if bad:
        raise UserError(f"{len(bad)} of {len(problems)} pairs are unusable: " + "; ".join(bad[:8])
                        + (f"; … and {len(bad) - 8} more" if len(bad) > 8 else ""))
    return [note for _, note in problems]


def check_pairs(pairs, mode="whole", max_size=1600, workers=None, progress=True):
    """Check every pair before anything is predicted.

    Each image, trimap and alpha is decoded (in a few threads: OpenCV releases
    the GIL); image and trimap (and alpha) must have the same size, ``whole``
    mode needs both sides ≥ 32. Trimap values other than 0/128/255 only warn
    (:func:`core.inference.check_trimap`). Raises one :class:`UserError`
    naming every bad file (the first eight in full), so one run shows them all.
    Returns ``[(pair, note)]`` for the photos ``whole`` mode shrinks to fit
    ``max_size`` (:func:`core.inference.shrink_note`), for the caller to say.
    """
    notes = raise_problems(pair_problems(pairs, mode, max_size, workers, progress))
    return [(pair, note) for pair, note in zip(pairs, notes) if note]


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


ImageResult = namedtuple("ImageResult", "name seconds metrics cutouts")
ImageResult.__doc__ = """One predicted pair. ``name``: :attr:`Pair.name`; ``seconds``: prediction time
(without reading and writing files); ``metrics``: ``{"sad", "mse", "grad", "conn"}``
of the written matte, or None when not scored; ``cutouts``: the cut-out files written."""


def predict_pairs(model, pairs, save_dir=None, score=False, progress=True, should_stop=None, cutout=None, bar=None,
                  **predict):
    """Predict ``pairs`` in order: ``(results, stopped)``, one :class:`ImageResult` per predicted pair.

    ``predict``: keyword arguments of :func:`core.inference.predict_matte`
    (:meth:`core.options.InferenceOptions.predict_kwargs`); the other
    arguments as :func:`predict_folder`; ``bar``: more tqdm options (a rank's
    ``desc`` and ``position``, :func:`core.sharding.bar_options`). ``stopped``: ``should_stop()`` ended
    the loop before the last pair. The model's train/eval mode is restored.
    """
    if save_dir is not None:
        check_outputs(pairs, save_dir)
        os.makedirs(save_dir, exist_ok=True)
    net = unwrap(model)
    was_training = net.training
    net.eval()
    results = []
    try:
        bar = tqdm(pairs, unit="img", disable=_no_bar(progress), **{"desc": "predicting", **(bar or {})})
        for pair in bar:
            if should_stop is not None and should_stop():
                return results, True
            image, trimap = read_image(pair.image), read_gray(pair.trimap)
            start = time.perf_counter()
            matte = predict_matte(net, image, trimap, **predict)
            seconds = time.perf_counter() - start  # predict_matte returns a CPU array: GPU work is done
            cutouts = []
            if save_dir is not None:
                write_image(os.path.join(save_dir, pair.name), matte)
                if cutout:
                    cutouts = write_cutouts(save_dir, pair.name, image, matte, **cutout)
            metrics = score_matte(pair, matte) if score and pair.alpha else None
            results.append(ImageResult(pair.name, seconds, metrics, cutouts))
            bar.set_postfix(s_per_img=f"{seconds:.3f}")
    finally:
        net.train(was_training)
    return results, False


def summarize(results, stopped=False):
    """A :class:`FolderResult` from :func:`predict_pairs`' results (in the order given: the pairs' order)."""
    rows = {r.name: r.metrics for r in results if r.metrics is not None}
    means = mean_metrics(rows) if rows and not stopped else None
    return FolderResult([r.seconds for r in results], rows, means, stopped,
                        [path for r in results for path in r.cutouts])


def predict_folder(model, pairs, save_dir=None, mode="whole", max_size=1600, size=(320, 320), stage=None, amp=False,
                   tile_size=512, tile_overlap=64, score=False, progress=True, should_stop=None, cutout=None,
                   precision="fp32"):
    """Predict every pair; write its 8-bit matte to ``save_dir/pair.name``; optionally score it.

    The one loop behind ``core/test.py``, ``core/demo.py`` and training-time validation
    (:func:`predict_pairs`, then :func:`summarize`).

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
    results, stopped = predict_pairs(model, pairs, save_dir, score=score, progress=progress, should_stop=should_stop,
                                     cutout=cutout, mode=mode, max_size=max_size, size=size, stage=stage, amp=amp,
                                     tile_size=tile_size, tile_overlap=tile_overlap, precision=precision)
    return summarize(results, stopped)


def predict_and_score(options, img_dir, trimap_dir, alpha_dir, save_dir, cutout=None, ranks=None, force=False):
    """Each rank predicts its share of the pairs and writes those mattes; rank 0 scores and summarises all.

    Every step that can fail runs on every rank and stops them all with the
    same line (:meth:`core.sharding.Ranks.run_all`); the per-image results come
    back in the pairs' order, so rank 0 writes what one process writes. The
    run of ``core/test.py``: ``options`` (:class:`core.options.InferenceOptions`),
    the folders (``alpha_dir`` None: nothing is scored), ``cutout``
    (:func:`core.cutout.cutout_options`), ``ranks`` (:func:`core.sharding.start`;
    default one process), ``force`` (write into a folder whose ``made_by.json``
    names another model: :mod:`core.outputs`). Returns 0.
    """
    ranks = ranks or Ranks()
    logger = setup_logging(rank=ranks.rank)
    # one download per machine (the first rank there); then every rank finds the file
    ranks.run_all(lambda: require_checkpoint(options, logger) if ranks.local_rank == 0 else None, "fetching the model")
    pairs = ranks.run_all(lambda: find_pairs(img_dir, trimap_dir, alpha_dir), "pairing")
    mine = ranks.share(pairs)
    notes = raise_problems(ranks.in_order(lambda: pair_problems(mine, options.mode, options.max_size),
                                          "checking the pairs"))
    shrunk = [(pair, note) for pair, note in zip(pairs, notes) if note]
    if shrunk and ranks.main:  # the reference's protocol (Composition-1k is tested this way), but said
        logger.info(f"whole mode shrinks {plural(len(shrunk), 'image')} of {len(pairs)} to fit --max_size "
                    f"{options.max_size}; e.g. {shrunk[0][0].image}: {shrunk[0][1]}")
    model, info = ranks.run_all(lambda: load_for_inference(options, logger, ranks.local_rank), "loading the model")
    # another model's mattes in save_dir are neither replaced nor mixed in (core.outputs); never over an input
    maker = model_maker(options, info)
    targets = [f for p in pairs for f in (p.name, *cutout_names(p.name, **(cutout or {})))]
    targets += ["metrics.csv", "metrics.json"] if alpha_dir is not None else []

    def check_folder():
        check_outputs_maker(save_dir, targets, maker, force)
        check_outputs(pairs, save_dir)

    ranks.run_all(check_folder, "checking the output folder")
    ranks.run_all(lambda: record_outputs(save_dir, targets, maker) if ranks.main else None, "recording the outputs")
    on = f" on {ranks.world} ranks" if ranks.distributed else ""
    logger.info(f"{len(pairs)} images{on}, mode {options.mode}; writing to {save_dir}")

    def predict():
        clock = Clock()
        results, _ = predict_pairs(model, mine, save_dir, score=alpha_dir is not None, cutout=cutout,
                                   bar=bar_options(ranks, "predicting"), **options.predict_kwargs())
        return results, clock.report(ranks, len(results), next(model.parameters()).device)

    answers = ranks.run_all(predict, "predicting", gather=True)
    if not ranks.main:
        return 0
    result = summarize(unshard([results for results, _ in answers]))
    log_speed(logger, result.seconds)
    for line in speed_lines([report for _, report in answers]):
        logger.info(line)
    logger.info(f"wrote {plural(len(pairs), 'matte')} to {save_dir}")
    log_cutouts(logger, result.cutouts, cutout)
    if alpha_dir is not None:
        print(format_table(result.rows, result.means))
        csv_path, json_path = write_scores(save_dir, result.rows, result.means)
        logger.info(f"wrote {csv_path} and {json_path}")
    return 0


def write_scores(save_dir, rows, means):
    """Write ``metrics.csv`` and ``metrics.json`` into ``save_dir``; returns their paths."""
    csv_path, json_path = os.path.join(save_dir, "metrics.csv"), os.path.join(save_dir, "metrics.json")
    write_metrics_csv(csv_path, rows, means)
    write_metrics_json(json_path, rows, means)
    return csv_path, json_path


# --------------------------------------------------------------------------- #
# Loading the model; summary lines
# --------------------------------------------------------------------------- #
def missing_checkpoint_hint(path):
    """The one-line message for a checkpoint that is not there."""
    return (f"{path}: no such checkpoint. Download the released model {RELEASED_MODEL} from {RELEASE_URL} "
            f"into model/, {TRAIN_HINT}")


def require_checkpoint(options, logger):
    """Download ``options.resume`` when it is a missing release (unless ``download`` is off); else it must exist."""
    found = download_if_missing(options.resume, logger.info) if options.download else os.path.isfile(options.resume)
    if not found:
        raise UserError(missing_checkpoint_hint(options.resume))


def load_for_inference(options, logger, local_rank=0):
    """Device and model from :class:`core.options.InferenceOptions` (precision already checked against
    the device type): ``(model in eval mode, info)``. ``local_rank``: the GPU of this rank under torchrun."""
    require_checkpoint(options, logger)
    device = select_device(options.cuda, local_rank)
    if options.amp and device.type != "cuda":
        logger.info("--amp has no effect on the CPU")
    model, info = load_model(options.resume, stage=options.stage, skip=options.skip, device=device,
                             stage_flag=options.stage_flag)
    # cuDNN autotuning pays only when every forward has the same size (crop/resize; tile windows)
    setup_backend(device, benchmark=options.mode in ("crop", "resize", "tile"))
    arch = info["arch"]
    logger.info(f"model {options.resume}: skip={arch['skip']} ({info['skip_source']}), conv6 {arch['conv6_kernel']}×"
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
    """The summary line of the prediction times (nothing when no image was predicted)."""
    if seconds:
        logger.info(f"{sum(seconds) / len(seconds):.3f} s per image on average over {plural(len(seconds), 'image')} "
                    "(prediction only, without reading and writing files)")
