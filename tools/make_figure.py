"""The README picture of the "Your own images" section: photo | mask | trimap | cut-out.

    python tools/make_figure.py                      # writes result/figures/own_images.png

Everything is synthetic (``tools/make_synthetic.py``'s foreground and
background, fixed seed): no Adobe image is used. The mask stands for what a
user has (the ground-truth alpha thresholded at 127); the trimap comes from it
with ``tools/gen_trimap.py``'s band rule; the cut-out is the foreground
estimated (``core/cutout.py``) with the ground-truth alpha, shown over a
checkerboard. No network prediction is shown: the figure illustrates the
tools, not the model's accuracy.
"""

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse

import cv2
import numpy as np

from core.cutout import checkerboard, composite_on, estimate_foreground
from core.imageio import write_image
from core.utils import run_cli
from core.composite import composite_reference
from core.trimap import trimap_from_mask
from tools.make_synthetic import make_background, make_foreground

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABEL_HEIGHT = 26
GAP = 6


def labelled(panel, text):
    """``panel`` (H×W×3 or H×W uint8) with a white caption strip on top."""
    if panel.ndim == 2:
        panel = cv2.cvtColor(panel, cv2.COLOR_GRAY2BGR)
    strip = np.full((LABEL_HEIGHT, panel.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([strip, panel])


def make_panels(height=240, width=320, seed=4, width_px=8):
    """[(label, BGR uint8 panel)]: photo, mask, trimap, cut-out on a checkerboard."""
    rng = np.random.default_rng(seed)
    fg, alpha = make_foreground(rng, height, width)
    bg = make_background(rng, height, width)
    image = composite_reference(fg, bg, alpha)
    mask = np.where(alpha > 127, 255, 0).astype(np.uint8)
    trimap = trimap_from_mask(mask, width_px)
    fg_est = estimate_foreground(image, alpha)
    board = checkerboard(height, width)
    cut = composite_on(fg_est, alpha, board)
    return [("photo", image), ("your mask", mask), (f"trimap (gen_trimap --width {width_px})", trimap),
            ("cut-out (ground-truth alpha)", cut)]


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write the README figure of the own-images section.")
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "result", "figures", "own_images.png"))
    parser.add_argument("--seed", type=int, default=4)
    args = parser.parse_args(argv)
    panels = [labelled(p, text) for text, p in make_panels(seed=args.seed)]
    gap = np.full((panels[0].shape[0], GAP, 3), 255, np.uint8)
    row = np.hstack([x for p in panels for x in (p, gap)][:-1])
    write_image(args.out, row)
    print(f"wrote {args.out} ({os.path.getsize(args.out) // 1024} KB)")
    return 0


if __name__ == "__main__":
    run_cli(main)
