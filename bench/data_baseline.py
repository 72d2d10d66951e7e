"""The training pipeline as it was before the source cache (main d29ecbc), kept as a baseline.

``bench/data_throughput.py`` times it beside today's pipeline, and the tests
compare today's :func:`core.data.training_batch` with its float32 samples bit for
bit. Same arithmetic as then: every source decoded per sample, the whole alpha
scanned for the crop centre, float64 blending, float32 tensors out of the worker.
"""

import cv2
import numpy as np
import torch

from core import data
from core.composite import composite_reference, fit_background_reference, make_composite, read_fg_alpha
from core.imageio import read_gray, read_image
from core.preprocess import make_input
from core.trimap import random_trimap


def crop_origin(alpha, crop, rng):
    """Step 3 as it was: inRange over the whole alpha for every sample."""
    crop_h, crop_w = crop
    h, w = alpha.shape
    unknown = cv2.inRange(alpha, 1, 254)
    per_row = cv2.reduce(unknown, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel() // 255
    total = int(per_row.sum())
    if total == 0:
        return 0, 0
    k = int(rng.integers(total))
    ends = np.cumsum(per_row)
    cy = int(np.searchsorted(ends, k, side="right"))
    cx = int(np.flatnonzero(unknown[cy])[k - (ends[cy] - per_row[cy])])
    cy = min(max(cy, crop_h / 2), h - crop_h / 2)
    cx = min(max(cx, crop_w / 2), w - crop_w / 2)
    return int(cy - crop_h / 2), int(cx - crop_w / 2)


def make_item(image, fg, bg, alpha, trimap, name):
    """Step 7 as it was: float32 tensors made in the worker."""
    def chw(img):
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32))

    return {"input": torch.from_numpy(make_input(image, trimap)), "image": chw(image), "fg": chw(fg),
            "bg": chw(bg), "alpha": torch.from_numpy(alpha.astype(np.float32)[None] / np.float32(255)),
            "trimap": torch.from_numpy(trimap.astype(np.float32)[None]), "name": name}


def finish_sample(image, fg, bg, alpha, rng, size, name):
    (image, fg, bg, alpha), _ = data.random_flip([image, fg, bg, alpha], rng)
    image, fg, bg, alpha = data.resize_to([image, fg, bg, alpha], size)
    return make_item(image, fg, bg, alpha, random_trimap(alpha, rng), name)


def sample_from_composite(image, fg, bg, alpha, crop, rng, size, name):
    image, fg, bg, alpha = data.upscale_to_crop([image, fg, bg, alpha], crop)
    origin = crop_origin(alpha, crop, rng)
    image, fg, bg, alpha = data.crop_window([image, fg, bg, alpha], origin, crop)
    return finish_sample(image, fg, bg, alpha, rng, size, name)


def offline_item(ds, index, epoch):
    """``CompositedDataset.__getitem__`` as it was, for ``ds`` (a :class:`core.data.CompositedDataset`)."""
    name, paths = ds.files[index]
    rng = data.sample_rng(ds.seed, epoch, name)
    image, fg, bg = (read_image(paths[k]) for k in ("image", "fg", "bg"))
    alpha = read_gray(paths["alpha"])
    crop = data.choose_crop_size(ds.crop_sizes, rng)
    return sample_from_composite(image, fg, bg, alpha, crop, rng, ds.size, name)


def online_item(ds, index, epoch):
    """``OnlineCompositeDataset.__getitem__`` as it was, for ``ds`` (a :class:`core.data.OnlineCompositeDataset`)."""
    i, name, bg_path = ds.samples[index]
    rng = data.sample_rng(ds.seed, epoch, name)
    fg, alpha3 = read_fg_alpha(ds.jobs[i]["fg"], ds.jobs[i]["alpha"], "reference")
    alpha = alpha3[:, :, 0]
    h, w = alpha.shape
    crop = data.choose_crop_size(ds.crop_sizes, rng)
    if data.upscaled_size(h, w, crop) is not None:
        image, bg, alpha = make_composite(fg, alpha3, bg_path, "reference")
        return sample_from_composite(image, fg, bg, alpha, crop, rng, ds.size, name)
    origin = crop_origin(alpha, crop, rng)
    fg, alpha3, alpha = data.crop_window([fg, alpha3, alpha], origin, crop)
    (bg,) = data.crop_window([fit_background_reference(read_image(bg_path), h, w)], origin, crop)
    image = composite_reference(fg, bg, alpha3)
    return finish_sample(image, fg, bg, alpha, rng, ds.size, name)


class Baseline(torch.utils.data.Dataset):
    """The old pipeline over a dataset's file lists, for DataLoader timing (``epoch`` fixed)."""

    def __init__(self, ds, epoch=0):
        self.ds, self.epoch = ds, epoch
        self.item = online_item if isinstance(ds, data.OnlineCompositeDataset) else offline_item

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, index):
        return self.item(self.ds, index, self.epoch)
