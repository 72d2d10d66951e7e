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
(the epoch lives in shared memory, so persistent workers see it too).

Samples cross the process boundary as uint8 tensors (a quarter of the bytes of
float32); :func:`training_batch` turns a collated batch into the float tensors
the training step uses, on its device, with exactly the values the reference's
float32 samples have.

With ``cache_dir`` every source image is decoded once into :mod:`core.cache`
and read back memory-mapped, with the alpha's per-row unknown-pixel counts that
step 3 draws the crop centre from.

Arrays are OpenCV's: BGR uint8 H×W×3 images, uint8 H×W alpha and trimap
(0 background, 128 unknown, 255 foreground). Sizes are (height, width).
"""

import hashlib
import os
import random

import cv2
import numpy as np
import torch

from core.cache import SourceCache, human_bytes
from core.imageio import read_gray, read_image
from core.preprocess import normalize_image
from core.trimap import random_trimap
from core.utils import UserError, preview
from core.composite import check_fg_alpha_size, fit_background_reference, plan_set, set_layout

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


def worker_count(value):
    """``--threads``: ``auto`` or a count ≥ 0 (argparse type; ValueError otherwise)."""
    if str(value).strip().lower() == "auto":
        return "auto"
    n = int(value)
    if n < 0:
        raise ValueError(value)
    return n


def resolve_workers(threads, local_processes=None):
    """DataLoader workers per process: ``threads`` as given, or for ``auto`` the CPUs this process may
    use (its affinity), shared among the ``local_processes`` of this machine (torchrun's
    ``LOCAL_WORLD_SIZE``), less one for the training process itself, at most 16."""
    if threads != "auto":
        return int(threads)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    local = local_processes or int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(0, min(16, cpus // max(1, local) - 1))


def loader_options(workers, device):
    """DataLoader keywords for long runs: workers kept between epochs (the epoch reaches them through
    shared memory), 4 batches prefetched per worker, pinned memory for a CUDA device."""
    options = {"num_workers": workers, "pin_memory": torch.device(device).type == "cuda"}
    if workers > 0:
        options.update(persistent_workers=True, prefetch_factor=4)
    return options


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


def unknown_per_row(alpha):
    """int32 H: how many pixels of each row of the uint8 H×W ``alpha`` have 0 < alpha < 255."""
    unknown = cv2.inRange(np.asarray(alpha), 1, 254)  # 255 where 0 < alpha < 255
    return cv2.reduce(unknown, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel() // 255


def crop_origin(alpha, crop, rng, per_row=None):
    """Step 3: top-left (y0, x0) of the crop window.

    The centre is a uniformly drawn pixel with 0 < alpha < 255 (row-major
    order), each coordinate clamped to [crop/2, size − crop/2]; the window
    starts at int(centre − crop/2). Without such a pixel the window is the
    top-left one and nothing is drawn. ``alpha``: uint8 H×W, H ≥ crop_h, W ≥ crop_w;
    ``per_row``: its :func:`unknown_per_row` when known (cached), so only one row is read.
    """
    crop_h, crop_w = crop
    h, w = alpha.shape
    assert h >= crop_h and w >= crop_w, "upscale_to_crop must run first"
    if per_row is None:
        per_row = unknown_per_row(alpha)
    total = int(per_row.sum())
    if total == 0:
        return 0, 0
    # The k-th unknown pixel in row-major order, found row first (cheaper than listing them all).
    k = int(rng.integers(total))
    ends = np.cumsum(per_row)
    cy = int(np.searchsorted(ends, k, side="right"))
    row = np.asarray(alpha[cy])
    cx = int(np.flatnonzero((row > 0) & (row < 255))[k - (ends[cy] - per_row[cy])])
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
    """Step 7 as the loader carries it: uint8 tensors, made float by :func:`training_batch`.

    'image', 'fg', 'bg' uint8 3×S×S BGR; 'alpha', 'trimap' uint8 1×S×S;
    'name' the composite's file name.
    """
    def chw(img):
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))

    return {"image": chw(image), "fg": chw(fg), "bg": chw(bg), "alpha": torch.from_numpy(alpha[None].copy()),
            "trimap": torch.from_numpy(trimap[None].copy()), "name": name}


_TABLES = {}


def _tables(device):
    """uint8 → float32 tables on ``device``: 3×256 normalised RGB (row c: RGB channel c) and 256 of v/255.

    Made by the very NumPy arithmetic of :func:`core.preprocess.make_input` on every value, so a
    gather gives its results bit for bit on any device (no division runs on the device).
    """
    key = str(device)
    if key not in _TABLES:
        ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)  # 1×256 BGR, B = G = R = v
        rgb = normalize_image(ramp)[:, 0, :]  # 3×256, RGB order
        unit = np.arange(256, dtype=np.uint8).astype(np.float32) / np.float32(255)
        _TABLES[key] = (torch.from_numpy(np.ascontiguousarray(rgb)).to(device),
                        torch.from_numpy(unit).to(device))
    return _TABLES[key]


def training_batch(batch, device):
    """A collated batch of :func:`make_item` samples → the float32 tensors of a training step, on ``device``.

    'input' B×4×S×S: normalised RGB and trimap/255 (:func:`core.preprocess.make_input`);
    'image', 'fg', 'bg' B×3×S×S BGR 0..255; 'alpha' B×1×S×S in [0, 1]; 'trimap' B×1×S×S
    0/128/255; 'name' as given. The uint8 tensors move first (non-blocking from pinned
    memory) and are converted there.
    """
    device = torch.device(device)
    rgb_table, unit = _tables(device)
    u8 = {k: batch[k].to(device, non_blocking=True) for k in ("image", "fg", "bg", "alpha", "trimap")}
    rgb = u8["image"].flip(1).long()  # BGR → RGB
    rgb += torch.arange(3, device=device).view(1, 3, 1, 1) * 256  # row c of the table
    out = {"input": torch.cat([rgb_table.flatten()[rgb], unit[u8["trimap"].long()]], dim=1)}
    out.update({k: u8[k].float() for k in ("image", "fg", "bg")})
    out["alpha"] = unit[u8["alpha"].long()]
    out["trimap"] = u8["trimap"].float()
    out["name"] = batch["name"]
    return out


def composite_uint8(fg, bg, alpha):
    """:func:`core.composite.composite_reference` in integers: equal for every uint8 input, a few times faster.

    The reference rounds fg·a/255 + bg·(1 − a/255), computed in float64, to the nearest integer.
    The exact value is N/255 with N = fg·a + bg·(255 − a) ≤ 65025, never a tie (N/255 is
    k + j/255), and float64's error is far below the 1/510 from a tie, so the result is N/255
    rounded: N in uint16 by OpenCV's widening multiply, then OpenCV's ``convertScaleAbs``
    by 1/255, which rounds to nearest (tests/test_data_cache.py checks all 256³ inputs).
    ``fg``, ``bg`` uint8 H×W×3; ``alpha`` uint8 H×W×3 or H×W (the same for every channel).
    """
    fg, bg, a = (np.ascontiguousarray(x) for x in (fg, bg, alpha))
    if a.ndim == 2:
        a = cv2.merge([a] * fg.shape[2])
    n = cv2.multiply(fg, a, dtype=cv2.CV_16U)
    n = cv2.add(n, cv2.multiply(bg, cv2.bitwise_not(a), dtype=cv2.CV_16U))  # ≤ 65025: no saturation
    return cv2.convertScaleAbs(n, alpha=1 / 255).reshape(fg.shape)


def finish_sample(image, fg, bg, alpha, rng, size, name):
    """Steps 4–7 on the cropped image, fg, bg (BGR uint8) and alpha (uint8 H×W)."""
    (image, fg, bg, alpha), _ = random_flip([image, fg, bg, alpha], rng)
    image, fg, bg, alpha = resize_to([image, fg, bg, alpha], size)
    return make_item(image, fg, bg, alpha, random_trimap(alpha, rng), name)


def sample_from_composite(image, fg, bg, alpha, crop, rng, size, name, per_row=None):
    """Steps 2–7 on a full-size composite (the crop size of step 1 already drawn).

    ``per_row``: the alpha's :func:`unknown_per_row` when cached (used unless step 2 resizes)."""
    h, w = alpha.shape
    image, fg, bg, alpha = upscale_to_crop([image, fg, bg, alpha], crop)
    origin = crop_origin(alpha, crop, rng, per_row if alpha.shape == (h, w) else None)
    image, fg, bg, alpha = crop_window([image, fg, bg, alpha], origin, crop)
    return finish_sample(image, fg, bg, alpha, rng, size, name)


