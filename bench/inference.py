"""Whole-image inference: the project's path against a plain transcription of the reference.

    python bench/inference.py                    # 1920×1280 image (network input 1600×1280), 2 runs each
    python bench/inference.py --quick            # 480×320, one run each: a fast sanity check
    python bench/inference.py --variant refine --threads 2 --repeat 3

Both paths predict the same synthetic image (fixed seed; or ``--image`` and
``--trimap``) with the same random weights (fixed seed, He-scaled so the
matte is not saturated) in ``whole`` mode:

* ``reference``: ``tests/reference_impl.py`` — the reference's network
  (every intermediate kept until forward returns, out-of-place ReLU and
  additions, max-pool indices) and its deploy pre/post-processing.
* ``ours``: ``core.inference.predict_matte`` (``DIMNet.forward_lean``).
* ``ours-exact`` (ask for it with ``--paths``): the same with
  ``core.network.FAST_KERNELS`` off, every convolution on the reference's
  oneDNN kernel: the matte equals the reference's bit for bit.

Each run is its own child process, so its peak RSS (``ru_maxrss``) is its own;
runs of the two paths alternate and the best wall time is reported (other
processes on the machine only ever slow a run down). "conv GFLOP/s" divides
the network's convolution FLOPs, counted analytically as direct convolutions
(2·Cin·Cout·k²·H·W per layer), by the whole prediction's wall time (resizing,
input building and the forced uint8 matte included); it is compared with a
4096×4096 float32 matrix product timed in the same run (before and after
the children; the better of the two). NNPACK's FFT and
Winograd kernels do fewer arithmetic operations than that count, so "ours"
reports an effective rate.
"""

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import gc
import tempfile
import time

import numpy as np

from bench.common import (current_rss_mb, emit_result, format_table, load_average, machine_summary,
                          matmul_gflops, peak_rss_mb, run_child)
from core.utils import UserError, run_cli

PATHS = ("reference", "ours", "ours-exact")
DEFAULT_PATHS = ("reference", "ours")
# name -> (DIMNet keyword arguments, stage): the layouts of the released models
VARIANTS = {
    "skip": ({"refine": False, "skip": True, "conv6_kernel": 3}, 1),     # stage1_skip_sad_52.9.pth
    "noskip": ({"refine": False, "skip": False, "conv6_kernel": 3}, 1),  # stage1_sad_54.4.pth
    "refine": ({"refine": True, "skip": False, "conv6_kernel": 1}, 2),   # stage2_norm_balance_sad_57.9.pth
}
QUICK_SIZE = (480, 320)


def parse_size(text):
    """'WxH' -> (w, h)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 1920x1280") from None
    if w < 32 or h < 32:
        raise UserError(f"--size {text}: both sides must be at least 32 pixels")
    return w, h


def synthetic_pair(w, h, seed=0):
    """A deterministic test photo and trimap: BGR uint8 h×w×3 (smooth colours + noise, an
    elliptical 'foreground') and a uint8 trimap (255 inside, 0 outside, a 128 band ~6% of
    the short side wide on the ellipse's edge)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    r = np.hypot((xx - 0.5 * w) / (0.3 * w), (yy - 0.5 * h) / (0.35 * h))
    base = np.stack([128 + 100 * np.sin(xx / 97 + c) * np.cos(yy / 71 - c) for c in range(3)], axis=-1)
    fg = np.stack([200 - 60 * np.cos(xx / 13 + yy / 17 + c) for c in range(3)], axis=-1)
    a = np.clip(1.5 - r, 0, 1)[..., None]
    image = np.clip(a * fg + (1 - a) * base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    band = 0.06 * min(h, w) / (0.3 * w)
    trimap = np.full((h, w), 128, np.uint8)
    trimap[r < 1 - band] = 255
    trimap[r > 1 + band] = 0
    return image, trimap


def bench_state_dict(variant, seed=0):
    """Random weights for ``variant``: He-normal conv weights, N(0, 0.01) biases (fixed seed).

    He scaling keeps the activations' size roughly constant through the 20
    convolutions, so the sigmoid is not saturated and the matte has many levels.
    """
    import torch

    from core.network import DIMNet

    arch, _ = VARIANTS[variant]
    model = DIMNet(**arch)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.Conv2d):
                fan_in = mod.in_channels * mod.kernel_size[0] * mod.kernel_size[1]
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=gen) * 0.01)
    return model.state_dict()


