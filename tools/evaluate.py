"""Score a folder of saved predictions with the Composition-1k metrics
(SAD, MSE, Grad, Conn), like the official MATLAB ``evaluate.m``.

    python tools/evaluate.py --predDir result/stage1 \\
        --alphaDir DATA/Test_set/alpha --trimapDir DATA/Test_set/trimaps \\
        [--json metrics.json] [--csv metrics.csv] [--workers 2]

The file list comes from the ground-truth folder; each prediction and trimap
has the same file name. Predictions are single-channel 8-bit PNGs as written by
core/test.py; trimaps are 0/128/255 with unknown = exactly 128. Prints one line
per image and the means (SAD, Grad and Conn /1000, MSE unscaled); see
core/metrics.py for the exact definitions and how they match the MATLAB code.
"""

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse

from core.metrics import format_table, mean_metrics, score_folder, write_metrics_csv, write_metrics_json
from core.utils import UserError, run_cli


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Composition-1k SAD/MSE/Grad/Conn of saved predictions.")
    parser.add_argument("--predDir", required=True, help="folder of predicted alphas (8-bit, single channel)")
    parser.add_argument("--alphaDir", required=True, help="folder of ground-truth alphas; defines the file list")
    parser.add_argument("--trimapDir", required=True, help="folder of trimaps (unknown = 128)")
    parser.add_argument("--json", help="also write per-image values and means to this JSON file")
    parser.add_argument("--csv", help="also write per-image values and means to this CSV file")
    parser.add_argument("--workers", type=int, default=1, help="processes scoring images in parallel (default 1)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    rows = score_folder(args.predDir, args.alphaDir, args.trimapDir, workers=args.workers)
    means = mean_metrics(rows)
    print(format_table(rows, means))
    if args.json:
        write_metrics_json(args.json, rows, means)
    if args.csv:
        write_metrics_csv(args.csv, rows, means)
    return 0


if __name__ == "__main__":
    run_cli(main)