# ---------------------------------------------------------------- decoded sources (cached or not)

BGR_ENTRY = {"bgr": (np.uint8, (3,))}  # read_image: BGR uint8 H×W×3
ALPHA_ENTRY = {"alpha": (np.uint8, (2, 3)), "rows": (np.int32, (1,))}  # channel 0 (or all 3 when they differ)
GRAY_ENTRY = {"gray": (np.uint8, (2,)), "rows": (np.int32, (1,))}  # read_gray: channel 0


def _decode_alpha(path):
    alpha3 = read_image(path)
    alpha = alpha3[:, :, 0]
    same = bool((alpha3 == alpha[:, :, None]).all())  # the usual grey alpha: one channel is enough
    return {"alpha": np.ascontiguousarray(alpha) if same else alpha3, "rows": unknown_per_row(alpha)}


def _decode_gray(path):
    gray = read_gray(path)
    return {"gray": gray, "rows": unknown_per_row(gray)}


class Sources:
    """Reads source images, through a :class:`core.cache.SourceCache` when one is given.

    Without a cache every call decodes the file, as the reference does.
    """

    def __init__(self, cache_dir=None):
        self.cache = SourceCache(cache_dir) if cache_dir else None

    def _get(self, path, kinds, decode):  # through the cache (each caller handles "no cache" itself)
        return self.cache.get(path, kinds, lambda: decode(path))

    def bgr(self, path):
        """:func:`core.imageio.read_image` of ``path`` (memory-mapped when cached)."""
        if self.cache is None:
            return read_image(path)
        return self._get(path, BGR_ENTRY, lambda p: {"bgr": read_image(p)})["bgr"]

    def alpha(self, path):
        """(alpha for blending: H×W, or H×W×3 when its channels differ; channel 0 H×W; per-row unknown
        counts, or None when not cached)."""
        if self.cache is None:
            alpha3 = read_image(path)
            return alpha3, alpha3[:, :, 0], None
        got = self._get(path, ALPHA_ENTRY, _decode_alpha)
        a = got["alpha"]
        return a, (a if a.ndim == 2 else a[:, :, 0]), got["rows"]

    def gray(self, path):
        """(:func:`core.imageio.read_gray` of ``path``, its per-row unknown counts or None when not cached)."""
        if self.cache is None:
            return read_gray(path), None
        got = self._get(path, GRAY_ENTRY, _decode_gray)
        return got["gray"], got["rows"]