def conv_flops(variant, h, w):
    """Multiply-add FLOPs (2 per MAC) of every convolution for an h×w network input, as direct convolutions."""
    from core.network import DECODER, ENCODER_BLOCKS, DIMNet

    scale = {name: 2 ** i for i, block in enumerate(ENCODER_BLOCKS) for name, _, _ in block}
    scale.update({"conv6_1": 32, "deconv6_1": 32, "deconv1": 1})
    scale.update({name: 2 ** (len(DECODER) - 1 - i) for i, (name, _, _) in enumerate(DECODER)})
    arch, _ = VARIANTS[variant]
    total = 0
    for name, mod in DIMNet(**arch).named_children():
        s = scale.get(name, 1)  # the refinement head works at full resolution
        k = mod.kernel_size[0] * mod.kernel_size[1]
        total += 2 * mod.in_channels * mod.out_channels * k * (h // s) * (w // s)
    return total


# --------------------------------------------------------------------------- #
# Child: one path, one process.

def child(args):
    import torch

    torch.set_num_threads(args.threads)
    image, trimap = load_pair(args)
    arch, stage = VARIANTS[args.variant]
    state = bench_state_dict(args.variant)
    if args.child == "reference":
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
        from reference_impl import ReferenceDIM, reference_predict

        model = ReferenceDIM(stage=stage, skip=arch["skip"], conv6_kernel=arch["conv6_kernel"])
        model.load_state_dict(state, strict=True)
        model.eval()

        def run():
            return reference_predict(model, image, trimap, mode="whole", max_size=args.max_size, stage=stage)
    else:
        from core.inference import predict_matte, setup_backend
        from core.network import DIMNet

        device = setup_backend("cpu")
        if args.child == "ours-exact":
            import core.network

            core.network.FAST_KERNELS = False
        model = DIMNet(**arch)
        model.load_state_dict(state, strict=True)
        model.to(device).eval()

        def run():
            return predict_matte(model, image, trimap, mode="whole", max_size=args.max_size, stage=stage)
    del state
    gc.collect()
    baseline = current_rss_mb()
    times = []
    for _ in range(args.inner):
        start = time.perf_counter()
        matte = run()
        times.append(time.perf_counter() - start)
    np.save(args.out, matte)
    emit_result({"times": times, "baseline_mb": baseline, "peak_mb": peak_rss_mb()})


def load_pair(args):
    if args.image or args.trimap:
        if not (args.image and args.trimap):
            raise UserError("--image and --trimap go together")
        from core.imageio import read_gray, read_image

        image, trimap = read_image(args.image), read_gray(args.trimap)
        if image.shape[:2] != trimap.shape:
            raise UserError(f"{args.trimap}: trimap is {trimap.shape[1]}×{trimap.shape[0]}, "
                            f"image {image.shape[1]}×{image.shape[0]}")
        return image, trimap
    return synthetic_pair(*args.size)


# --------------------------------------------------------------------------- #
# Parent: alternate the paths, compare, print the table.

def child_argv(args, path, out):
    argv = ["--child", path, "--out", out, "--variant", args.variant, "--max_size", str(args.max_size),
            "--threads", str(args.threads), "--inner", str(args.inner), "--size", "x".join(map(str, args.size))]
    if args.image:
        argv += ["--image", os.path.abspath(args.image), "--trimap", os.path.abspath(args.trimap)]
    return argv


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=parse_size, default=None, help="synthetic image WIDTHxHEIGHT (1920x1280)")
    parser.add_argument("--max_size", type=int, default=1600, help="whole-mode cap on each side (1600)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--repeat", type=int, default=None, help="child processes per path (2; --quick 1)")
    parser.add_argument("--inner", type=int, default=1, help="predictions per child process (1)")
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="skip",
                        help="model layout: skip (stage 1 + skip, default), noskip, refine (stage 2)")
    parser.add_argument("--paths", default=",".join(DEFAULT_PATHS),
                        help=f"comma-separated subset of: {','.join(PATHS)} (default {','.join(DEFAULT_PATHS)})")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SIZE[0]}x{QUICK_SIZE[1]}, one run per path")
    parser.add_argument("--image", help="a real photo (BGR as read by OpenCV) instead of the synthetic one")
    parser.add_argument("--trimap", help="its trimap")
    parser.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    import torch

    if args.size is None:
        args.size = QUICK_SIZE if args.quick else (1920, 1280)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 2
    args.threads = args.threads or torch.get_num_threads()
    if args.max_size < 32:
        raise UserError(f"--max_size {args.max_size}: must be at least 32")
    if args.child:
        return child(args)
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if not paths or any(p not in PATHS for p in paths):
        raise UserError(f"--paths {args.paths!r}: choose from {', '.join(PATHS)}")

    from core.inference import whole_size

    image, trimap = load_pair(args)
    h, w = trimap.shape
    net_h, net_w = whole_size(h, w, args.max_size)
    flops = conv_flops(args.variant, net_h, net_w)
    print(f"machine: {machine_summary(args.threads)}")
    print(f"image {w}×{h} -> network input {net_w}×{net_h}, variant {args.variant}, "
          f"{flops / 1e9:.0f} GFLOP of convolutions; load average {load_average():.2f}", flush=True)

    mm_before = matmul_gflops(threads=args.threads)
    results = {p: [] for p in paths}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeat):
            for p in paths:
                out = os.path.join(tmp, f"{p}.npy")
                res = run_child("bench.inference", child_argv(args, p, out))
                res["matte"] = np.load(out)
                results[p].append(res)
                print(f"  run {r + 1}/{args.repeat} {p:9s}: {min(res['times']):7.2f} s, "
                      f"peak RSS {res['peak_mb']:7.0f} MiB (load {load_average():.2f})", flush=True)
    mm = max(mm_before, matmul_gflops(threads=args.threads))  # the better of before and after: less disturbed

    rows, best = [], {}
    for p in paths:
        runs = results[p]
        t = min(min(r["times"]) for r in runs)
        peak = min(r["peak_mb"] for r in runs)
        base = min(r["baseline_mb"] for r in runs)
        best[p] = (t, peak, base)
        gf = flops / t / 1e9
        rows.append([p, f"{t:.2f}", " ".join(f"{x:.1f}" for r in runs for x in r["times"]), f"{gf:.1f}",
                     f"{100 * gf / mm:.0f}%", f"{peak:.0f}", f"{base:.0f}", f"{peak - base:.0f}"])
    print()
    print(format_table(["path", "best s", "all runs s", "conv GFLOP/s", "of matmul", "peak RSS MiB",
                        "baseline MiB", "peak-baseline"], rows))
    print(f"matmul 4096×4096 float32: {mm:.1f} GFLOP/s ({args.threads} threads)")
    for p in paths:
        m = results[p][-1]["matte"]
        unknown = m[trimap == 128]
        consistent = all(np.array_equal(r["matte"], m) for r in results[p])
        print(f"{p}: unknown-region matte levels: {len(np.unique(unknown))} distinct, "
              f"{100 * np.mean((unknown > 0) & (unknown < 255)):.0f}% strictly between 0 and 255; "
              f"identical across runs: {consistent}")
    for p in paths:
        if p == "reference" or "reference" not in paths:
            continue
        (tr, pr, br), (to, po, bo) = best["reference"], best[p]
        diff = np.abs(results[p][-1]["matte"].astype(int) - results["reference"][-1]["matte"].astype(int))
        print(f"{p} vs reference: {tr / to:.2f}× faster; peak RSS {po / pr:.2f}× "
              f"(above baseline {(po - bo) / max(pr - br, 1e-9):.2f}×); "
              f"max grey-level difference {diff.max()}, {np.count_nonzero(diff)} of {diff.size} pixels differ")
    return 0


if __name__ == "__main__":
    run_cli(main)
