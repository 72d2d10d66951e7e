"""Training data: the reference's sampling of one training example (SPEC §6).

Two datasets return identical samples:

* :class:`CompositedDataset` reads the composites ``tools/composite.py`` wrote
  (``Training_set/comp/{image,fg,bg,alpha}``), as the reference does.
* :class:`OnlineCompositeDataset` reads the Adobe foregrounds and alphas and
  the COCO backgrounds and composes each sample on the fly with the same
  arithmetic (SPEC §5), but only inside the crop window, so nothing composited
  is stored and a sample costs a fraction of the offline one.

Every step of SPEC §6 is a small pure function taking an explicit
``numpy.random.Generator``. The generator of a sample is seeded from
``(seed, epoch, sample name)`` (:func:`sample_rng`), so a sample does not depend
on the number of DataLoader workers, on the rank, or on the dataset kind; call
``dataset.set_epoch(epoch)`` before creating each epoch's DataLoader iterator
(workers hold a copy of the dataset, so use ``persistent_workers=False``).

Arrays are OpenCV's: BGR uint8 H×W×3 images, uint8 H×W alpha and trimap
(0 background, 128 unknown, 255 foreground). Sizes are (height, width).
"""

import hashlib
import os
import random

import cv2
import numpy as np
import torch

from core.imageio import read_gray, read_image
from core.preprocess import make_input
from core.trimap import random_trimap
from core.utils import UserError, preview
from core.composite import (composite_reference, fit_background_reference, make_composite, plan_set,
                             read_fg_alpha, set_layout)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DEFAULT_CROP_SIZES = ((320, 320), (480, 480), (640, 640))  # --crop_h/--crop_w 320,480,640
DEFAULT_SIZE = (320, 320)  # --size_h/--size_w


# ---------------------------------------------------------------- files

def list_images(folder, what="image"):
    """{stem: file name} of the images directly in ``folder`` (hidden files and non-images ignored).

    Raises UserError when the folder is missing, holds no image, or holds two
    images with the same stem (``a.png`` and ``a.jpg``), which could not pair.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise UserError(f"{folder}: {what} folder does not exist")
    stems, clashes = {}, []
    for name in os.listdir(folder):
        stem, ext = os.path.splitext(name)
        if name.startswith(".") or ext.lower() not in IMAGE_EXTENSIONS:
            continue
        if stem in stems:
            clashes.append(f"{stems[stem]}/{name}")
        stems[stem] = name
    if clashes:
        raise UserError(f"{folder}: several {what} files share a name: {preview(clashes)}")
    if not stems:
        raise UserError(f"{folder}: {what} folder holds no image ({'/'.join(IMAGE_EXTENSIONS)})")
    return stems


def pair_files(dirs):
    """Pair the images of several folders by file name without extension.

    ``dirs``: {key: folder}, e.g. ``{"image": …, "fg": …, "bg": …, "alpha": …}``.
    Returns ``[(name, {key: path})]`` sorted by name, where ``name`` is the file
    name in the first folder. Raises UserError naming the folder and (a few of)
    the names when a folder is missing or empty, or when any name is missing
    from any folder.
    """
    listed = {key: list_images(folder, key) for key, folder in dirs.items()}
    every = set().union(*listed.values())
    problems = []
    for key, stems in listed.items():
        missing = every - stems.keys()
        if missing:
            problems.append(f"{len(missing)} missing from {key} folder {dirs[key]}: {preview(missing)}")
    if problems:
        raise UserError(f"{' and '.join(dirs)} files do not pair: " + "; ".join(problems))
    first = next(iter(dirs))
    return [(listed[first][stem], {key: os.path.join(dirs[key], listed[key][stem]) for key in dirs})
            for stem in sorted(every)]


def parse_crop_sizes(crop_h, crop_w):
    """Crop sizes from the reference flags: ``"320,480,640"``, ``"320,480,640"`` → ((320, 320), …).

    Either argument may also be a sequence of ints. Heights and widths pair up in order.
    """
    def ints(value, flag):
        items = value.split(",") if isinstance(value, str) else list(value)
        try:
            out = [int(v) for v in items]
        except (TypeError, ValueError):
            raise UserError(f"{flag}={value!r}: expected comma-separated integers such as 320,480,640") from None
        if not out or min(out) <= 0:
            raise UserError(f"{flag}={value!r}: expected positive integers such as 320,480,640")
        return out

    hs, ws = ints(crop_h, "--crop_h"), ints(crop_w, "--crop_w")
    if len(hs) != len(ws):
        raise UserError(f"--crop_h has {len(hs)} values and --crop_w {len(ws)}; they pair up in order, "
                        "so give the same number of each")
    return tuple(zip(hs, ws))


# ---------------------------------------------------------------- randomness

def sample_rng(seed, epoch, name):
    """The generator of one sample: a pure function of (seed, epoch, sample name).

    Keyed by name (not by index), so offline and online datasets, any worker
    count, any rank and any sampler order draw the same parameters for a sample.
    """
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest()
    return np.random.default_rng([int(seed), int(epoch), int.from_bytes(digest, "little")])


def worker_init_fn(worker_id):
    """DataLoader ``worker_init_fn``: seed Python's and NumPy's global RNGs per worker.

    The sampling here draws only from :func:`sample_rng`; this covers anything
    else that might use ``random``/``numpy.random``. Torch already seeds every
    worker with ``base_seed + worker_id``, ``base_seed`` following the main
    process's torch seed, so seed torch with ``seed + rank`` there. (Do not call
    ``cv2.setNumThreads`` in a forked worker: it deadlocks once the parent has
    used OpenCV's thread pool.)
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


