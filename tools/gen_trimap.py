"""Make trimaps (0/128/255) from masks or alpha mattes.

    python tools/gen_trimap.py --input mask.png --output trimap.png --width 15
    python tools/gen_trimap.py --input masks/ --output trimaps/ --width_frac 0.01
    python tools/gen_trimap.py --input alphas/ --output trimaps/ --mode train --seed 123

Input: a binary mask, a soft mask (e.g. a segmentation probability ×255) or an
alpha matte, 8-bit, white = subject; a file or a folder of images. A file with
an alpha channel (an RGBA cut-out) uses that channel; otherwise channel 0 of a
colour read, as the project reads trimaps and alphas. Output: 8-bit PNGs with
exactly 0 (background), 128 (unknown) and 255 (foreground), named
``<input stem>.png`` when writing into a folder.

``--mode band`` (default). With t = ``--tol``:

* definitely foreground: value ≥ 255·(1 − t); definitely background:
  value ≤ 255·t (``--binary``: foreground value > 127, background ≤ 127);
* trimap = 255 where the foreground, eroded by an elliptic (disc) structuring
  element of radius w, remains; 0 where the background, eroded by the same
  disc, remains; 128 elsewhere.

So the unknown band reaches w pixels to each side of the edge (about 2w
wide) and also covers every soft value between the thresholds. A disc mask of
radius R gives unknown pixels at distances R − w … R + w from its centre.
Parts of the subject cut by the image border stay foreground up to the
border. w is ``--width`` pixels or ``--width_frac`` × the image diagonal
(default 0.01, at least 1 px). Masks that are empty (no pixel above the
background threshold) or all foreground are refused, naming the file.

``--mode train`` is the training-time generator (SPEC §6 step 6,
:func:`core.trimap.random_trimap`): elliptic kernel of size 2–4, 5–14
iterations, drawn per file from a generator seeded by ``--seed`` and the file
name; 255 where the eroded alpha is 255, 0 where the dilated alpha is 0. Fix
the draws with ``--kernel_size`` and ``--iterations``. Training applies it to
320×320 crops, so on a full-size photo its band is much narrower relatively.

Both rules live in :mod:`core.trimap` (the demo's automatic trimaps use the band too).
"""

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse

from tqdm import tqdm

from core.data import list_images, sample_rng
from core.imageio import write_image
from core.trimap import (DEFAULT_TOL, DEFAULT_WIDTH_FRAC, random_trimap, read_mask, thresholds, trimap_from_alpha,
                         trimap_from_mask, width_from_frac)
from core.utils import UserError, run_cli


def train_trimap(alpha, seed, name, kernel_size=None, iterations=None):
    """The training-time trimap (SPEC §6 step 6) of ``alpha`` (uint8 H×W), reproducible per (seed, file name).

    Kernel size and iterations are drawn with :func:`core.trimap.random_trimap`
    from :func:`core.data.sample_rng` (seed, 0, base name of ``name``) unless
    both are given.
    """
    if not alpha.any():
        raise UserError(f"{name}: the alpha is empty (all 0): there is no subject to matte")
    if (alpha == 255).all():
        raise UserError(f"{name}: the alpha is all foreground (all 255): there is no edge to matte")
    if kernel_size is not None and iterations is not None:
        return trimap_from_alpha(alpha, kernel_size, iterations)
    if kernel_size is not None or iterations is not None:
        raise UserError("--kernel_size and --iterations go together (or give neither to draw them)")
    return random_trimap(alpha, sample_rng(seed, 0, os.path.basename(name)))


def make_trimap(mask, args, name):
    """The trimap of one mask under the parsed command-line ``args``."""
    if args.mode == "train":
        return train_trimap(mask, args.seed, name, args.kernel_size, args.iterations)
    width = args.width if args.width is not None else width_from_frac(mask.shape, args.width_frac)
    return trimap_from_mask(mask, width, args.tol, args.binary, name)


def plan_files(src, dst):
    """[(input path, output path)] for a file or a folder of masks."""
    if os.path.isdir(src):
        if os.path.exists(dst) and not os.path.isdir(dst):
            raise UserError(f"{dst}: --input is a folder, so --output must be a folder, but this is a file")
        names = list_images(src, "mask")
        return [(os.path.join(src, names[stem]), os.path.join(dst, stem + ".png")) for stem in sorted(names)]
    if not os.path.isfile(src):
        raise UserError(f"{src}: no such file or folder")
    if os.path.isdir(dst) or dst.endswith(os.sep):
        dst = os.path.join(dst, os.path.splitext(os.path.basename(src))[0] + ".png")
    return [(src, dst)]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Trimaps (0/128/255) from binary/soft masks or alpha mattes.")
    parser.add_argument("--input", required=True, help="a mask/alpha image or a folder of them (white = subject)")
    parser.add_argument("--output", required=True, help="trimap file, or a folder (for a folder input, or ending in /)")
    parser.add_argument("--mode", choices=("band", "train"), default="band",
                        help="band: fixed-width unknown band (default); train: the training-time random generator")
    width = parser.add_mutually_exclusive_group()
    width.add_argument("--width", type=int, default=None,
                       help="band: unknown band reach in pixels to each side of the edge")
    width.add_argument("--width_frac", type=float, default=DEFAULT_WIDTH_FRAC,
                       help=f"band: the reach as a fraction of the image diagonal (default {DEFAULT_WIDTH_FRAC})")
    parser.add_argument("--tol", type=float, default=DEFAULT_TOL,
                        help=f"band: foreground ≥ 255·(1−tol), background ≤ 255·tol (default {DEFAULT_TOL})")
    parser.add_argument("--binary", action="store_true", help="band: threshold the mask at 127 first")
    parser.add_argument("--seed", type=int, default=123, help="train: seed of the random draws (default 123)")
    parser.add_argument("--kernel_size", type=int, default=None, help="train: fix the kernel size (2–4)")
    parser.add_argument("--iterations", type=int, default=None, help="train: fix the iterations (5–14)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.width is not None and args.width < 1:
        raise UserError(f"--width must be at least 1 pixel, got {args.width}")
    if args.width is None and not 0 < args.width_frac < 1:
        raise UserError(f"--width_frac must be between 0 and 1, got {args.width_frac}")
    thresholds(args.tol, args.binary)
    files = plan_files(args.input, args.output)
    refused = []
    for src, dst in tqdm(files, desc="trimaps", unit="img", disable=len(files) < 2):
        if os.path.abspath(src) == os.path.abspath(dst):
            raise UserError(f"{src}: the output would overwrite the input; choose another --output")
        try:
            trimap = make_trimap(read_mask(src), args, src)
        except UserError as exc:
            if len(files) == 1:
                raise
            refused.append(str(exc))
            continue
        write_image(dst, trimap)
    written = len(files) - len(refused)
    if refused:
        raise UserError(f"{len(refused)} of {len(files)} masks refused ({written} trimaps written): "
                        + "; ".join(refused[:3]) + (" …" if len(refused) > 3 else ""))
    print(f"wrote {written} trimap{'s' if written != 1 else ''} to {args.output}")
    return 0


if __name__ == "__main__":
    run_cli(main)
