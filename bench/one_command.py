"""Time and peak memory of each step of the one-command demo on a 4000×3000 photo (CPU).

    python bench/one_command.py                                              # 4000×3000, the demo's segmenter
    python bench/one_command.py --segmenters deeplabv3_mobilenet_v3_large    # the fast one

The path of ``python core/demo.py --image photo.jpg`` without a trimap: read
the photo, segment it (torchvision network at its weights' preprocessing
size, shorter side 520), the trimap band (``core.trimap``), Deep Image
Matting in ``whole`` mode (``--max_size`` 1600), write trimap and matte. All
networks have random weights (no download): time and memory do not depend on
them, but a random segmenter finds no real subject, so the band is made from
the photo's known subject (the synthetic scene's ellipse, a soft mask) of the
same size. Peak memory is the process's VmHWM, reset before each step
(Linux); "above start" is that peak minus the resident memory when the step
began; with several ``--segmenters`` the later ones reuse memory the earlier
ones freed, so measure each in its own run for their memory. Each step runs
once (the first call, as a user's run does).
"""

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import tempfile
import time

import torch

from bench.common import format_table, load_average, machine_summary, reset_peak, status_mb
from bench.tile_memory import random_model, synthetic_scene
from core.imageio import read_image, write_image
from core.inference import predict_matte
from core.segment import DEFAULT_SEGMENTER, Segmenter
from core.trimap import DEFAULT_WIDTH_FRAC, trimap_from_mask, width_from_frac
from core.utils import run_cli


def measure(rows, step, fn):
    """Run ``fn()`` once; append (step, seconds, peak RSS MB, MB above the start) to ``rows``; return its result."""
    start_mb = status_mb("VmRSS")
    reset_peak()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    peak = status_mb("VmHWM")
    rows.append([step, f"{seconds:.2f}", f"{peak:.0f}", f"{peak - start_mb:.0f}"])
    print(f"{step}: {seconds:.2f} s", flush=True)
    return result


def random_segmenter(name):
    """A :class:`core.segment.Segmenter` whose network has random weights (nothing downloaded)."""
    seg = Segmenter(name)
    seg.net = seg.build().eval()
    return seg


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--height", type=int, default=3000, help="photo height (default 3000)")
    parser.add_argument("--width", type=int, default=4000, help="photo width (default 4000)")
    parser.add_argument("--segmenters", default=DEFAULT_SEGMENTER,
                        help="comma-separated torchvision segmentation models (default: the demo's, %(default)s)")
    parser.add_argument("--max_size", type=int, default=1600, help="DIM whole-mode cap (default 1600, the demo's)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load = load_average()
    print(f"{machine_summary(args.threads)}; load average {'?' if load is None else f'{load:.1f}'}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        photo, subject = synthetic_scene(args.height, args.width, seed=1, band=60)
        path = os.path.join(tmp, "photo.jpg")
        write_image(path, photo, (1, 95))  # cv2.IMWRITE_JPEG_QUALITY
        del photo
        image = measure(rows, f"read photo ({args.width}×{args.height} JPEG)", lambda: read_image(path))
        for name in args.segmenters.split(","):
            seg = measure(rows, f"build {name} (random weights)", lambda: random_segmenter(name))
            measure(rows, f"segment: {name}", lambda: seg(image))
            del seg
        width = width_from_frac(subject.shape, DEFAULT_WIDTH_FRAC)
        trimap = measure(rows, f"trimap band ({width} px each side)", lambda: trimap_from_mask(subject, width))
        model = measure(rows, "build DIM (random weights)", random_model)
        matte = measure(rows, f"DIM, whole mode, max_size {args.max_size}",
                        lambda: predict_matte(model, image, trimap, mode="whole", max_size=args.max_size))
        measure(rows, "write trimap + matte (PNG)", lambda: (write_image(os.path.join(tmp, "trimap.png"), trimap),
                                                             write_image(os.path.join(tmp, "matte.png"), matte)))
    print(format_table(["step", "seconds", "peak RSS MB", "above start MB"], rows))
    return 0


if __name__ == "__main__":
    run_cli(main)
