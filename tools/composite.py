"""Composite the Adobe Deep Image Matting training and test sets (SPEC §5).

A command line over :mod:`core.composite`, which documents the outputs::

    python tools/composite.py --root_dir DATA/Combined_Dataset \\
        --train_bg_dir DATA/train2017 --test_bg_dir DATA/VOC2012/JPEGImages
    # Adobe's own compositing (the published Composition-1k test set), kept apart:
    python tools/composite.py --root_dir DATA/Combined_Dataset \\
        --test_bg_dir DATA/VOC2012/JPEGImages --only test --method adobe --comp_name comp_adobe

Several processes or machines on one shared folder: ``torchrun --nproc_per_node N
tools/composite.py …`` (each rank one shard; rank 0 prints the combined speed),
or ``--shard K/N`` on each of N machines (no communication). Together they
write what one run writes; rerunning any shard finishes its own composites.
"""

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse

from core.composite import METHODS, composite_dataset
from core.sharding import Clock, add_dist_args, parse_shard, speed_lines, start
from core.utils import UserError, dist_env, run_cli


def main(argv=None):
    p = argparse.ArgumentParser(description="Composite the Adobe Deep Image Matting training and test sets "
                                            "(SPEC §5).")
    p.add_argument("--root_dir", required=True, help="the extracted Combined_Dataset folder")
    p.add_argument("--train_bg_dir", help="MS-COCO train2017 images (training backgrounds)")
    p.add_argument("--test_bg_dir", help="PASCAL VOC 2012 JPEGImages (test backgrounds)")
    p.add_argument("--method", choices=METHODS, default="reference",
                   help="reference: bilinear fit, float blend rounded half to even (default); adobe: Adobe's "
                        "script, bicubic fit and truncation (made the published Composition-1k test set)")
    p.add_argument("--only", choices=("train", "test"), help="composite one set only")
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))  # torchrun: the machine's cores are shared out
    p.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1) // local_world),
                   help="processes (per rank under torchrun; default: %(default)s)")
    p.add_argument("--no_copies", action="store_true",
                   help="skip the fg/bg copies (and the training alpha copies) beside each composite")
    p.add_argument("--train_bg_per_fg", type=int, default=100, help="backgrounds per training foreground (100)")
    p.add_argument("--test_bg_per_fg", type=int, default=20, help="backgrounds per test foreground (20)")
    p.add_argument("--comp_name", default="comp", help="output folder name inside Training_set/ and Test_set/")
    p.add_argument("--shard", metavar="K/N",
                   help="write only shard K of N (every N-th foreground from the K-th): run K = 1 … N on N machines "
                        "that share --root_dir")
    add_dist_args(p, default=3600)
    args = p.parse_args(argv)
    if args.workers < 1 or args.train_bg_per_fg < 1 or args.test_bg_per_fg < 1:
        raise UserError("--workers, --train_bg_per_fg and --test_bg_per_fg must be at least 1")
    if not args.comp_name or os.sep in args.comp_name or args.comp_name in (".", "..", "all"):
        raise UserError(f"--comp_name {args.comp_name!r}: give a plain folder name other than 'all'")
    rank, local_rank, world = dist_env()
    if args.shard and world > 1:
        raise UserError("--shard is for separate runs; under torchrun each rank is already one shard")
    shard = parse_shard(args.shard) if args.shard else (rank, world) if world > 1 else None
    ranks = start(args.dist_timeout)  # under torchrun: only to gather the counts at the end
    try:
        clock = Clock()
        summary = ranks.run_all(lambda: composite_dataset(
            args.root_dir, args.train_bg_dir, args.test_bg_dir, args.method, args.only, args.workers,
            not args.no_copies, args.train_bg_per_fg, args.test_bg_per_fg, args.comp_name, shard=shard,
            position=local_rank if world > 1 else None), "compositing")
        written = sum(s["written"] for s in summary.values())
        reports = ranks.run_all(lambda: clock.report(ranks, written, f"{args.workers} workers"), "compositing",
                                gather=True)
        if ranks.main:
            for line in speed_lines(reports, unit="composite"):
                print(line)
    finally:
        ranks.close()
    return 0


if __name__ == "__main__":
    run_cli(main)