# ---------------------------------------------------------------- sampling steps (SPEC §6)

def choose_crop_size(crop_sizes, rng):
    """Step 1: one (crop_h, crop_w) pair, uniformly."""
    return tuple(crop_sizes[int(rng.integers(len(crop_sizes)))])


def upscaled_size(h, w, crop):
    """Step 2's target size, (new_h, new_w), or None when an h×w image holds the crop.

    ratio = max(crop_w / w, crop_h / h); the new size is (int(h·ratio + 1), int(w·ratio + 1)).
    """
    crop_h, crop_w = crop
    ratio = max(crop_w / w, crop_h / h)
    if ratio <= 1:
        return None
    return int(h * ratio + 1.0), int(w * ratio + 1.0)


def upscale_to_crop(images, crop):
    """Step 2: resize every image (bilinear) to :func:`upscaled_size` when smaller than ``crop``."""
    h, w = images[0].shape[:2]
    target = upscaled_size(h, w, crop)
    if target is None:
        return list(images)
    return [cv2.resize(img, (target[1], target[0]), interpolation=cv2.INTER_LINEAR) for img in images]


def crop_origin(alpha, crop, rng):
    """Step 3: top-left (y0, x0) of the crop window.

    The centre is a uniformly drawn pixel with 0 < alpha < 255 (row-major
    order), each coordinate clamped to [crop/2, size − crop/2]; the window
    starts at int(centre − crop/2). Without such a pixel the window is the
    top-left one and nothing is drawn. ``alpha``: uint8 H×W, H ≥ crop_h, W ≥ crop_w.
    """
    crop_h, crop_w = crop
    h, w = alpha.shape
    assert h >= crop_h and w >= crop_w, "upscale_to_crop must run first"
    unknown = cv2.inRange(alpha, 1, 254)  # 255 where 0 < alpha < 255
    per_row = cv2.reduce(unknown, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel() // 255
    total = int(per_row.sum())
    if total == 0:
        return 0, 0
    # The k-th unknown pixel in row-major order, found row first (cheaper than listing them all).
    k = int(rng.integers(total))
    ends = np.cumsum(per_row)
    cy = int(np.searchsorted(ends, k, side="right"))
    cx = int(np.flatnonzero(unknown[cy])[k - (ends[cy] - per_row[cy])])
    cy = min(max(cy, crop_h / 2), h - crop_h / 2)
    cx = min(max(cx, crop_w / 2), w - crop_w / 2)
    return int(cy - crop_h / 2), int(cx - crop_w / 2)


def crop_window(images, origin, crop):
    """The crop_h×crop_w window at ``origin`` = (y0, x0) of every image (views)."""
    (y0, x0), (crop_h, crop_w) = origin, crop
    return [img[y0:y0 + crop_h, x0:x0 + crop_w] for img in images]


def random_flip(images, rng):
    """Step 4: flip every image left-right together with probability 0.5; returns (images, flipped)."""
    flipped = bool(rng.random() < 0.5)
    if flipped:
        images = [cv2.flip(img, 1) for img in images]
    return list(images), flipped


def resize_to(images, size):
    """Step 5: resize every image (bilinear) to size = (h, w) unless it already has that size."""
    h, w = size
    return [img if img.shape[:2] == (h, w) else cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
            for img in images]


def make_item(image, fg, bg, alpha, trimap, name):
    """Step 7: the sample dict, float32 tensors.

    'input' 4×S×S (normalised RGB, trimap/255: :func:`core.preprocess.make_input`);
    'image', 'fg', 'bg' 3×S×S BGR 0..255; 'alpha' 1×S×S in [0, 1];
    'trimap' 1×S×S with values 0/128/255; 'name' the composite's file name.
    """
    def chw(img):
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32))

    return {
        "input": torch.from_numpy(make_input(image, trimap)),
        "image": chw(image),
        "fg": chw(fg),
        "bg": chw(bg),
        "alpha": torch.from_numpy(alpha.astype(np.float32)[None] / np.float32(255)),
        "trimap": torch.from_numpy(trimap.astype(np.float32)[None]),
        "name": name,
    }


