"""Prediction and compositing on several processes: torchrun's ranks, or ``--shard K/N``.

Each rank takes every ``world``-th item from its rank on (:func:`share`), in
the items' fixed order, so the shares of 5 items on 3 ranks are items 0, 3 /
1, 4 / 2, and :func:`unshard` puts the gathered per-item results back into
one process's order. Ranks talk only through :class:`Ranks`: small Python
objects (check messages, scores, counts) over a gloo process group with a
timeout, so a rank that stops or hangs ends the others with one clear line
instead of a hang.

Why gloo on the GPU too: prediction exchanges no tensors, only a few pickled
objects at the start and the end. Gloo carries them from host memory, honours
its timeout on every call, and lets several ranks share one GPU; NCCL would
copy each object through the device and gains nothing here.
"""

import datetime
import math
import os
import re
import socket
import time

from core.utils import UserError, dist_env, plural

DEFAULT_TIMEOUT = 10  # minutes a rank waits for the others at each meeting point (core/train.py's unit too)


def add_dist_args(parser, default=DEFAULT_TIMEOUT):
    """``--dist_timeout``: how long a rank waits for the others under torchrun."""
    parser.add_argument("--dist_timeout", type=float, default=default,
                        help="under torchrun: minutes a rank waits for the others at each meeting point before "
                             "it stops with an error naming the wait (default: %(default)g; as core/train.py's)")


def share(items, rank, world):
    """Rank ``rank``'s items of ``world``: every ``world``-th item from index ``rank``, in order."""
    return list(items)[rank::world]


