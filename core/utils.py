"""Small helpers shared by every entry point: user-facing errors, logging,
seeding, devices and torchrun/DDP bookkeeping."""

import logging
import os
import random
import sys

import numpy as np


def preview(items, limit=5, sort=True):
    """'a, b, c' or 'a, b, c, d, e and 7 more': a list of names for a one-line error message."""
    items = sorted(items) if sort else list(items)
    shown = ", ".join(map(str, items[:limit]))
    return shown if len(items) <= limit else f"{shown} and {len(items) - limit} more"


def plural(n, word):
    """``1 matte``, ``2 mattes``: a count for a log line."""
    return f"{n} {word}{'' if n == 1 else 's'}"


class UserError(Exception):
    """An error the user can fix (bad file, bad flag).

    Entry points wrapped by :func:`run_cli` print its message as one line on
    stderr and exit with status 2, without a traceback.
    """


def run_cli(main, argv=None):
    """Run ``main(argv)``; turn :class:`UserError` into a one-line message and exit 2.

    ``KeyboardInterrupt`` exits 130 with a short note; every other exception
    keeps its traceback because it is a bug, not a user error.
    """
    try:
        status = main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)


def setup_logging(log_file=None, rank=0, name="dim"):
    """Console + optional file logging; only rank 0 logs above WARNING.

    Returns the package logger. The log file is appended to, so a resumed run
    keeps the history of the interrupted one.
    """
    logger = logging.getLogger(name)
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(fmt)
    logger.addHandler(console)
    if log_file and rank == 0:
        parent = os.path.dirname(os.path.abspath(log_file))
        os.makedirs(parent, exist_ok=True)
        handler = logging.FileHandler(log_file, mode="a")
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    return logger


def seed_everything(seed):
    """Seed Python, NumPy and torch (all devices) from one integer."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def select_device(cuda=False, local_rank=0):
    """``cpu`` unless ``cuda`` is asked for; a missing GPU is a user error."""
    import torch

    if not cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError("--cuda was given but no CUDA device is available (drop --cuda to run on the CPU)")
    if local_rank >= torch.cuda.device_count():
        raise UserError(f"LOCAL_RANK {local_rank} but torch sees {torch.cuda.device_count()} GPU(s): start at most "
                        "that many processes per machine (torchrun --nproc_per_node)")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def dist_env():
    """(rank, local_rank, world_size) from torchrun's environment; (0, 0, 1) otherwise."""
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    return rank, local_rank, world_size


def torch_sees_gpu():
    """Whether torch can use a CUDA device; False when torch cannot even be imported."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. a driver too old for this torch: the answer is still "no"
            import torch

            return bool(torch.cuda.is_available())
    except Exception:  # a broken install runs on the CPU, as the shell test it replaces did
        return False


def script_device(cuda, script, doing, gpu=torch_sees_gpu):
    """``(use_gpu, status line)`` for the ``CUDA`` variable of ``train.sh``/``deploy.sh``.

    ``cuda``: ``""`` (the GPU when torch sees one, else the CPU), ``"1"`` (the
    GPU; :class:`UserError` without one) or ``"0"`` (the CPU). ``script`` and
    ``doing`` ("training", "testing") word the status line; ``gpu`` tells
    whether a GPU is seen (asked only when needed).
    """
    if cuda == "":
        if gpu():
            return True, f"{script}: {doing} on the GPU (torch sees one; CUDA=0 for the CPU)"
        return False, f"{script}: {doing} on the CPU (torch sees no GPU)"
    if cuda == "1":
        if not gpu():
            raise UserError("CUDA=1 but torch sees no CUDA device: leave CUDA unset or set CUDA=0 to run on the CPU")
        return True, f"{script}: {doing} on the GPU (CUDA=1)"
    if cuda == "0":
        return False, f"{script}: {doing} on the CPU (CUDA=0)"
    raise UserError(f"CUDA must be 1 (GPU) or 0 (CPU), got '{cuda}'")


def _device_command(argv):
    """``python -m core.utils device SCRIPT DOING CUDA``: the status line on stderr, ``--cuda`` on stdout for the GPU."""
    if len(argv) != 4 or argv[0] != "device":
        raise UserError("usage: python -m core.utils device SCRIPT DOING CUDA")
    use_gpu, line = script_device(argv[3], argv[1], argv[2])
    print(line, file=sys.stderr)
    if use_gpu:
        print("--cuda")


if __name__ == "__main__":
    run_cli(_device_command, sys.argv[1:])
