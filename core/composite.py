"""Compositing the Adobe Deep Image Matting training and test sets (SPEC §5).

The library behind ``tools/composite.py`` (its command line) and the online
training data in :mod:`core.data`. Run (DATA holds the extracted Adobe, COCO and VOC archives)::

    python tools/composite.py --root_dir DATA/Combined_Dataset \\
        --train_bg_dir DATA/train2017 --test_bg_dir DATA/VOC2012/JPEGImages
    # Adobe's own compositing (the published Composition-1k test set), kept apart:
    python tools/composite.py --root_dir DATA/Combined_Dataset \\
        --test_bg_dir DATA/VOC2012/JPEGImages --only test --method adobe --comp_name comp_adobe

Outputs (``comp`` is ``--comp_name``)::

    Training_set/all/{fg,alpha}/<fg name>             the listed foregrounds and alphas, gathered
    Training_set/comp/{image,fg,bg,alpha}/<stem>_<k>.png
    Test_set/comp/{image,fg,bg,alpha,trimap}/<stem>_<k>.png

``<stem>`` is the foreground's file name without its 4-character extension and
``k`` the background's index for that foreground. ``fg``, ``bg`` and ``alpha``
are the foreground, the fitted background and the alpha (channel 0, 1-channel
PNG) saved beside each composite. ``--no_copies`` skips the fg/bg copies, and
the alpha copies of the training set; the test set always gets ``alpha`` and
``trimap`` because evaluation needs them.

Every file is written atomically (a hidden ``.*.tmp`` file in the same folder,
then ``os.replace``), and a rerun skips the composites whose files all exist,
so an interrupted run can simply be started again.
"""

import json
import os
import math
from multiprocessing import Pool

import cv2
import numpy as np
from tqdm import tqdm

from core.imageio import read_image as _cv2_read  # 3-channel BGR uint8: how the reference reads fg, alpha, bg
from core.imageio import (check_image_file, copy_file_atomic, encode_image, remove_stale_temps, write_bytes_atomic,
                          write_image)
from core.sharding import share
from core.utils import UserError, preview

METHODS = ("reference", "adobe")
COCO2014_PREFIX = "COCO_train2014_"  # 15 characters; train2017 files drop it
MARKER = ".composite.json"  # records the method of a comp folder, so reruns never mix methods
MAX_LISTED = 5  # file names quoted in one error message


# ----------------------------------------------------------------------------
# names


def coco2017_name(name):
    """COCO-2014 file name → its train2017 name (``COCO_train2014_000000000009.jpg``
    → ``000000000009.jpg``); a name without the prefix is returned unchanged."""
    return name[len(COCO2014_PREFIX):] if name.startswith(COCO2014_PREFIX) else name


def composite_name(fg_name, k):
    """``<fg name without its 4-character extension>_<k>.png`` (the reference's names)."""
    if len(fg_name) < 5 or fg_name[-4] != ".":
        raise UserError(f"foreground name {fg_name!r} does not end in a 4-character extension such as .jpg or .png")
    return f"{fg_name[:-4]}_{k}.png"


# ----------------------------------------------------------------------------
# composition math (pure functions on NumPy arrays)