def finish_sample(image, fg, bg, alpha, rng, size, name):
    """Steps 4–7 on the cropped image, fg, bg (BGR uint8) and alpha (uint8 H×W)."""
    (image, fg, bg, alpha), _ = random_flip([image, fg, bg, alpha], rng)
    image, fg, bg, alpha = resize_to([image, fg, bg, alpha], size)
    return make_item(image, fg, bg, alpha, random_trimap(alpha, rng), name)


def sample_from_composite(image, fg, bg, alpha, crop, rng, size, name):
    """Steps 2–7 on a full-size composite (the crop size of step 1 already drawn)."""
    image, fg, bg, alpha = upscale_to_crop([image, fg, bg, alpha], crop)
    origin = crop_origin(alpha, crop, rng)
    image, fg, bg, alpha = crop_window([image, fg, bg, alpha], origin, crop)
    return finish_sample(image, fg, bg, alpha, rng, size, name)


# ---------------------------------------------------------------- datasets

class _TrainingSet(torch.utils.data.Dataset):
    """Shared sampling settings, seeding and epoch bookkeeping."""

    def __init__(self, crop_sizes, size, seed):
        self.crop_sizes = tuple((int(h), int(w)) for h, w in crop_sizes)
        if not self.crop_sizes or min(min(c) for c in self.crop_sizes) <= 0:
            raise UserError(f"crop sizes must be positive (height, width) pairs, got {crop_sizes!r}")
        self.size = (int(size[0]), int(size[1]))
        if min(self.size) <= 0:
            raise UserError(f"--size_h/--size_w must be positive, got {size!r}")
        if int(seed) < 0:
            raise UserError(f"--seed must be a non-negative integer, got {seed}")
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch):
        """Draw this epoch's augmentations. Call before ``iter(loader)`` (workers copy the dataset)."""
        self.epoch = int(epoch)

    def rng(self, name):
        return sample_rng(self.seed, self.epoch, name)


def _same_size(arrays, paths):
    shapes = {p: a.shape[:2] for p, a in zip(paths, arrays)}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{p} {h}×{w}" for p, (h, w) in shapes.items())
        raise UserError(f"images of one sample differ in size: {listed}")


