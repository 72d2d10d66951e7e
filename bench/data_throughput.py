"""Training-sample throughput: the pipeline before the cache against today's, side by side.

Run::

    python bench/data_throughput.py                 # 4 foregrounds × 6 backgrounds, 2 workers
    python bench/data_throughput.py --samples 200 --workers 4

Writes a synthetic set in a temporary folder, in the Adobe layout at real
sizes: 1920×1080 foregrounds (half ``.jpg`` with JPEG alphas, half ``.png``
with PNG alphas, as Adobe names an alpha like its foreground), 640×480 JPEG
backgrounds as in COCO, and the reference's offline PNG composites
(``tools/composite.py``). Then it times the same shuffled samples:

* in-process, one thread (OpenCV and torch limited to one): milliseconds of
  CPU per sample, i.e. samples/s per core, for the old pipeline
  (``bench/data_baseline.py``, main d29ecbc) and today's, offline and online,
  online with a cold cache (empty at the start) and a warm one, and with the
  backgrounds cached too;
* through a DataLoader with ``--workers`` workers (batch 1), old and new.

Today's samples are uint8; :func:`core.data.training_batch` makes them float on
the training device, so its CPU cost is printed apart. The cache's size on disk
is printed, and the first samples of every pipeline are checked equal to the old
ones bit for bit.
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

from torch.utils.data import default_collate

from bench import data_baseline as baseline
from core import data
from core.cache import human_bytes
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


def _indices(n, samples, seed):
    return np.random.default_rng(seed).integers(n, size=samples).tolist()


def per_sample_ms(get, indices):
    """Milliseconds per call of ``get(index)`` over ``indices``, in this process."""
    start = time.perf_counter()
    for i in tqdm(indices, unit="sample", leave=False):
        get(i)
    return 1000 * (time.perf_counter() - start) / len(indices)


def loader_rate(dataset, indices, workers):
    """Samples per second through a DataLoader (batch 1, ``workers`` workers), after a warm-up of 2 per worker."""
    warmup = 2 * max(workers, 1)
    order = indices[:warmup] + indices
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, sampler=order, num_workers=workers,
                                         worker_init_fn=data.worker_init_fn, **({"prefetch_factor": 4} if workers else {}))
    it = iter(loader)
    for _ in range(warmup):  # worker start-up is not what we measure
        next(it)
    start = time.perf_counter()
    for _ in tqdm(range(len(indices)), unit="sample", leave=False):
        next(it)
    return len(indices) / (time.perf_counter() - start)


def _same(new, old):
    a = data.training_batch(default_collate([new]), "cpu")
    return new["name"] == old["name"] and all(torch.equal(a[k][0], old[k]) for k in old if k != "name")


def main(argv=None):
    p = argparse.ArgumentParser(description="Samples per second of the training pipelines, before the cache and now.")
    p.add_argument("--num_fg", type=int, default=4, help="foregrounds (%(default)s)")
    p.add_argument("--bg_per_fg", type=int, default=6, help="backgrounds per foreground (%(default)s)")
    p.add_argument("--samples", type=int, default=60, help="samples timed per pipeline (%(default)s)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (%(default)s)")
    p.add_argument("--seed", type=int, default=0, help="data and sampling seed (%(default)s)")
    args = p.parse_args(argv)
    if min(args.num_fg, args.bg_per_fg, args.samples) < 1 or args.workers < 0:
        raise UserError("--num_fg, --bg_per_fg and --samples must be at least 1, --workers at least 0")
    rows, loader_rows = [], []
    with tempfile.TemporaryDirectory(prefix="dim-bench-") as tmp:
        adobe_dir, bg_dir = make_layout(tmp, args.num_fg, args.bg_per_fg, (1080, 1920), (480, 640), args.seed)
        composite_dataset(adobe_dir, train_bg_dir=bg_dir, only="train", workers=max(1, args.workers),
                          train_bg_per_fg=args.bg_per_fg)
        comp = [os.path.join(adobe_dir, "Training_set", "comp", k) for k in ("image", "fg", "bg", "alpha")]
        cache, cache_bg = os.path.join(tmp, "cache"), os.path.join(tmp, "cache-bg")
        offline = data.CompositedDataset(*comp, seed=args.seed)
        offline_cached = data.CompositedDataset(*comp, seed=args.seed, cache_dir=os.path.join(tmp, "cache-offline"))

        def online(**kw):
            return data.OnlineCompositeDataset(adobe_dir, bg_dir, bg_per_fg=args.bg_per_fg, seed=args.seed, **kw)

        new_online, cached, cached_bg = online(), online(cache_dir=cache), online(cache_dir=cache_bg,
                                                                                 cache_backgrounds=True)
        indices = _indices(len(offline), args.samples, args.seed)
        threads = cv2.getNumThreads(), torch.get_num_threads()
        cv2.setNumThreads(1)
        torch.set_num_threads(1)
        try:
            same = all(_same(ds[i], old(ds, i, 0)) for i in indices[:3]
                       for ds, old in ((offline, baseline.offline_item), (new_online, baseline.online_item)))
            rows.append(("offline, old (float32 in the worker)", per_sample_ms(lambda i: baseline.offline_item(offline, i, 0), indices)))
            rows.append(("offline, now", per_sample_ms(offline.__getitem__, indices)))
            data.build_cache(offline_cached, 1, desc="offline cache")
            rows.append(("offline, now, warm cache", per_sample_ms(offline_cached.__getitem__, indices)))
            rows.append(("online, old (float32 in the worker)", per_sample_ms(lambda i: baseline.online_item(new_online, i, 0), indices)))
            rows.append(("online, now, no cache", per_sample_ms(new_online.__getitem__, indices)))
            rows.append(("online, cold cache (empty at start)", per_sample_ms(cached.__getitem__, indices)))
            rows.append(("online, warm cache", per_sample_ms(cached.__getitem__, indices)))
            data.build_cache(cached_bg, 1, desc="background cache")
            rows.append(("online, warm cache + backgrounds", per_sample_ms(cached_bg.__getitem__, indices)))
            same &= all(_same(ds[i], baseline.online_item(ds, i, 0)) for i in indices[:3] for ds in (cached, cached_bg))
            batch = default_collate([cached[i] for i in indices[:8]])
            convert = per_sample_ms(lambda i: data.training_batch(batch, "cpu"), range(10)) / 8
        finally:
            cv2.setNumThreads(threads[0])
            torch.set_num_threads(threads[1])
        sizes = {name: data.SourceCache(folder).disk_bytes() for name, folder in
                 (("online (fg + alpha)", cache), ("online + backgrounds", cache_bg),
                  ("offline (4 images per sample)", os.path.join(tmp, "cache-offline")))}
        for name, ds in (("offline, old", baseline.Baseline(offline)), ("offline, now, warm cache", offline_cached),
                         ("online, old", baseline.Baseline(new_online)), ("online, now, warm cache", cached),
                         ("online, warm cache + backgrounds", cached_bg)):
            loader_rows.append((name, loader_rate(ds, indices, args.workers)))
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"OpenCV {cv2.__version__}; {args.num_fg} foregrounds 1920x1080 (PNG and JPEG), "
          f"{args.num_fg * args.bg_per_fg} backgrounds 640x480 JPEG, crops 320/480/640 -> 320x320, {args.samples} samples")
    old = {"offline": rows[0][1], "online": rows[3][1]}
    print(f"\nin-process, one thread  {'ms/sample':>10} {'samples/s/core':>15} {'vs old':>7}")
    for name, ms in rows:
        print(f"{name:38} {ms:9.1f} {1000 / ms:15.1f} {old[name.split(',')[0]] / ms:6.1f}x")
    print(f"training_batch on the CPU (on the GPU in training): {convert:.2f} ms/sample")
    print(f"\nDataLoader, {args.workers} workers, batch 1   {'samples/s':>10}")
    for name, rate in loader_rows:
        print(f"{name:38} {rate:10.1f}")
    print("\ncache on disk: " + "; ".join(f"{name} {human_bytes(b)} in {n} files" for name, (b, n) in sizes.items()))
    print(f"first 3 samples of every pipeline identical to the old ones (training_batch): {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    run_cli(main)