def fit_size(h, w, bh, bw, method="reference"):
    """Size ``(new_h, new_w)`` a bh×bw background is resized to for an h×w
    foreground, or ``None`` when it is large enough already.

    ratio = max(w/bw, h/bh); when ratio > 1 the reference resizes to
    (int(bh·ratio + 1), int(bw·ratio + 1)), Adobe to (ceil(bh·ratio), ceil(bw·ratio)).
    """
    wratio, hratio = w / bw, h / bh
    ratio = wratio if wratio > hratio else hratio
    if ratio <= 1:
        return None
    if method == "reference":
        return int(bh * ratio + 1), int(bw * ratio + 1)
    if method == "adobe":
        return math.ceil(bh * ratio), math.ceil(bw * ratio)
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def fit_background_reference(bg, h, w):
    """The reference's background fit: bilinear upscale (cv2) when the uint8
    bh×bw(×C) background is smaller than h×w in either side, then its top-left h×w."""
    size = fit_size(h, w, bg.shape[0], bg.shape[1], "reference")
    if size is not None:
        bg = cv2.resize(bg, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return bg[:h, :w]


def fit_background_adobe(bg_rgb, h, w):
    """Adobe's background fit: Pillow BICUBIC upscale to the ceil size when the
    uint8 RGB bh×bw×3 background is too small, then its top-left h×w (RGB uint8)."""
    size = fit_size(h, w, bg_rgb.shape[0], bg_rgb.shape[1], "adobe")
    if size is not None:
        pil = _pil()
        bicubic = getattr(pil, "Resampling", pil).BICUBIC  # Pillow < 9.1 has no Resampling enum
        bg_rgb = np.asarray(pil.fromarray(np.ascontiguousarray(bg_rgb)).resize((size[1], size[0]), bicubic))
    return bg_rgb[:h, :w]


def round_to_uint8(x):
    """Float → uint8 as OpenCV writes a float image: round half to even, then saturate to 0..255."""
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def blend_reference(fg, bg, alpha):
    """comp = fg·a + bg·(1 − a) with a = alpha/255, in float64, element-wise.

    ``fg``, ``bg``: H×W×C (any colour order, uint8 or float 0..255); ``alpha``:
    H×W×C or H×W (uint8 or float 0..255; H×W is broadcast over the channels).
    Works on any crop. Returns float64 H×W×C, not rounded.
    """
    a = np.asarray(alpha, dtype=np.float64) / 255.0
    if a.ndim == np.ndim(fg) - 1:
        a = a[..., None]
    return fg * a + bg * (1.0 - a)


def composite_reference(fg, bg, alpha):
    """The reference composite as the 8-bit PNG it writes: :func:`round_to_uint8` of
    :func:`blend_reference` (same arguments); uint8 H×W×C, colour order of the inputs."""
    return round_to_uint8(blend_reference(fg, bg, alpha))


def composite_adobe(fg, bg, alpha):
    """Adobe's composite, per pixel with a = alpha/255: a ≥ 1 → fg; 0 < a < 1 →
    int(a·fg + (1 − a)·bg) (truncation); a = 0 → bg.

    ``fg``, ``bg``: uint8 H×W×3 (RGB in Adobe's script; the math is per channel);
    ``alpha``: uint8 H×W (the alpha file's first channel). Returns uint8 H×W×3.
    """
    a = (np.asarray(alpha, dtype=np.float64) / 255)[..., None]
    blend = np.trunc(a * fg + (1 - a) * bg)  # Python's int() of a positive float
    out = np.where(a >= 1, fg, np.where(a > 0, blend, bg))
    return np.clip(out, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------
# file I/O


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise UserError("--method adobe needs Pillow (pip install Pillow; torchvision normally brings it)") from None
    return Image


def _pil_read(path, kind):
    image_mod = _pil()
    check_image_file(path)  # missing, empty or oversized: the same one line as every other reader
    try:
        with image_mod.open(path) as im:
            if im.mode.startswith(("I", "F")):  # Pillow would clip 16-bit/float samples to 255
                raise UserError(f"{path}: {im.mode} samples: --method adobe reads 8-bit images only "
                                "(use --method reference, which keeps a 16-bit file's high byte)")
            im.load()
            if kind == "alpha":
                if im.mode not in ("L", "LA", "RGB", "RGBA"):
                    im = im.convert("L")
                arr = np.asarray(im)
                return arr[..., 0] if arr.ndim == 3 else arr  # the alpha's first channel
            if kind == "fg" and im.mode not in ("RGB", "RGBA"):
                im = im.convert("RGB")
            if kind == "bg" and im.mode != "RGB":
                im = im.convert("RGB")
            return np.asarray(im)[..., :3]
    except (OSError, SyntaxError, ValueError, image_mod.DecompressionBombError):  # Pillow's errors for unreadable files
        raise UserError(f"{path}: not a readable image (Pillow cannot decode it)") from None


def read_fg_alpha(fg_path, alpha_path, method):
    """Read a foreground and its alpha as ``method`` does.

    reference: fg BGR uint8 H×W×3 and alpha uint8 H×W×3 (cv2 3-channel reads);
    adobe: fg RGB uint8 H×W×3 and alpha uint8 H×W (first channel), via Pillow.
    Raises UserError when a file is unreadable or the sizes differ.
    """
    if method == "reference":
        fg, alpha = _cv2_read(fg_path), _cv2_read(alpha_path)
    else:
        fg, alpha = _pil_read(fg_path, "fg"), _pil_read(alpha_path, "alpha")
    check_fg_alpha_size(fg_path, fg, alpha_path, alpha)
    return fg, alpha


def check_fg_alpha_size(fg_path, fg, alpha_path, alpha):
    """UserError naming both files when the decoded foreground and alpha differ in height × width."""
    if fg.shape[:2] != alpha.shape[:2]:
        raise UserError(f"{fg_path}: foreground is {fg.shape[1]}x{fg.shape[0]} but its alpha {alpha_path} "
                        f"is {alpha.shape[1]}x{alpha.shape[0]}")


def make_composite(fg, alpha, bg_path, method):
    """Fit the background file to ``fg`` and composite (fg, alpha from :func:`read_fg_alpha`).

    Returns ``(image, fitted bg, alpha channel 0)``, BGR uint8 / uint8 H×W, ready to write.
    """
    h, w = fg.shape[:2]
    if method == "reference":
        bg = fit_background_reference(_cv2_read(bg_path), h, w)
        return composite_reference(fg, bg, alpha), bg, alpha[:, :, 0]
    bg = fit_background_adobe(_pil_read(bg_path, "bg"), h, w)
    return composite_adobe(fg, bg, alpha)[:, :, ::-1], bg[:, :, ::-1], alpha


# ----------------------------------------------------------------------------
# the data set


def _read_names(path):
    if not os.path.isfile(path):
        raise UserError(f"{path}: name list not found (is --root_dir the extracted Combined_Dataset folder?)")
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def set_layout(root_dir, which, bg_dir, bg_per_fg, comp_name="comp"):
    """Paths and settings of one set (``which`` is ``train`` or ``test``) as a dict."""
    if which == "train":
        base = os.path.join(root_dir, "Training_set")
        return dict(which=which, fg_list=os.path.join(base, "training_fg_names.txt"),
                    bg_list=os.path.join(base, "training_bg_names.txt"),
                    sources=[os.path.join(base, "Adobe-licensed images"), os.path.join(base, "Other")],
                    gather=os.path.join(base, "all"), trimaps=None, bg_dir=bg_dir, bg_per_fg=bg_per_fg,
                    flag="--train_bg_dir", out=os.path.join(base, comp_name))
    base = os.path.join(root_dir, "Test_set")
    return dict(which=which, fg_list=os.path.join(base, "test_fg_names.txt"),
                bg_list=os.path.join(base, "test_bg_names.txt"),
                sources=[os.path.join(base, "Adobe-licensed images")], gather=None,
                trimaps=os.path.join(base, "Adobe-licensed images", "trimaps"), bg_dir=bg_dir,
                bg_per_fg=bg_per_fg, flag="--test_bg_dir", out=os.path.join(base, comp_name))


def plan_set(layout):
    """Validate one set before anything is written; return its per-foreground jobs.

    Checks that the name lists exist, that background lines == foregrounds ×
    backgrounds per foreground, and that every listed file exists (all missing
    ones in one UserError). Each job is a dict with fg, alpha, name and its
    composites ``[(k, composite name, background path, trimap path or None)]``.
    """
    which, n = layout["which"], layout["bg_per_fg"]
    if not layout["bg_dir"]:
        raise UserError(f"{layout['flag']} is required to composite the {which} set (or pass --only)")
    if not os.path.isdir(layout["bg_dir"]):
        raise UserError(f"{layout['flag']} {layout['bg_dir']}: not a folder")
    fg_names, bg_names = _read_names(layout["fg_list"]), _read_names(layout["bg_list"])
    if not fg_names:
        raise UserError(f"{layout['fg_list']}: lists no foregrounds")
    if len(bg_names) != n * len(fg_names):
        raise UserError(f"{layout['bg_list']} has {len(bg_names)} lines but {layout['fg_list']} lists "
                        f"{len(fg_names)} foregrounds x {n} backgrounds each = {n * len(fg_names)} "
                        f"(--{which}_bg_per_fg sets the {n})")
    missing, jobs = [], []
    for i, fg_name in enumerate(fg_names):
        found = [s for s in layout["sources"] if os.path.isfile(os.path.join(s, "fg", fg_name))]
        if len(found) > 1:
            raise UserError(f"foreground {fg_name} is in both {found[0]} and {found[1]}; keep one")
        source = found[0] if found else layout["sources"][0]
        fg_path, alpha_path = os.path.join(source, "fg", fg_name), os.path.join(source, "alpha", fg_name)
        if not found:
            missing.append(fg_path if len(layout["sources"]) == 1 else
                           f"{fg_name} (in none of {' / '.join(os.path.join(s, 'fg') for s in layout['sources'])})")
        elif not os.path.isfile(alpha_path):
            missing.append(alpha_path)
        comps = []
        for k in range(n):
            name = composite_name(fg_name, k)
            bg_path = os.path.join(layout["bg_dir"], coco2017_name(bg_names[i * n + k]) if which == "train"
                                   else bg_names[i * n + k])
            trimap = os.path.join(layout["trimaps"], name) if layout["trimaps"] else None
            missing += [p for p in (bg_path, trimap) if p and not os.path.isfile(p)]
            comps.append((k, name, bg_path, trimap))
        jobs.append(dict(fg_name=fg_name, fg=fg_path, alpha=alpha_path, comps=comps))
    if missing:
        missing = list(dict.fromkeys(missing))  # a background may be listed more than once
        raise UserError(f"{which} set: {len(missing)} listed files are missing: {preview(missing, MAX_LISTED, sort=False)}")
    return jobs


def _check_sizes(job_method):
    job, method = job_method
    try:
        read_fg_alpha(job["fg"], job["alpha"], method)
    except UserError as exc:
        return str(exc)
    return None


def _output_dirs(layout, copies):
    names = ["image"] + (["fg", "bg", "alpha"] if copies else [])
    if layout["which"] == "test":
        names += [] if copies else ["alpha"]
        names.append("trimap")
    return {d: os.path.join(layout["out"], d) for d in names}


def _compose_job(args):
    """Write the missing files of one foreground's composites; returns (written, skipped)."""
    job, method, dirs = args
    todo = [c for c in job["comps"] if not all(os.path.isfile(os.path.join(d, c[1])) for d in dirs.values())]
    if not todo:
        return 0, len(job["comps"])
    fg, alpha = read_fg_alpha(job["fg"], job["alpha"], method)
    fg_bgr = fg if method == "reference" else np.ascontiguousarray(fg[:, :, ::-1])
    encoded = {}  # the fg and alpha copies are the same for every background: encode once
    for k, name, bg_path, trimap in todo:
        image, bg, alpha0 = make_composite(fg, alpha, bg_path, method)
        for kind, folder in dirs.items():
            path = os.path.join(folder, name)
            if kind == "image" or os.path.isfile(path):  # what exists was written whole by an earlier run
                continue
            if kind == "trimap":
                copy_file_atomic(trimap, path)
            elif kind == "bg":
                write_image(path, bg)
            else:
                if kind not in encoded:
                    encoded[kind] = encode_image(fg_bgr if kind == "fg" else alpha0)
                write_bytes_atomic(path, encoded[kind])
        if not os.path.isfile(os.path.join(dirs["image"], name)):
            write_image(os.path.join(dirs["image"], name), image)
    return len(todo), len(job["comps"]) - len(todo)


def _check_marker(out, method, bg_per_fg, write=False):
    """A comp folder holds one method's composites: refuse to mix, record on first use."""
    path = os.path.join(out, MARKER)
    want = {"method": method, "bg_per_fg": bg_per_fg}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            have = json.load(f)
        if have != want:
            raise UserError(f"{out} was made with {have}, not {want}; delete it or pick another --comp_name")
    elif write:
        os.makedirs(out, exist_ok=True)
        write_bytes_atomic(path, json.dumps(want).encode())


def gather_training(layout, jobs, shard=None):
    """Copy each listed training foreground and alpha into ``Training_set/all/{fg,alpha}`` (skips existing).

    ``shard``: ``jobs`` are this shard's only; its stale temporaries alone are removed.
    """
    for kind in ("fg", "alpha"):
        folder = os.path.join(layout["gather"], kind)
        os.makedirs(folder, exist_ok=True)
        remove_stale_temps(folder, {job["fg_name"] for job in jobs} if shard else None)
        for job in jobs:
            dst = os.path.join(folder, job["fg_name"])
            if not os.path.isfile(dst):
                copy_file_atomic(job[kind], dst)


def _pool_map(fn, items, workers):
    if workers <= 1:
        yield from map(fn, items)
        return
    with Pool(workers) as pool:
        yield from pool.imap_unordered(fn, items)


def composite_dataset(root_dir, train_bg_dir=None, test_bg_dir=None, method="reference", only=None,
                      workers=1, copies=True, train_bg_per_fg=100, test_bg_per_fg=20, comp_name="comp", shard=None,
                      position=None):
    """Composite the selected sets (``only``: None for both, ``train`` or ``test``).

    Everything is validated (names, counts, files, fg/alpha sizes) before the
    first file is written. ``shard``: ``(k, n)``, 0-based: write only the
    composites of every n-th foreground from the k-th on (``core.sharding.share``),
    so n processes or machines sharing the folders make together what one run
    makes; each still checks every foreground, so a bad one stops every shard
    before anything is written. Returns ``{which: {"out", "composites",
    "written", "skipped"}}`` (this shard's composites). ``position``: the
    progress bar's line (one per rank of a machine).
    """
    if method not in METHODS:
        raise UserError(f"--method {method!r}: choose from {', '.join(METHODS)}")
    if not os.path.isdir(root_dir):
        raise UserError(f"--root_dir {root_dir}: not a folder")
    if method == "adobe":
        _pil()
    todo = [] if only == "train" else [("test", test_bg_dir, test_bg_per_fg)]
    todo += [] if only == "test" else [("train", train_bg_dir, train_bg_per_fg)]
    plans = []
    for which, bg_dir, n in todo:
        layout = set_layout(root_dir, which, bg_dir, n, comp_name)
        plans.append((layout, plan_set(layout)))
        _check_marker(layout["out"], method, n)
    bad = [msg for _, jobs in plans
           for msg in _pool_map(_check_sizes, [(j, method) for j in jobs], workers) if msg]
    if bad:
        raise UserError(f"{len(bad)} foreground/alpha pairs are unusable: {'; '.join(bad[:MAX_LISTED])}"
                        + (f" ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""))
    summary = {}
    part = f" (shard {shard[0] + 1}/{shard[1]})" if shard else ""
    for layout, jobs in plans:
        if shard:
            jobs = share(jobs, *shard)
        if layout["gather"]:
            gather_training(layout, jobs, shard)
        _check_marker(layout["out"], method, layout["bg_per_fg"], write=True)
        dirs = _output_dirs(layout, copies)
        mine = {c[1] for j in jobs for c in j["comps"]} if shard else None
        for folder in dirs.values():
            os.makedirs(folder, exist_ok=True)
            remove_stale_temps(folder, mine)
        total = sum(len(j["comps"]) for j in jobs)
        written = skipped = 0
        with tqdm(total=total, desc=f"{layout['which']} composites{part}", unit="img", position=position) as bar:
            for w, s in _pool_map(_compose_job, [(j, method, dirs) for j in jobs], workers):
                written, skipped = written + w, skipped + s
                bar.update(w + s)
        summary[layout["which"]] = dict(out=layout["out"], composites=total, written=written, skipped=skipped)
        print(f"{layout['which']}{part}: {total} composites in {layout['out']} "
              f"({written} written, {skipped} already there), method {method}")
    return summary