class CompositedDataset(_TrainingSet):
    """The reference's training set on offline composites (Xu et al., CVPR 2017; SPEC §6).

    Folders as written by ``tools/composite.py`` (``Training_set/comp/{image,fg,bg,alpha}``),
    files paired by name. ``crop_sizes``: (h, w) pairs (:func:`parse_crop_sizes`);
    ``size``: (h, w) of the returned sample. Items: see :func:`make_item`.
    """

    def __init__(self, img_dir, fg_dir, bg_dir, alpha_dir, crop_sizes=DEFAULT_CROP_SIZES,
                 size=DEFAULT_SIZE, seed=123):
        super().__init__(crop_sizes, size, seed)
        self.files = pair_files({"image": img_dir, "fg": fg_dir, "bg": bg_dir, "alpha": alpha_dir})

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        name, paths = self.files[index]
        rng = self.rng(name)
        image, fg, bg = (read_image(paths[k]) for k in ("image", "fg", "bg"))
        alpha = read_gray(paths["alpha"])  # channel 0 of a 3-channel read
        _same_size([image, fg, bg, alpha], paths.values())
        crop = choose_crop_size(self.crop_sizes, rng)
        return sample_from_composite(image, fg, bg, alpha, crop, rng, self.size, name)


class OnlineCompositeDataset(_TrainingSet):
    """The same samples as :class:`CompositedDataset`, composed on the fly (SPEC §5 + §6).

    ``adobe_dir``: the ``Combined_Dataset`` folder (its ``Training_set`` name
    lists and ``{Adobe-licensed images,Other}/{fg,alpha}``); ``bg_dir``: COCO
    train2017. Sample ``i·N + k`` (N = ``bg_per_fg``) is foreground line i over
    background line i·N + k, named ``<fg name minus its 4-char extension>_<k>.png``
    like its offline composite. The layout is checked up front by
    :func:`tools.composite.plan_set` (UserError on missing lists, folders or
    files, or background lines ≠ foregrounds × N).

    Only the crop window is composed; when the foreground is smaller than the
    drawn crop (step 2 upscales the whole composite) the whole composite is
    made first. Either way every value equals the offline sample's.
    """

    def __init__(self, adobe_dir, bg_dir, bg_per_fg=100, crop_sizes=DEFAULT_CROP_SIZES, size=DEFAULT_SIZE,
                 seed=123):
        super().__init__(crop_sizes, size, seed)
        if not os.path.isdir(adobe_dir):
            raise UserError(f"{adobe_dir}: Adobe Combined_Dataset folder does not exist")
        self.jobs = plan_set(set_layout(adobe_dir, "train", bg_dir, int(bg_per_fg)))
        # (foreground job, sample name, background path), index i·N + k
        self.samples = [(i, name, bg_path) for i, job in enumerate(self.jobs)
                        for _, name, bg_path, _ in job["comps"]]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        i, name, bg_path = self.samples[index]
        rng = self.rng(name)
        fg, alpha3 = read_fg_alpha(self.jobs[i]["fg"], self.jobs[i]["alpha"], "reference")
        alpha = alpha3[:, :, 0]
        h, w = alpha.shape
        crop = choose_crop_size(self.crop_sizes, rng)
        if upscaled_size(h, w, crop) is not None:
            # Step 2 resizes the whole composite, so make all of it (small foregrounds only).
            image, bg, alpha = make_composite(fg, alpha3, bg_path, "reference")
            return sample_from_composite(image, fg, bg, alpha, crop, rng, self.size, name)
        origin = crop_origin(alpha, crop, rng)
        fg, alpha3, alpha = crop_window([fg, alpha3, alpha], origin, crop)
        # The bilinear fit's values depend on the full fitted size, so fit the whole background.
        (bg,) = crop_window([fit_background_reference(read_image(bg_path), h, w)], origin, crop)
        image = composite_reference(fg, bg, alpha3)
        return finish_sample(image, fg, bg, alpha, rng, self.size, name)