# ---------------------------------------------------------------- datasets

class _TrainingSet(torch.utils.data.Dataset):
    """Shared sampling settings, seeding, epoch bookkeeping and the source cache."""

    def __init__(self, crop_sizes, size, seed, cache_dir=None):
        self.crop_sizes = tuple((int(h), int(w)) for h, w in crop_sizes)
        if not self.crop_sizes or min(min(c) for c in self.crop_sizes) <= 0:
            raise UserError(f"crop sizes must be positive (height, width) pairs, got {crop_sizes!r}")
        self.size = (int(size[0]), int(size[1]))
        if min(self.size) <= 0:
            raise UserError(f"--size_h/--size_w must be positive, got {size!r}")
        if int(seed) < 0:
            raise UserError(f"--seed must be a non-negative integer, got {seed}")
        self.seed = int(seed)
        # Shared memory: DataLoader workers (persistent ones too) read the epoch the main process set.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self.sources = Sources(cache_dir)

    @property
    def epoch(self):
        return int(self._epoch)

    def set_epoch(self, epoch):
        """Draw this epoch's augmentations. Call before ``iter(loader)``, workers see it too."""
        self._epoch.fill_(int(epoch))

    def rng(self, name):
        return sample_rng(self.seed, self.epoch, name)

    def cache_entries(self):
        """[(source path, entry kinds, reader)] of everything the cache holds for this set."""
        raise NotImplementedError

    def cache_report(self):
        """One line: the cache's folder, its size on disk and how much of this set it holds; None without one."""
        cache = self.sources.cache
        if cache is None:
            return None
        entries = self.cache_entries()
        built = sum(cache.has(path, kinds) for path, kinds, _ in entries)
        size, files = cache.disk_bytes()
        return (f"cache {cache.folder}: {human_bytes(size)} on disk in {files} files; {built} of {len(entries)} "
                f"source images of this set decoded ({100 * built / max(1, len(entries)):.0f}%)")


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
    ``cache_dir``: decode every file once into that folder (four full-size images per
    sample: about 20 MB for a 1920×1080 one, so meant for sets that fit the disk).
    """

    def __init__(self, img_dir, fg_dir, bg_dir, alpha_dir, crop_sizes=DEFAULT_CROP_SIZES,
                 size=DEFAULT_SIZE, seed=123, cache_dir=None):
        super().__init__(crop_sizes, size, seed, cache_dir)
        self.files = pair_files({"image": img_dir, "fg": fg_dir, "bg": bg_dir, "alpha": alpha_dir})

    def __len__(self):
        return len(self.files)

    def cache_entries(self):
        return [(paths[k], BGR_ENTRY, self.sources.bgr) for _, paths in self.files for k in ("image", "fg", "bg")] + \
            [(paths["alpha"], GRAY_ENTRY, self.sources.gray) for _, paths in self.files]

    def __getitem__(self, index):
        name, paths = self.files[index]
        rng = self.rng(name)
        image, fg, bg = (self.sources.bgr(paths[k]) for k in ("image", "fg", "bg"))
        alpha, per_row = self.sources.gray(paths["alpha"])  # channel 0 of a 3-channel read
        _same_size([image, fg, bg, alpha], paths.values())
        crop = choose_crop_size(self.crop_sizes, rng)
        return sample_from_composite(image, fg, bg, alpha, crop, rng, self.size, name, per_row)


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

    ``cache_dir``: decode each foreground and alpha once into that folder (with the
    alpha's per-row unknown counts); ``cache_backgrounds``: the backgrounds too
    (0.9 MB each for 640×480, about 40 GB for the 43,100 of the Adobe set).
    """

    def __init__(self, adobe_dir, bg_dir, bg_per_fg=100, crop_sizes=DEFAULT_CROP_SIZES, size=DEFAULT_SIZE,
                 seed=123, cache_dir=None, cache_backgrounds=False):
        super().__init__(crop_sizes, size, seed, cache_dir)
        if not os.path.isdir(adobe_dir):
            raise UserError(f"{adobe_dir}: Adobe Combined_Dataset folder does not exist")
        self.jobs = plan_set(set_layout(adobe_dir, "train", bg_dir, int(bg_per_fg)))
        # (foreground job, sample name, background path), index i·N + k
        self.samples = [(i, name, bg_path) for i, job in enumerate(self.jobs)
                        for _, name, bg_path, _ in job["comps"]]
        self.cache_backgrounds = bool(cache_backgrounds and cache_dir)

    def __len__(self):
        return len(self.samples)

    def cache_entries(self):
        out = [(job[k], kinds, reader) for job in self.jobs
               for k, kinds, reader in (("fg", BGR_ENTRY, self.sources.bgr), ("alpha", ALPHA_ENTRY, self.sources.alpha))]
        if self.cache_backgrounds:
            out += [(p, BGR_ENTRY, self.sources.bgr) for p in dict.fromkeys(bg for _, _, bg in self.samples)]
        return out

    def _fg_alpha(self, i):
        job = self.jobs[i]
        fg = self.sources.bgr(job["fg"])
        blend_alpha, alpha, per_row = self.sources.alpha(job["alpha"])
        check_fg_alpha_size(job["fg"], fg, job["alpha"], alpha)  # read_fg_alpha's check, on the decoded arrays
        return fg, blend_alpha, alpha, per_row

    def _background(self, path):
        return self.sources.bgr(path) if self.cache_backgrounds else read_image(path)

    def __getitem__(self, index):
        i, name, bg_path = self.samples[index]
        rng = self.rng(name)
        fg, blend_alpha, alpha, per_row = self._fg_alpha(i)
        h, w = alpha.shape
        crop = choose_crop_size(self.crop_sizes, rng)
        # The whole fit stays: a NumPy replica of cv2's fixed-point bilinear reproduces any window of it
        # bit for bit, but costs more than cv2's SIMD fit of the whole background (docs/performance.md).
        bg = fit_background_reference(self._background(bg_path), h, w)
        if upscaled_size(h, w, crop) is not None:
            # Step 2 resizes the whole composite, so make all of it (small foregrounds only).
            image = composite_uint8(fg, bg, blend_alpha)
            return sample_from_composite(image, np.asarray(fg), bg, np.asarray(alpha), crop, rng, self.size, name)
        origin = crop_origin(alpha, crop, rng, per_row)
        fg, blend_alpha, alpha, bg = crop_window([fg, blend_alpha, alpha, bg], origin, crop)
        image = composite_uint8(fg, bg, blend_alpha)
        return finish_sample(image, np.asarray(fg), bg, np.asarray(alpha), rng, self.size, name)


def build_cache(dataset, workers=1, desc="decoding"):
    """Decode into ``dataset``'s cache every source it lacks (tqdm bar); returns (decoded, already there)."""
    from tqdm import tqdm

    cache = dataset.sources.cache
    entries = dataset.cache_entries()
    todo = [(path, reader) for path, kinds, reader in entries if not cache.has(path, kinds)]
    done = len(entries) - len(todo)
    with tqdm(total=len(todo), desc=desc, unit="img") as bar:
        if workers <= 1:
            for path, reader in todo:
                reader(path)
                bar.update()
        else:
            from concurrent.futures import ThreadPoolExecutor  # cv2 decodes without the GIL
            with ThreadPoolExecutor(workers) as pool:
                for _ in pool.map(lambda item: item[1](item[0]), todo):
                    bar.update()
    return len(todo), done
