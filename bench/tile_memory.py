"""Peak memory and time of ``tile`` vs ``whole`` inference, and how far tile mode
is from a whole-image pass where both run at full resolution.

    python bench/tile_memory.py                  # all cases, CPU (a few minutes on 2 cores)
    python bench/tile_memory.py --quick          # smaller images, for a smoke run
    python bench/tile_memory.py --only memory    # just the 4000×3000 whole-vs-tile memory and time

Every case runs in its own subprocess on PNGs the parent wrote, and the peak
resident memory is measured during the prediction alone (VmHWM, reset after
loading). The network is a DIMNet with random fixed-seed weights scaled
layer by layer (:func:`random_model`) so its alpha is spread over (0, 1) and
depends on the image, not a saturated or constant output; timings and memory
do not depend on the weights, the tile-vs-whole differences do (a trained
model's may be smaller or larger). The image is a smooth random texture with
an elliptic subject whose unknown band is ``--band`` pixels wide
(:func:`synthetic_scene`), so tile mode skips the windows away from the edge.
"""

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import tempfile
import time

import cv2
import numpy as np
import torch
import torch.nn as nn

from bench.common import emit_result, load_average, machine_summary, reset_peak, run_child, status_mb
from core.imageio import read_gray, read_image, write_image
from core.inference import predict
from core.network import DIMNet
from core.preprocess import make_input
from core.tiling import plan_tiles, predict_tiles
from core.utils import UserError, run_cli


