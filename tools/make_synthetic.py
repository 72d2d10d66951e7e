"""A tiny synthetic stand-in for the Adobe Deep Image Matting data, in the real layout.

Run::

    python tools/make_synthetic.py --out data/synthetic            # 4 train + 2 test foregrounds
    python tools/composite.py --root_dir data/synthetic/Combined_Dataset \\
        --train_bg_dir data/synthetic/train2017 --test_bg_dir data/synthetic/VOC2012/JPEGImages \\
        --train_bg_per_fg 2 --test_bg_per_fg 2
    python tools/make_synthetic.py --examples result/example       # demo inputs: image/, trimap/, alpha/

Layout written under ``--out`` (as the real archives extract)::

    Combined_Dataset/Training_set/{training_fg_names.txt, training_bg_names.txt}
    Combined_Dataset/Training_set/{Adobe-licensed images,Other}/{fg,alpha}/
    Combined_Dataset/Test_set/{test_fg_names.txt, test_bg_names.txt}
    Combined_Dataset/Test_set/Adobe-licensed images/{fg,alpha,trimaps}/
    train2017/<12 digits>.jpg                 (listed as COCO_train2014_<12 digits>.jpg)
    VOC2012/JPEGImages/<year>_<6 digits>.jpg

Foregrounds alternate .jpg and .png names and the two training source folders;
an alpha has its foreground's file name (as in the real set), so a ``.jpg``
foreground's alpha is a grayscale JPEG (quality 100) and a ``.png`` one's an
8-bit PNG, 3-channel for some, like some real alphas. Each foreground has a
soft-edged body, a semi-transparent "glass" region, thin hair-like strands and
a textured colour; sizes vary around ``--size`` (0.85–1.2×) and the
backgrounds (0.6–1.8×, one in five grayscale) are sometimes smaller than the
foreground so the upscaling branch runs. Test trimaps (values 0/128/255) come
from each stored alpha by dilation/erosion, one per composite. Everything is a
function of ``--seed``.
"""

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse

import cv2
import numpy as np

from core.utils import UserError, run_cli
from core.imageio import write_bytes_atomic, write_image
from core.composite import COCO2014_PREFIX, composite_reference
from core.trimap import trimap_from_alpha

BG_SCALES = (0.6, 1.4, 1.0, 1.8, 0.8)  # cycled, so every pool has backgrounds smaller and larger than a fg
JPEG_FG = [cv2.IMWRITE_JPEG_QUALITY, 95]
JPEG_ALPHA = [cv2.IMWRITE_JPEG_QUALITY, 100]


def _smooth_field(rng, h, w, channels, cell):
    """Smooth random field in [0, 1], float32 h×w×channels (cubic upsampling of coarse noise)."""
    coarse = rng.random((max(2, h // cell), max(2, w // cell), channels), dtype=np.float32)
    field = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC).reshape(h, w, channels)
    return np.clip(field, 0, 1)


def make_texture(rng, h, w):
    """A colourful texture, BGR float32 h×w×3 in 0..255: two colours mixed by a
    smooth field, stripes at a random angle, fine grain."""
    c1, c2 = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
    mix = _smooth_field(rng, h, w, 1, int(rng.integers(8, 40)))
    tex = c1 * mix + c2 * (1 - mix)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(8, 40)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / period))
    tex = tex + (rng.uniform(8, 25) * stripes)[..., None] + _smooth_field(rng, h, w, 3, 2) * 24 - 12
    return np.clip(tex, 0, 255)


def make_background(rng, h, w, gray=False):
    """A background texture, uint8 h×w×3 BGR (h×w when ``gray``)."""
    tex = np.rint(make_texture(rng, h, w)).astype(np.uint8)
    return cv2.cvtColor(tex, cv2.COLOR_BGR2GRAY) if gray else tex