def unshard(shares):
    """``shares[r]`` = rank r's :func:`share` (results per item) → one list in the items' order."""
    world = len(shares)
    total = sum(len(s) for s in shares)
    return [shares[i % world][i // world] for i in range(total)]


def parse_shard(text):
    """``"K/N"`` (1 ≤ K ≤ N) → ``(K - 1, N)``: this machine's 0-based shard and the number of shards."""
    try:
        k, n = (int(part) for part in str(text).split("/"))
    except ValueError:
        raise UserError(f"--shard {text!r}: give K/N, e.g. 1/2 and 2/2 for two machines") from None
    if not 1 <= k <= n:
        raise UserError(f"--shard {text!r}: K must be between 1 and N")
    return k - 1, n


class Ranks:
    """This process's place among the ranks, and the calls that meet the others (all with a timeout).

    ``rank``, ``local_rank``, ``world``; ``timeout``: seconds (:func:`start` takes minutes). With ``world == 1``
    every call is local, so one process runs exactly the code it ran before.
    """

    def __init__(self, rank=0, local_rank=0, world=1, timeout=DEFAULT_TIMEOUT * 60, group=None):
        self.rank, self.local_rank, self.world, self.timeout = rank, local_rank, world, timeout
        self.group = group

    @property
    def distributed(self):
        return self.world > 1

    @property
    def main(self):
        return self.rank == 0

    def share(self, items):
        return share(items, self.rank, self.world)

    def all_gather(self, obj, what):
        """Every rank's ``obj``, in rank order, on every rank. ``what``: the step, for the timeout message."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        try:
            dist.all_gather_object(out, obj, group=self.group)
        except Exception as exc:  # noqa: BLE001 — gloo: RuntimeError/DistBackendError on timeouts, lost peers
            raise UserError(self.lost(what, exc)) from None
        return out

    def lost(self, what, exc):
        """The one line for a rank that did not answer (stopped, failed or hung)."""
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = re.sub(r"^\[[^\]]*\]\s*", "", lines[0])[:200] if lines else type(exc).__name__  # no gloo source path
        return (f"rank {self.rank}: another rank did not answer within {self.timeout:g} s while {what} "
                f"(it stopped, failed or is still busy; see its output; --dist_timeout sets the wait): {detail}")

    def run_all(self, fn, what, gather=False):
        """Run ``fn()`` here; if it raises on any rank, every rank raises the same one line.

        A :class:`UserError` is passed on as its message (the lowest failing
        rank's, so the line is the same everywhere, and the same as one process
        gives when every rank fails alike); another exception is a bug: the
        other ranks get a line naming it and this rank re-raises it, traceback
        and all. Returns ``fn()``'s value, or with ``gather`` every rank's
        value in rank order (one value in a list for one process).
        """
        if not self.distributed:
            value = fn()
            return [value] if gather else value
        failure, value, error = None, None, None
        try:
            value = fn()
        except UserError as exc:
            failure = str(exc)
        except Exception as exc:  # noqa: BLE001 — reported to the others, then re-raised here
            failure, error = (f"rank {self.rank} failed while {what}: {type(exc).__name__}: {exc} "
                              "(its traceback is in its output)"), exc
        answers = self.all_gather((failure, value if gather and failure is None else None), what)
        if error is not None:
            raise error
        failures = [f for f, _ in answers if f is not None]
        if failures:
            raise UserError(failures[0])
        return [v for _, v in answers] if gather else value

    def in_order(self, fn, what):
        """``fn()`` gives this rank's per-item list of its :meth:`share`: the full list in the items' order, on
        every rank (:meth:`run_all`'s failure rule)."""
        return unshard(self.run_all(fn, what, gather=True))

    def close(self):
        if self.distributed and self.group is None:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def start(minutes=DEFAULT_TIMEOUT):
    """:class:`Ranks` from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).

    One process (no torchrun) gets a local :class:`Ranks` and no process
    group. Under torchrun a gloo process group is started with a timeout of
    ``minutes`` (``--dist_timeout``, the unit of core/train.py's); a rank that cannot reach the others is a one-line error.
    """
    rank, local_rank, world = dist_env()
    if not minutes > 0:
        raise UserError(f"--dist_timeout must be a positive number of minutes, got {minutes:g}")
    timeout = minutes * 60
    if world <= 1:
        return Ranks(timeout=timeout)
    import torch.distributed as dist

    try:
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout))
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"rank {rank}: could not reach the other ranks within {timeout:g} s "
                        f"(MASTER_ADDR={os.environ.get('MASTER_ADDR')}, MASTER_PORT={os.environ.get('MASTER_PORT')}): "
                        f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None
    return Ranks(rank, local_rank, world, timeout)


def bar_options(ranks, desc):
    """tqdm options for a rank's bar: one line per rank (``position``), named by rank when there are several."""
    if not ranks.distributed:
        return {"desc": desc}
    return {"desc": f"{desc} [rank {ranks.rank}]", "position": ranks.rank}


class Clock:
    """Wall-clock time of one rank's share, for :func:`speed_lines`."""

    def __init__(self):
        self.start = time.perf_counter()

    def report(self, ranks, images, device):
        """This rank's line items: ``{rank, host, device, images, wall}``."""
        return {"rank": ranks.rank, "host": socket.gethostname(), "device": str(device), "images": images,
                "wall": time.perf_counter() - self.start}


def speed_lines(reports, unit="image"):
    """One line per rank and the combined line (images/s overall: all images over the slowest rank's time)."""
    if len(reports) <= 1:
        return []
    lines = []
    for r in reports:
        rate = r["images"] / r["wall"] if r["wall"] > 0 else math.inf
        lines.append(f"rank {r['rank']} ({r['host']}, {r['device']}): {plural(r['images'], unit)} in "
                     f"{r['wall']:.1f} s, {rate:.2f} {unit}s/s")
    total, wall = sum(r["images"] for r in reports), max(r["wall"] for r in reports)
    rate = total / wall if wall > 0 else math.inf
    lines.append(f"{plural(total, unit)} on {len(reports)} ranks in {wall:.1f} s: {rate:.2f} {unit}s/s overall "
                 "(wall clock, reading and writing files included)")
    return lines

