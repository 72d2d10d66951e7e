"""Training-sample throughput: offline composites vs online composition, side by side.

Run::

    python bench/data_throughput.py                 # 4 foregrounds × 6 backgrounds, 2 workers
    python bench/data_throughput.py --samples 200 --workers 4

Writes a synthetic set in a temporary folder, in the Adobe layout at real
sizes: 1920×1080 foregrounds (half ``.jpg`` with JPEG alphas, half ``.png``
with PNG alphas, as Adobe names an alpha like its foreground), 640×480 JPEG
backgrounds as in COCO, and the reference's offline PNG composites
(``tools/composite.py``). Then it draws the same shuffled samples from
:class:`core.data.CompositedDataset` and :class:`core.data.OnlineCompositeDataset`
through a DataLoader (batch 1) and prints samples per second for each.
"""

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import platform
import tempfile
import time

import cv2
import numpy as np
import torch
from tqdm import tqdm

from core import data
from core.utils import UserError, run_cli
from core.composite import COCO2014_PREFIX, composite_dataset
from core.imageio import write_image
from tools.make_synthetic import make_background, make_foreground


def make_layout(out, num_fg, bg_per_fg, fg_size, bg_size, seed):
    """Write Combined_Dataset/ and train2017/ under ``out``; returns (adobe_dir, bg_dir)."""
    rng = np.random.default_rng(seed)
    train = os.path.join(out, "Combined_Dataset", "Training_set")
    sources = [os.path.join(train, "Adobe-licensed images"), os.path.join(train, "Other")]
    bg_dir = os.path.join(out, "train2017")
    for folder in [os.path.join(s, k) for s in sources for k in ("fg", "alpha")] + [bg_dir]:
        os.makedirs(folder, exist_ok=True)
    fg_names, bg_names = [], []
    for i in tqdm(range(num_fg), desc="foregrounds", unit="img"):
        name = f"bench-{i:03d}{'.jpg' if i % 2 == 0 else '.png'}"
        fg, alpha = make_foreground(rng, *fg_size)
        params = [cv2.IMWRITE_JPEG_QUALITY, 95] if name.endswith(".jpg") else []
        write_image(os.path.join(sources[i % 2], "fg", name), fg, params)
        write_image(os.path.join(sources[i % 2], "alpha", name), alpha, params)
        fg_names.append(name)
    for j in tqdm(range(num_fg * bg_per_fg), desc="backgrounds", unit="img"):
        name = f"{j + 9:012d}.jpg"
        write_image(os.path.join(bg_dir, name), make_background(rng, *bg_size), [cv2.IMWRITE_JPEG_QUALITY, 90])
        bg_names.append(COCO2014_PREFIX + name)
    for path, names in ((os.path.join(train, "training_fg_names.txt"), fg_names),
                        (os.path.join(train, "training_bg_names.txt"), bg_names)):
        with open(path, "w", encoding="utf-8") as f:
            f.write("".join(n + "\n" for n in names))
    return os.path.join(out, "Combined_Dataset"), bg_dir


def throughput(dataset, samples, workers, seed):
    """Samples per second over ``samples`` shuffled items, after a warm-up of 2 per worker."""
    warmup = 2 * max(workers, 1)
    generator = torch.Generator().manual_seed(seed)
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=samples + warmup,
                                             generator=generator)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, sampler=sampler, num_workers=workers,
                                         worker_init_fn=data.worker_init_fn)
    it = iter(loader)
    for _ in range(warmup):  # worker start-up and first decodes are not what we measure
        next(it)
    start = time.perf_counter()
    for _ in tqdm(range(samples), desc=type(dataset).__name__, unit="sample", leave=False):
        next(it)
    return samples / (time.perf_counter() - start)


def _identical(a, b):
    return a["name"] == b["name"] and all(torch.equal(a[k], b[k]) for k in a if k != "name")


def main(argv=None):
    p = argparse.ArgumentParser(description="Samples per second of the offline and online training pipelines.")
    p.add_argument("--num_fg", type=int, default=4, help="foregrounds (%(default)s)")
    p.add_argument("--bg_per_fg", type=int, default=6, help="backgrounds per foreground (%(default)s)")
    p.add_argument("--samples", type=int, default=100, help="samples timed per pipeline (%(default)s)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (%(default)s)")
    p.add_argument("--seed", type=int, default=0, help="data and sampling seed (%(default)s)")
    args = p.parse_args(argv)
    if min(args.num_fg, args.bg_per_fg, args.samples) < 1 or args.workers < 0:
        raise UserError("--num_fg, --bg_per_fg and --samples must be at least 1, --workers at least 0")
    with tempfile.TemporaryDirectory(prefix="dim-bench-") as tmp:
        adobe_dir, bg_dir = make_layout(tmp, args.num_fg, args.bg_per_fg, (1080, 1920), (480, 640), args.seed)
        composite_dataset(adobe_dir, train_bg_dir=bg_dir, only="train", workers=max(1, args.workers),
                          train_bg_per_fg=args.bg_per_fg)
        comp = os.path.join(adobe_dir, "Training_set", "comp")
        offline = data.CompositedDataset(*(os.path.join(comp, k) for k in ("image", "fg", "bg", "alpha")),
                                         seed=args.seed)
        online = data.OnlineCompositeDataset(adobe_dir, bg_dir, bg_per_fg=args.bg_per_fg, seed=args.seed)
        offline_index = {name: i for i, (name, _) in enumerate(offline.files)}
        same = all(_identical(online[i], offline[offline_index[online.samples[i][1]]]) for i in range(3))
        pipelines = {"offline (CompositedDataset)": offline, "online (OnlineCompositeDataset)": online}
        rates = {name: throughput(ds, args.samples, args.workers, args.seed) for name, ds in pipelines.items()}
    base = rates["offline (CompositedDataset)"]
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"OpenCV {cv2.__version__}; {args.workers} workers, batch 1, {args.samples} samples, "
          f"1920x1080 foregrounds, 640x480 backgrounds, crops 320/480/640 -> 320x320")
    print(f"{'pipeline':34} {'samples/s':>10} {'ms/sample':>10} {'speed-up':>9}")
    for name, rate in rates.items():
        print(f"{name:34} {rate:10.1f} {1000 / rate:10.1f} {rate / base:8.2f}x")
    print(f"first 3 online samples identical to the offline ones: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    run_cli(main)