def make_foreground(rng, h, w):
    """A foreground and its alpha: (fg BGR uint8 h×w×3, alpha uint8 h×w).

    The alpha has an opaque body with a soft (blurred, wobbly) edge, a
    semi-transparent region (alpha 0.3–0.6) and 1-pixel anti-aliased strands
    like hair; it is exactly 0 away from the object and 255 inside it.
    """
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = h * rng.uniform(0.4, 0.6), w * rng.uniform(0.4, 0.6)
    ry, rx = h * rng.uniform(0.18, 0.3), w * rng.uniform(0.18, 0.3)
    r = np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
    r = r + (_smooth_field(rng, h, w, 1, max(4, min(h, w) // 8))[..., 0] - 0.5) * 0.3
    edge = rng.uniform(0.03, 0.1)  # width of the soft edge, in units of the radius
    body = np.clip((1 - r) / edge + 0.5, 0, 1)
    # a semi-transparent "glass" ellipse overlapping the body
    gy, gx = cy + ry * rng.uniform(-1, 1), cx + rx * rng.uniform(0.6, 1.2) * rng.choice([-1, 1])
    gr = np.sqrt(((xx - gx) / (rx * 0.6)) ** 2 + ((yy - gy) / (ry * 0.6)) ** 2)
    glass = np.clip((1 - gr) / 0.1, 0, 1) * rng.uniform(0.3, 0.6)
    # hair: random-walk polylines leaving the body's edge
    strands = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(25, 60))):
        theta = rng.uniform(0, 2 * np.pi)
        pts = [(cx + rx * 0.95 * np.cos(theta), cy + ry * 0.95 * np.sin(theta))]
        heading = theta + rng.normal(0, 0.3)
        for _ in range(int(rng.integers(8, 20))):
            heading += rng.normal(0, 0.25)
            step = min(h, w) * 0.015
            pts.append((pts[-1][0] + step * np.cos(heading), pts[-1][1] + step * np.sin(heading)))
        shade = int(rng.integers(120, 256))
        cv2.polylines(strands, [np.round(np.array(pts) * 16).astype(np.int32)], False, shade, 1,
                      cv2.LINE_AA, shift=4)
    hair = strands.astype(np.float32) / 255
    alpha = np.maximum(np.maximum(body, glass), hair)
    fg = make_texture(rng, h, w)
    glass_tint = rng.uniform(150, 255, 3).astype(np.float32)
    hair_colour = rng.uniform(0, 60, 3).astype(np.float32) + rng.choice([0, 190])  # dark or light hair
    w_glass = np.clip(glass / 0.3, 0, 1) * (1 - body)  # colour the glass where the body is absent
    fg = fg * (1 - w_glass[..., None]) + glass_tint * w_glass[..., None]
    w_hair = (hair > 0).astype(np.float32) * (1 - body)
    fg = fg * (1 - w_hair[..., None]) + hair_colour * w_hair[..., None]
    return np.rint(np.clip(fg, 0, 255)).astype(np.uint8), np.rint(alpha * 255).astype(np.uint8)


def _side(rng, size, lo, hi):
    return max(16, int(round(size * rng.uniform(lo, hi))))


def _write_fg_alpha(folder, name, fg, alpha, three_channel_alpha):
    """Write fg and alpha under the same name; return the alpha as stored (JPEG alphas change slightly)."""
    jpeg = name.endswith(".jpg")
    write_image(os.path.join(folder, "fg", name), fg, JPEG_FG if jpeg else ())
    if three_channel_alpha and not jpeg:
        write_image(os.path.join(folder, "alpha", name), cv2.merge([alpha] * 3))
    else:
        write_image(os.path.join(folder, "alpha", name), alpha, JPEG_ALPHA if jpeg else ())
    return cv2.imread(os.path.join(folder, "alpha", name), cv2.IMREAD_GRAYSCALE)


def _write_list(path, names):
    write_bytes_atomic(path, "".join(n + "\n" for n in names).encode())


def _write_backgrounds(rng, folder, names, size):
    os.makedirs(folder, exist_ok=True)
    for j, name in enumerate(names):
        s = BG_SCALES[j % len(BG_SCALES)]
        bg = make_background(rng, _side(rng, size, 0.9 * s, 1.1 * s), _side(rng, size, 0.9 * s, 1.1 * s),
                             gray=j % 5 == 4)
        write_image(os.path.join(folder, name), bg, [cv2.IMWRITE_JPEG_QUALITY, 90])


def make_dataset(out, num_fg=4, num_test_fg=2, num_bg=None, size=320, seed=0, train_bg_per_fg=2,
                 test_bg_per_fg=2):
    """Write the synthetic set under ``out`` (see the module docstring); return its paths.

    ``num_bg``: distinct background images in each pool (COCO for training,
    VOC for test); None gives one per list line, fewer are reused in turn.
    Returns a dict: root_dir (the Combined_Dataset folder), train_bg_dir,
    test_bg_dir, train_bg_per_fg, test_bg_per_fg, train_fg_names, test_fg_names.
    Raises UserError when ``out`` already holds a Combined_Dataset.
    """
    if min(num_fg, num_test_fg, train_bg_per_fg, test_bg_per_fg, size) < 1 or (num_bg is not None and num_bg < 1):
        raise UserError("--num_fg, --num_test_fg, --num_bg, --*_bg_per_fg and --size must be at least 1")
    root = os.path.join(out, "Combined_Dataset")
    if os.path.exists(root):
        raise UserError(f"{root} already exists; delete it or choose another --out")
    rng = np.random.default_rng(seed)
    train_dir, test_dir = os.path.join(root, "Training_set"), os.path.join(root, "Test_set")
    sources = [os.path.join(train_dir, "Adobe-licensed images"), os.path.join(train_dir, "Other")]
    test_src = os.path.join(test_dir, "Adobe-licensed images")
    for folder in sources + [test_src]:
        for kind in ("fg", "alpha"):
            os.makedirs(os.path.join(folder, kind), exist_ok=True)
    os.makedirs(os.path.join(test_src, "trimaps"), exist_ok=True)

    train_names = [f"synth-train-{i:03d}{'.jpg' if (i // 2) % 2 == 0 else '.png'}" for i in range(num_fg)]
    for i, name in enumerate(train_names):
        fg, alpha = make_foreground(rng, _side(rng, size, 0.85, 1.2), _side(rng, size, 0.85, 1.2))
        _write_fg_alpha(sources[i % 2], name, fg, alpha, three_channel_alpha=i % 4 == 2)

    test_names = [f"synth-test-{i:03d}{'.png' if i % 2 == 0 else '.jpg'}" for i in range(num_test_fg)]
    for name in test_names:
        fg, alpha = make_foreground(rng, _side(rng, size, 0.85, 1.2), _side(rng, size, 0.85, 1.2))
        stored = _write_fg_alpha(test_src, name, fg, alpha, three_channel_alpha=True)
        for k in range(test_bg_per_fg):
            iterations = max(1, round(rng.integers(2, 6) * size / 320))  # unknown band scales with the image
            trimap = trimap_from_alpha(stored, int(rng.integers(3, 6)), iterations)
            write_image(os.path.join(test_src, "trimaps", f"{name[:-4]}_{k}.png"), trimap)

    n_train = num_bg or num_fg * train_bg_per_fg
    coco_ids = rng.choice(581_000, n_train, replace=False) + 9  # plausible COCO ids, all distinct
    coco = [f"{i:012d}.jpg" for i in coco_ids]
    n_test = num_bg or num_test_fg * test_bg_per_fg
    voc = sorted({f"{2007 + int(i) // 10**6}_{int(i) % 10**6:06d}.jpg"
                  for i in rng.choice(6 * 10**6, n_test, replace=False)})
    train_bg_dir, test_bg_dir = os.path.join(out, "train2017"), os.path.join(out, "VOC2012", "JPEGImages")
    _write_backgrounds(rng, train_bg_dir, coco, size)
    _write_backgrounds(rng, test_bg_dir, voc, size)

    _write_list(os.path.join(train_dir, "training_fg_names.txt"), train_names)
    _write_list(os.path.join(train_dir, "training_bg_names.txt"),
                [COCO2014_PREFIX + coco[t % n_train] for t in range(num_fg * train_bg_per_fg)])
    _write_list(os.path.join(test_dir, "test_fg_names.txt"), test_names)
    _write_list(os.path.join(test_dir, "test_bg_names.txt"),
                [voc[t % n_test] for t in range(num_test_fg * test_bg_per_fg)])
    return dict(root_dir=root, train_bg_dir=train_bg_dir, test_bg_dir=test_bg_dir,
                train_bg_per_fg=train_bg_per_fg, test_bg_per_fg=test_bg_per_fg,
                train_fg_names=train_names, test_fg_names=test_names)


def make_example(rng, height=480, width=640):
    """One example, ``(image, trimap, alpha)`` uint8: a height×width foreground composited
    (reference math) over a texture, and the alpha's 0/128/255 trimap (ellipse 5, 4 iterations)."""
    fg, alpha = make_foreground(rng, height, width)
    bg = make_background(rng, height, width)
    return composite_reference(fg, bg, alpha), trimap_from_alpha(alpha, 5, 4), alpha


def make_examples(out_dir, num=3, seed=0, height=480, width=640):
    """Write ``num`` examples (:func:`make_example`) to ``out_dir/{image,trimap,alpha}/synthetic_<i>.png``.

    Returns the file names.
    """
    rng = np.random.default_rng(seed)
    for kind in ("image", "trimap", "alpha"):
        os.makedirs(os.path.join(out_dir, kind), exist_ok=True)
    names = []
    for i in range(num):
        name = f"synthetic_{i + 1:02d}.png"
        for kind, img in zip(("image", "trimap", "alpha"), make_example(rng, height, width)):
            write_image(os.path.join(out_dir, kind, name), img)
        names.append(name)
    return names


def main(argv=None):
    p = argparse.ArgumentParser(description="Write a tiny synthetic Adobe-layout matting dataset "
                                            "and/or demo examples.")
    p.add_argument("--out", help="folder to hold Combined_Dataset/, train2017/ and VOC2012/")
    p.add_argument("--examples", help="also/only write composited examples to EXAMPLES/{image,trimap,alpha}")
    p.add_argument("--num_fg", type=int, default=4, help="training foregrounds (%(default)s)")
    p.add_argument("--num_test_fg", type=int, default=2, help="test foregrounds (%(default)s)")
    p.add_argument("--num_bg", type=int, help="distinct backgrounds per pool (default: one per list line)")
    p.add_argument("--train_bg_per_fg", type=int, default=2,
                   help="backgrounds per training fg (%(default)s; real set: 100)")
    p.add_argument("--test_bg_per_fg", type=int, default=2, help="backgrounds per test fg (%(default)s; real: 20)")
    p.add_argument("--size", type=int, default=320, help="typical image side in pixels (%(default)s)")
    p.add_argument("--num_examples", type=int, default=3, help="examples written by --examples (%(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (%(default)s)")
    args = p.parse_args(argv)
    if not args.out and not args.examples:
        raise UserError("give --out DIR (the dataset) and/or --examples DIR (demo examples)")
    if args.out:
        paths = make_dataset(args.out, args.num_fg, args.num_test_fg, args.num_bg, args.size, args.seed,
                             args.train_bg_per_fg, args.test_bg_per_fg)
        print(f"wrote {paths['root_dir']}; composite it with:\n"
              f"python tools/composite.py --root_dir {paths['root_dir']} --train_bg_dir {paths['train_bg_dir']} "
              f"--test_bg_dir {paths['test_bg_dir']} --train_bg_per_fg {args.train_bg_per_fg} "
              f"--test_bg_per_fg {args.test_bg_per_fg}")
    if args.examples:
        names = make_examples(args.examples, args.num_examples, args.seed)
        print(f"wrote {len(names)} examples to {args.examples}/{{image,trimap,alpha}}")
    return 0


if __name__ == "__main__":
    run_cli(main)