def synthetic_scene(h, w, seed=0, band=None):
    """A test photo and trimap: (BGR uint8 h×w×3, trimap uint8 h×w).

    The image is a smooth random colour texture plus grain; the trimap an
    ellipse (radii 0.35·h, 0.3·w) whose unknown band is ``band`` pixels wide
    (default 20 % of the radius), 255 inside, 0 outside.
    """
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (max(2, h // 16), max(2, w // 16), 3)).astype(np.float32)
    img = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    img = np.clip(img + rng.normal(0, 8, (h, w, 3)).astype(np.float32), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ry, rx = 0.35 * h, 0.3 * w
    r = np.hypot((yy - h / 2) / ry, (xx - w / 2) / rx)
    half = (band / 2 / min(ry, rx)) if band else 0.1
    trimap = np.where(r < 1 - half, 255, np.where(r > 1 + half, 0, 128)).astype(np.uint8)
    return img, trimap


def random_model(seed=0, refine=False, skip=True, raw_std=2.0):
    """A DIMNet with random weights whose alpha is spread over (0, 1), eval mode, CPU.

    Kaiming-normal weights, zero biases, then each convolution (in forward
    order) is rescaled so its output has unit standard deviation on a 128×128
    synthetic scene, and the last one (``deconv1``, the logit) ``raw_std``.
    PyTorch's default initialisation instead shrinks every layer's output, so
    the alpha is nearly constant and any comparison would pass trivially.
    """
    torch.manual_seed(seed)
    model = DIMNet(refine=refine, skip=skip).eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    for conv in convs:
        nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        nn.init.zeros_(conv.bias)

    def rescale(module, inputs, output):
        scale = output.std() / (raw_std if module is model.deconv1 else 1.0)
        module.weight.div_(scale)
        return output / scale  # later layers calibrate on the rescaled output

    hooks = [conv.register_forward_hook(rescale) for conv in convs]
    image, trimap = synthetic_scene(128, 128, seed)
    with torch.no_grad():
        model(torch.from_numpy(make_input(image, trimap))[None])
    for hook in hooks:
        hook.remove()
    return model


def run_case(case, image_path, trimap_path, tile, overlap, max_size):
    """One measurement in this process; returns a dict of numbers.

    ``rss_before_mb``: resident memory with torch, the model, image and
    trimap loaded; ``peak_rss_mb``: the highest resident memory during the
    prediction (VmHWM after resetting it).
    """
    model = random_model()
    image, trimap = read_image(image_path), read_gray(trimap_path)
    height, width = trimap.shape
    out = {"case": case, "height": height, "width": width}
    base = status_mb("VmRSS")
    reset_peak()
    start = time.perf_counter()
    if case == "whole":
        alpha = predict(model, image, trimap, mode="whole", max_size=max_size)
        out["max_size"] = max_size
    elif case == "tile":
        plan, skipped = plan_tiles(trimap, tile, overlap)
        alpha = predict_tiles(model, image, trimap, tile=tile, overlap=overlap, progress=False)
        out.update(tile=tile, overlap=overlap, tiles_predicted=len(plan), tiles_skipped=skipped)
    elif case == "compare":
        whole = predict(model, image, trimap, mode="whole", max_size=max(height, width))
        alpha = predict_tiles(model, image, trimap, tile=tile, overlap=overlap, progress=False)
        diff = np.abs(alpha - whole)
        unknown = trimap == 128
        plan, skipped = plan_tiles(trimap, tile, overlap)
        out.update(tile=tile, overlap=overlap, tiles_predicted=len(plan), tiles_skipped=skipped,
                   max_abs_unknown=float(diff[unknown].max()), mean_abs_unknown=float(diff[unknown].mean()),
                   max_abs_all=float(diff.max()), mean_abs_all=float(diff.mean()),
                   grey_levels_differing_unknown=float(np.mean((alpha * 255).astype(np.uint8)[unknown]
                                                               != (whole * 255).astype(np.uint8)[unknown])))
    else:
        raise UserError(f"unknown case {case!r}; choose whole, tile or compare")
    out["seconds"] = round(time.perf_counter() - start, 2)
    out["rss_before_mb"] = round(base)
    out["peak_rss_mb"] = round(status_mb("VmHWM"))
    out["alpha_mean"] = float(alpha.mean())
    return out


def _child(args):
    """Run one case in a fresh ``python -m bench.tile_memory`` process; its result dict."""
    return run_child("bench.tile_memory", [str(a) for a in args])


def write_scene(folder, height, width, band=None):
    """Write :func:`synthetic_scene` as PNGs in ``folder``; returns (image path, trimap path)."""
    image, trimap = synthetic_scene(height, width, seed=1, band=band)
    paths = (os.path.join(folder, f"image_{width}x{height}.png"), os.path.join(folder, f"trimap_{width}x{height}.png"))
    write_image(paths[0], image)
    write_image(paths[1], trimap)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description="Memory and time of tile vs whole inference (CPU).")
    parser.add_argument("--case", choices=("whole", "tile", "compare"), help="run one case here and print JSON")
    parser.add_argument("--image", help="with --case: the image")
    parser.add_argument("--trimap", help="with --case: its trimap")
    parser.add_argument("--height", type=int, default=3000, help="big image height (default 3000)")
    parser.add_argument("--width", type=int, default=4000, help="big image width (default 4000)")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--max_size", type=int, default=1600)
    parser.add_argument("--band", type=int, default=60, help="unknown band of the big image in pixels (default 60)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--only", choices=("memory", "compare"), help="run one half of the benchmark")
    parser.add_argument("--quick", action="store_true", help="smaller images (a smoke run)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.case:
        if not (args.image and args.trimap):
            raise UserError("--case needs --image and --trimap")
        emit_result(run_case(args.case, args.image, args.trimap, args.tile, args.overlap, args.max_size))
        return 0
    common = ["--threads", args.threads, "--tile", args.tile, "--overlap", args.overlap]
    big = (1500, 2000, 800) if args.quick else (args.height, args.width, args.max_size)
    small = ((256, 320),) if args.quick else ((480, 640), (768, 1024))
    load = load_average()
    print(f"{machine_summary(args.threads)}; load average {'?' if load is None else f'{load:.1f}'}; "
          f"tile {args.tile}, overlap {args.overlap}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.only != "compare":
            h, w, max_size = big
            image, trimap = write_scene(tmp, h, w, args.band)
            for case in ("whole", "tile"):
                r = _child(["--case", case, "--image", image, "--trimap", trimap, "--max_size", max_size]
                                + common)
                extra = (f"max_size {max_size}" if case == "whole"
                         else f"{r['tiles_predicted']} tiles predicted, {r['tiles_skipped']} skipped")
                print(f"{case:5s} {w}×{h} ({extra}): {r['seconds']:.1f} s, peak RSS {r['peak_rss_mb']} MB "
                      f"during prediction ({r['peak_rss_mb'] - r['rss_before_mb']} MB above the "
                      f"{r['rss_before_mb']} MB with torch, model and image loaded)", flush=True)
        if args.only != "memory":
            for h, w in small:
                image, trimap = write_scene(tmp, h, w)
                r = _child(["--case", "compare", "--image", image, "--trimap", trimap] + common)
                print(f"tile vs whole {w}×{h} ({r['tiles_predicted']} tiles): unknown region max |Δα| "
                      f"{r['max_abs_unknown']:.4f} ({r['max_abs_unknown'] * 255:.1f} grey levels), mean "
                      f"{r['mean_abs_unknown']:.4f} ({r['mean_abs_unknown'] * 255:.2f} grey levels); "
                      f"whole image max {r['max_abs_all']:.4f}, mean {r['mean_abs_all']:.4f}; "
                      f"{100 * r['grey_levels_differing_unknown']:.1f}% of unknown pixels differ in the 8-bit matte",
                      flush=True)
    return 0


if __name__ == "__main__":
    run_cli(main)
