"""Inference speed, memory and agreement: the project's paths against a plain transcription of the reference.

    python bench/inference.py              # the whole table: whole image, tile mode, 320×320, real examples
    python bench/inference.py --quick      # 480×320 image, one run each, no real examples: a fast sanity check
    python bench/inference.py --cases whole --paths reference,fp32 --threads 1 --repeat 5

Every path predicts the same synthetic image (fixed seed; or ``--image`` and
``--trimap``) with the same random weights (fixed seed, He-scaled so the
matte is not saturated):

* ``reference``: ``tests/reference_impl.py`` — the reference's network
  (every intermediate kept until forward returns, out-of-place ReLU and
  additions, max-pool indices) and its deploy pre/post-processing.
* ``fp32``: ``core.inference.predict_matte`` (``core.ops.lean``), the default.
* ``fp32-exact``: the same with ``exact=True``, every
  convolution on the reference's oneDNN kernel: the matte equals the reference's bit for bit.
* ``bf16``: ``predict_matte(..., precision="bf16")`` (``core.ops.reduced``).

Cases: ``whole`` (1920×1280 → network input 1600×1280), ``tile`` (the same
image at full resolution in 512-pixel windows; the reference has no tile mode)
and ``320`` (``resize`` mode: one 320×320 forward, timed over ``--inner_320``
predictions per process). Each run is its own child process, so its peak RSS
(``ru_maxrss``) is its own; the paths alternate within every repeat, and the
table gives the median and the range (min–max) over the repeats: on a machine
shared with other jobs single runs vary by 2× and more, so compare medians
and quote ranges. "conv GFLOP/s" divides the network's convolution FLOPs,
counted as direct convolutions (2·Cin·Cout·k²·H·W per layer), by the median
wall time of the whole prediction. The last section predicts the five real
examples of ``../shared/data/dim-examples`` (``--examples``) in ``whole``
mode with fp32 and bf16 and gives the difference of the written mattes in
the unknown region, in grey levels.
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

from bench.common import (cpu_features, current_rss_mb, emit_result, format_table, load_average, machine_summary,
                          matmul_gflops, median_range, peak_rss_mb, run_child)
from core.utils import UserError, run_cli

PATHS = ("reference", "fp32", "fp32-exact", "bf16")
CASES = ("whole", "tile", "320")
# name -> (DIMNet keyword arguments, stage): the layouts of the released models
VARIANTS = {
    "skip": ({"refine": False, "skip": True, "conv6_kernel": 3}, 1),     # stage1_skip_sad_52.9.pth
    "noskip": ({"refine": False, "skip": False, "conv6_kernel": 3}, 1),  # stage1_sad_54.4.pth
    "refine": ({"refine": True, "skip": False, "conv6_kernel": 1}, 2),   # stage2_norm_balance_sad_57.9.pth
}
QUICK_SIZE = (480, 320)
EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data",
                        "dim-examples")


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
# Child: one path, one case, one process.

def case_kwargs(args):
    """``predict_matte`` keyword arguments of ``args.case``."""
    if args.case == "tile":
        return {"mode": "tile", "tile_size": args.tile_size, "tile_overlap": 64}
    if args.case == "320":
        return {"mode": "resize", "size": (320, 320)}
    return {"mode": "whole", "max_size": args.max_size}


def child(args):
    import torch

    torch.set_num_threads(args.threads)
    image, trimap = load_pair(args)
    arch, stage = VARIANTS[args.variant]
    state = bench_state_dict(args.variant)
    kw = case_kwargs(args)
    if args.child == "reference":
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
        from reference_impl import ReferenceDIM, reference_predict

        model = ReferenceDIM(stage=stage, skip=arch["skip"], conv6_kernel=arch["conv6_kernel"])
        model.load_state_dict(state, strict=True)
        model.eval()
        ref_kw = {"mode": kw["mode"], "max_size": kw.get("max_size", 1600)}
        if "size" in kw:
            ref_kw.update(size_h=kw["size"][0], size_w=kw["size"][1])

        def run():
            return reference_predict(model, image, trimap, stage=stage, **ref_kw)
    else:
        from core.inference import predict_matte, setup_backend
        from core.network import DIMNet

        device = setup_backend("cpu")
        model = DIMNet(**arch)
        model.load_state_dict(state, strict=True)
        model.to(device).eval()
        precision = "bf16" if args.child == "bf16" else "fp32"
        exact = args.child == "fp32-exact"

        def run():
            return predict_matte(model, image, trimap, stage=stage, precision=precision, exact=exact, **kw)
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
# Parent: alternate the paths, compare, print the tables.

def child_argv(args, case, path, out, inner):
    argv = ["--child", path, "--case", case, "--out", out, "--variant", args.variant, "--max_size",
            str(args.max_size), "--tile_size", str(args.tile_size), "--threads", str(args.threads),
            "--inner", str(inner), "--size", "x".join(map(str, args.size))]
    if args.image:
        argv += ["--image", os.path.abspath(args.image), "--trimap", os.path.abspath(args.trimap)]
    return argv


def grey_diff(a, b, trimap):
    """(mean, max) absolute difference of two uint8 mattes over the unknown region (trimap 128)."""
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))[trimap == 128]
    return (float(d.mean()), int(d.max())) if d.size else (0.0, 0)


def run_case(args, case, paths, trimap, flops):
    """Alternate the paths' child processes ``args.repeat`` times; print and return the case's table rows."""
    inner = args.inner_320 if case == "320" else args.inner
    results = {p: [] for p in paths}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeat):
            for p in paths:
                out = os.path.join(tmp, f"{p}.npy")
                res = run_child("bench.inference", child_argv(args, case, p, out, inner))
                res["matte"] = np.load(out)
                res["time"] = float(np.median(res["times"]))
                results[p].append(res)
                print(f"  {case} run {r + 1}/{args.repeat} {p:10s}: {res['time']:7.3f} s, "
                      f"peak RSS {res['peak_mb']:6.0f} MiB (load {load_average():.2f})", flush=True)
    med = {p: float(np.median([r["time"] for r in results[p]])) for p in paths}
    base = "fp32-exact" if "fp32-exact" in paths else paths[0]
    rows = []
    for p in paths:
        runs = results[p]
        t_med, t_lo, t_hi = median_range([r["time"] for r in runs])
        peak = float(np.median([r["peak_mb"] for r in runs]))
        above = float(np.median([r["peak_mb"] - r["baseline_mb"] for r in runs]))
        consistent = all(np.array_equal(r["matte"], runs[-1]["matte"]) for r in runs)
        row = [p, f"{t_med:.3f}", f"{t_lo:.3f}–{t_hi:.3f}", f"{med[base] / t_med:.2f}×"]
        if "fp32" in paths:
            row.append(f"{med['fp32'] / t_med:.2f}×")
        if "reference" in paths:
            row.append(f"{med['reference'] / t_med:.2f}×")
        if flops:
            row.append(f"{flops / t_med / 1e9:.0f}")
        row += [f"{peak:.0f}", f"{above:.0f}"]
        if "fp32" in paths:
            mean, mx = grey_diff(runs[-1]["matte"], results["fp32"][-1]["matte"], trimap)
            row.append(f"{mean:.3f} / {mx}")
        if "reference" in paths:
            mean, mx = grey_diff(runs[-1]["matte"], results["reference"][-1]["matte"], trimap)
            row.append(f"{mean:.3f} / {mx}")
        row.append("yes" if consistent else "NO")
        rows.append(row)
    headers = ["path", "median s", f"range s ({args.repeat} runs)", f"speed vs {base}"]
    if "fp32" in paths:
        headers.append("vs fp32")
    if "reference" in paths:
        headers.append("vs reference")
    if flops:
        headers.append("conv GFLOP/s")
    headers += ["peak RSS MiB", "above baseline"]
    if "fp32" in paths:
        headers.append("grey diff vs fp32 mean/max")
    if "reference" in paths:
        headers.append("vs reference mean/max")
    headers.append("same every run")
    print()
    print(format_table(headers, rows))
    print(flush=True)
    return rows


def quality(args):
    """fp32 vs bf16 mattes of the real examples in whole mode; prints a table, returns the overall mean."""
    import torch

    from core.imageio import read_gray, read_image
    from core.inference import predict_matte
    from core.network import DIMNet

    folder = args.examples
    names = sorted(os.listdir(os.path.join(folder, "image")))
    arch, stage = VARIANTS[args.variant]
    model = DIMNet(**arch)
    model.load_state_dict(bench_state_dict(args.variant), strict=True)
    model.eval()
    torch.set_num_threads(args.threads)
    rows, diffs = [], []
    for name in names:
        image = read_image(os.path.join(folder, "image", name))
        trimap = read_gray(os.path.join(folder, "trimap", name))
        a = predict_matte(model, image, trimap, mode="whole", max_size=args.max_size, stage=stage)
        b = predict_matte(model, image, trimap, mode="whole", max_size=args.max_size, stage=stage, precision="bf16")
        d = np.abs(a.astype(np.int16) - b.astype(np.int16))[trimap == 128]
        diffs.append(d)
        rows.append([name, f"{image.shape[1]}×{image.shape[0]}", f"{d.size}", f"{d.mean():.3f}", f"{d.max()}",
                     f"{100 * np.count_nonzero(d) / d.size:.1f}%"])
        print(f"  {name}: mean {d.mean():.3f}, max {d.max()}", flush=True)
    d = np.concatenate(diffs)
    rows.append(["all", "", f"{d.size}", f"{d.mean():.3f}", f"{d.max()}", f"{100 * np.count_nonzero(d) / d.size:.1f}%"])
    print()
    print(f"bf16 vs fp32 on the real examples ({folder}), whole mode, max size {args.max_size}, variant "
          f"{args.variant}, unknown region (trimap 128), grey levels of the written 8-bit mattes:")
    print(format_table(["example", "size", "unknown px", "mean diff", "max diff", "pixels differing"], rows))
    return float(d.mean())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=parse_size, default=None, help="synthetic image WIDTHxHEIGHT (1920x1280)")
    parser.add_argument("--max_size", type=int, default=1600, help="whole-mode cap on each side (1600)")
    parser.add_argument("--tile_size", type=int, default=None, help="tile-mode window (512; --quick 256)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--repeat", type=int, default=None, help="child processes per path and case (3; --quick 1)")
    parser.add_argument("--inner", type=int, default=1, help="predictions per child process, whole/tile (1)")
    parser.add_argument("--inner_320", type=int, default=None, help="predictions per child process, 320 (5; --quick 2)")
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="skip",
                        help="model layout: skip (stage 1 + skip, default), noskip, refine (stage 2)")
    parser.add_argument("--paths", default=",".join(PATHS),
                        help=f"comma-separated subset of: {','.join(PATHS)} (default: all)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of: {','.join(CASES)}")
    parser.add_argument("--examples", default=EXAMPLES,
                        help="folder with image/ and trimap/ of real examples for the bf16 agreement table "
                             "(default ../shared/data/dim-examples; 'none' to skip; skipped by --quick)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SIZE[0]}x{QUICK_SIZE[1]}, one run per path")
    parser.add_argument("--image", help="a real photo (BGR as read by OpenCV) instead of the synthetic one")
    parser.add_argument("--trimap", help="its trimap")
    parser.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--case", choices=CASES, default="whole", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    import torch

    if args.size is None:
        args.size = QUICK_SIZE if args.quick else (1920, 1280)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.inner_320 is None:
        args.inner_320 = 2 if args.quick else 5
    if args.tile_size is None:
        args.tile_size = 256 if args.quick else 512
    args.threads = args.threads or torch.get_num_threads()
    if args.max_size < 32:
        raise UserError(f"--max_size {args.max_size}: must be at least 32")
    if args.child:
        return child(args)
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if not paths or any(p not in PATHS for p in paths):
        raise UserError(f"--paths {args.paths!r}: choose from {', '.join(PATHS)}")
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if not cases or any(c not in CASES for c in cases):
        raise UserError(f"--cases {args.cases!r}: choose from {', '.join(CASES)}")

    from core.inference import whole_size

    image, trimap = load_pair(args)
    h, w = trimap.shape
    net_h, net_w = whole_size(h, w, args.max_size)
    print(f"machine: {machine_summary(args.threads)}")
    print(f"CPU features: {cpu_features()}")
    print(f"image {w}×{h}, variant {args.variant}; load average {load_average():.2f}. Timings: median and range "
          f"over {args.repeat} alternating runs per path (a shared machine only ever slows a run down).", flush=True)
    mm_before = matmul_gflops(threads=args.threads)
    for case in cases:
        case_paths = [p for p in paths if not (case == "tile" and p == "reference")]
        if case == "whole":
            flops = conv_flops(args.variant, net_h, net_w)
            title = f"whole: network input {net_w}×{net_h}, {flops / 1e9:.0f} GFLOP of convolutions"
        elif case == "tile":
            flops = None
            title = f"tile: {w}×{h} at full resolution in {args.tile_size}-pixel windows (overlap 64)"
        else:
            flops = conv_flops(args.variant, 320, 320)
            title = f"320: one 320×320 forward (resize mode), median of {args.inner_320} per process"
        print(f"\n== {title}", flush=True)
        run_case(args, case, case_paths, trimap, flops)
    mm = max(mm_before, matmul_gflops(threads=args.threads))
    print(f"matmul 4096×4096 float32: {mm:.1f} GFLOP/s ({args.threads} threads; better of before and after)")
    if not args.quick and args.examples != "none":
        if os.path.isdir(os.path.join(args.examples, "image")):
            print("\n== real examples", flush=True)
            quality(args)
        else:
            print(f"\n(no real examples at {args.examples}: agreement table skipped)")
    return 0


if __name__ == "__main__":
    run_cli(main)
