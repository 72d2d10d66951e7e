"""Train Deep Image Matting (Xu et al., CVPR 2017; SPEC §4, §6–§8).

The reference's settings (``train.sh`` wraps exactly this)::

    python core/train.py --stage 1 --crop_h 320,480,640 --crop_w 320,480,640 --size_h 320 --size_w 320 \\
        --imgDir $D/Training_set/comp/image --fgDir $D/Training_set/comp/fg \\
        --bgDir $D/Training_set/comp/bg --alphaDir $D/Training_set/comp/alpha \\
        --testImgDir $D/Test_set/comp/image --testTrimapDir $D/Test_set/comp/trimap \\
        --testAlphaDir $D/Test_set/comp/alpha --saveDir model/stage1 \\
        --pretrain model/vgg_state_dict.pth --cuda --logFile model/stage1/train.log

Several GPUs (one process each; ``--log`` cannot pass through torchrun, use ``--logFile``)::

    torchrun --standalone --nproc_per_node=4 core/train.py … --cuda --logFile model/stage1/train.log

Stages: 0 encoder-decoder with the simple alpha loss; 1 encoder-decoder with
wl·alpha + (1 − wl)·composition loss; 2 only the refinement head (encoder-decoder
frozen, start it with ``--pretrain`` from a stage-1 model); 3 everything with
both losses. Epochs count from 1; ``ckpt_e{N}.pth`` stores ``epoch = N + 1``, the
next epoch to run, like the reference. ``ckpt_last.pth`` is rewritten after
every epoch and when the run is stopped (Ctrl-C or SIGTERM: the current
iteration finishes, the state is saved, the process exits 130/143); ``--resume``
continues from any of them at the stored epoch and iteration.

One run per ``--saveDir``: each run has an id (start time and config),
recorded in ``config.json``, in every checkpoint's config and in the log's
"(new best of run …)" line, so ``ckpt_best.pth`` is the best of that run. A new
run into a folder that holds another run's checkpoints or config is refused
before anything is written (``--resume`` continues that run; ``--overwrite``
removes its checkpoints and config.json first).
"""

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import datetime
import hashlib
import json
import math
import re
import signal
import time

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from core import data
from core.checkpoint import (check_pretrain, check_resume, is_reference_format, load_partial, read_checkpoint,
                             save_checkpoint, unwrap)
from core.imageio import write_bytes_atomic
from core.inference import MODES
from core.losses import stage_loss
from core.metrics import format_table
from core.folder import check_pairs, find_pairs, predict_folder
from core.network import build_model, freeze_encoder_decoder
from core.ops.capabilities import PRECISIONS
from core.options import InferenceOptions
from core.stages import STAGES, batch_keys, stage_info
from core.utils import UserError, dist_env, run_cli, seed_everything, select_device, setup_logging

# Config keys whose change on --resume is worth a log line.
WATCHED_KEYS = ("stage", "lr", "step", "batchSize", "nEpochs", "wl_weight", "crop_h", "crop_w", "size_h",
                "size_w", "seed", "skip", "conv6_kernel", "amp", "online", "world_size")


# ---------------------------------------------------------------- command line

def build_parser():
    p = argparse.ArgumentParser(
        description="Train Deep Image Matting (the reference's flags; see train.sh for its settings).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = p.add_argument_group("training data (offline composites from tools/composite.py)")
    d.add_argument("--imgDir", help="composited images (Training_set/comp/image)")
    d.add_argument("--fgDir", help="foregrounds saved beside each composite (Training_set/comp/fg)")
    d.add_argument("--bgDir", help="fitted backgrounds saved beside each composite (Training_set/comp/bg)")
    d.add_argument("--alphaDir", help="alphas saved beside each composite (Training_set/comp/alpha)")
    d.add_argument("--crop_h", default="320,480,640", help="crop heights, one drawn per sample (pairs with --crop_w)")
    d.add_argument("--crop_w", default="320,480,640", help="crop widths")
    d.add_argument("--size_h", type=int, default=320, help="training sample height (multiple of 32)")
    d.add_argument("--size_w", type=int, default=320, help="training sample width (multiple of 32)")
    o = p.add_argument_group("online compositing instead (no Training_set/comp needed)")
    o.add_argument("--online", action="store_true",
                   help="compose each sample on the fly from the Adobe foregrounds and COCO backgrounds "
                        "(same samples as the offline composites)")
    o.add_argument("--adobeDir", help="the extracted Combined_Dataset folder (its Training_set name lists, "
                                      "Adobe-licensed images/ and Other/)")
    o.add_argument("--cocoDir", help="MS-COCO train2017 images (the training backgrounds)")
    o.add_argument("--bgPerFg", type=int, default=100, help="backgrounds per foreground in the name lists")
    c = p.add_argument_group("decoded-image cache (either data source; build it ahead with tools/build_cache.py)")
    c.add_argument("--cache_dir", metavar="DIR",
                   help="decode each training image once into DIR and read it back memory-mapped "
                        "(same samples; see docs/training.md for its size)")
    c.add_argument("--cache_backgrounds", action="store_true",
                   help="with --online --cache_dir: cache the COCO backgrounds too (about 0.9 MB each)")

    t = p.add_argument_group("optimisation")
    t.add_argument("--stage", type=int, default=1, choices=tuple(STAGES),
                   help="0: simple alpha loss; 1: alpha + composition loss; 2: refinement head only; "
                        "3: everything, both losses")
    t.add_argument("--batchSize", type=int, default=1, help="samples per iteration and process")
    t.add_argument("--nEpochs", type=int, default=12, help="last epoch (epochs count from 1)")
    t.add_argument("--lr", type=float, default=1e-5, help="Adam learning rate")
    t.add_argument("--step", type=int, default=-1, help="lr/10 from this epoch on (≤ 0: no decay)")
    t.add_argument("--wl_weight", type=float, default=0.5, help="alpha loss weight wl of the stage-1 loss")
    t.add_argument("--threads", type=data.worker_count, default="auto",
                   help="data-loader worker processes per process (0: load in the main process; auto: the CPUs "
                        "this process may use, shared among the processes of this machine, minus one)")
    t.add_argument("--seed", type=int, default=123, help="random seed (each process uses seed + rank)")
    t.add_argument("--cuda", action="store_true", help="train on the GPU (default: CPU)")
    t.add_argument("--amp", action="store_true",
                   help="mixed precision: autocast in --amp_dtype (losses stay float32); on the CPU always bf16")
    t.add_argument("--amp_dtype", choices=("fp16", "bf16"), default=None,
                   help="autocast type of --amp: fp16 (CUDA default; with a GradScaler) or bf16 (no scaler; "
                        "the CPU's only choice)")
    t.add_argument("--dist_timeout", type=float, default=180,
                   help="minutes a process waits for the others under torchrun (rank 0 tests alone)")

    m = p.add_argument_group("model")
    m.add_argument("--arch", default="vgg", choices=("vgg", "vgg16"),
                   help="backbone (VGG-16 only; kept for old scripts)")
    m.add_argument("--skip", dest="skip", action="store_true", default=True,
                   help="add encoder features to the decoder (the best released model)")
    m.add_argument("--no_skip", dest="skip", action="store_false", help="no skip additions (older releases)")
    m.add_argument("--conv6_kernel", type=int, default=3, choices=(1, 3),
                   help="conv6_1 kernel (1 for models released before 2019-09-09)")
    m.add_argument("--pretrain", help="initial weights (model/vgg_state_dict.pth, or the previous stage's "
                                      "checkpoint); decoder tensors it lacks keep their initialisation; missing "
                                      "encoder tensors, tensors of another shape or another skip setting stop the "
                                      "run")
    m.add_argument("--pretrain_partial", action="store_true",
                   help="with --pretrain: load only the tensors that fit and warn about the rest instead of stopping")
    m.add_argument("--resume", help="checkpoint of this training to continue (weights, optimizer, epoch, best SAD)")
    m.add_argument("--overwrite", action="store_true",
                   help="start a new run in a --saveDir that holds another run's checkpoints: they and its "
                        "config.json are removed first (without it such a run is refused)")

    s = p.add_argument_group("checkpoints and logs")
    s.add_argument("--saveDir", help="checkpoint folder (default: model/stage<STAGE>)")
    s.add_argument("--ckptSaveFreq", type=int, default=1,
                   help="save ckpt_e<N>.pth every this many epochs (≤ 0: never)")
    s.add_argument("--printFreq", type=int, default=10, help="log a line every this many iterations")
    s.add_argument("--log", "--logFile", "--train_log", dest="log", metavar="FILE",
                   help="log file, appended to (default: <saveDir>/train.log); under torchrun write "
                        "--logFile, since torchrun takes --log… options for itself")

    v = p.add_argument_group("testing after epochs (the whole test set, as core/test.py)")
    v.add_argument("--testFreq", type=int, default=1, help="test every this many epochs (≤ 0: never)")
    v.add_argument("--testImgDir", help="test images (Test_set/comp/image)")
    v.add_argument("--testTrimapDir", help="test trimaps, same file names")
    v.add_argument("--testAlphaDir", help="ground-truth alphas, same file names")
    v.add_argument("--testResDir", help="write the predicted mattes here (default: not written)")
    v.add_argument("--crop_or_resize", default="whole", choices=MODES, help="test inference mode")
    v.add_argument("--test_precision", choices=PRECISIONS, default="fp32",
                   help="precision of the testing, as core/test.py's --precision (default fp32: the exact path)")
    v.add_argument("--max_size", "--test_max_size", dest="max_size", type=int, default=1600,
                   help="largest side fed to the network in whole mode")
    return p


def parse_args(argv=None):
    """Parse and validate the flags; returns the argparse namespace (UserError on bad values)."""
    args = build_parser().parse_args(argv)
    checks = [(args.batchSize >= 1, "--batchSize must be at least 1"),
              (args.nEpochs >= 1, "--nEpochs must be at least 1"),
              (args.lr > 0 and math.isfinite(args.lr), "--lr must be a positive number"),
              (0 <= args.wl_weight <= 1, "--wl_weight must lie in [0, 1]"),
              (args.printFreq >= 1, "--printFreq must be at least 1"),
              (args.seed >= 0, "--seed must be a non-negative integer"),
              (args.dist_timeout > 0, "--dist_timeout must be positive"),
              (not args.cache_backgrounds or (args.online and args.cache_dir),
               "--cache_backgrounds needs --online and --cache_dir DIR (offline composites cache all four "
               "images with --cache_dir alone)"),
              (args.size_h > 0 and args.size_w > 0 and args.size_h % 32 == 0 and args.size_w % 32 == 0,
               "--size_h/--size_w must be positive multiples of 32 (the network's input), "
               f"got {args.size_h}×{args.size_w}")]
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)
    test_options(args)  # the testing flags: core/test.py's checks and messages
    data.parse_crop_sizes(args.crop_h, args.crop_w)  # raises UserError on a bad list
    if args.online:
        missing = [f for f, v in (("--adobeDir", args.adobeDir), ("--cocoDir", args.cocoDir)) if not v]
        if missing:
            raise UserError(f"--online needs {' and '.join(missing)}")
        if args.bgPerFg < 1:
            raise UserError("--bgPerFg must be at least 1")
    else:
        missing = [f for f, v in (("--imgDir", args.imgDir), ("--fgDir", args.fgDir), ("--bgDir", args.bgDir),
                                  ("--alphaDir", args.alphaDir)) if not v]
        if missing:
            raise UserError(f"training data: {', '.join(missing)} missing (the Training_set/comp folders "
                            "written by tools/composite.py), or use --online with --adobeDir and --cocoDir")
    given = {f: v for f, v in (("--testImgDir", args.testImgDir), ("--testTrimapDir", args.testTrimapDir),
                               ("--testAlphaDir", args.testAlphaDir))}
    if any(given.values()) and not all(given.values()):
        absent = ", ".join(f for f, v in given.items() if not v)
        raise UserError(f"testing needs --testImgDir, --testTrimapDir and --testAlphaDir together; {absent} missing")
    for flag, path in (("--resume", args.resume), ("--pretrain", args.pretrain)):
        if path and not os.path.isfile(path):
            raise UserError(f"{flag} {path}: no such checkpoint file")
    if args.saveDir is None:
        args.saveDir = os.path.join("model", f"stage{args.stage}")
    if args.log is None:
        args.log = os.path.join(args.saveDir, "train.log")
    return args


def test_options(args):
    """The testing flags as :class:`core.options.InferenceOptions` (validated: UserError on bad values)."""
    return InferenceOptions(mode=args.crop_or_resize, max_size=args.max_size, size=(args.size_h, args.size_w),
                            stage=args.stage, amp=bool(args.amp and args.cuda), precision=args.test_precision,
                            cuda=args.cuda)


# ---------------------------------------------------------------- small pieces other modules may reuse

def amp_dtype(name, device):
    """The autocast dtype of ``--amp_dtype`` on ``device``: float16 on CUDA unless bf16 was asked for,
    bfloat16 on the CPU (UserError for fp16 there, which CPUs compute slowly and autocast does not scale)."""
    if device.type != "cuda":
        if name == "fp16":
            raise UserError("--amp_dtype fp16 needs --cuda: on the CPU --amp trains in bf16 (drop --amp_dtype)")
        return torch.bfloat16
    return torch.bfloat16 if name == "bf16" else torch.float16


def lr_at(epoch, lr, step):
    """Learning rate of (1-based) ``epoch``: ``lr``, or ``lr/10`` from epoch ``step`` on when step > 0."""
    return lr * 0.1 if step > 0 and epoch >= step else lr


def init_weights(model):
    """Xavier-normal init of every conv weight; biases keep PyTorch's default (SPEC §4)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.xavier_normal_(module.weight)


def layer_names(param_names):
    """``conv1_1.weight``, ``conv1_1.bias`` … → ``conv1_1`` … (order kept, repeats dropped)."""
    return list(dict.fromkeys(name.rsplit(".", 1)[0] for name in param_names))


def apply_pretrain(model, path, log, partial=False):
    """``--pretrain``: load the file, log what loaded and what stayed random.

    Returns ``(loaded, random, skipped)`` from :func:`core.checkpoint.load_partial`
    (which raises UserError when nothing fits, or, unless ``partial``, when
    shapes or the skip setting do not fit).
    """
    loaded, random, skipped = load_partial(model, path, partial, warn=log.warning)
    log.info(f"pretrain {path}: loaded {len(loaded)} tensors ({', '.join(layer_names(loaded))})")
    log.info(f"pretrain: {len(random)} tensors keep their initialisation"
             + (f" ({', '.join(layer_names(random))})" if random else ""))
    if skipped:
        log.info(f"pretrain: {len(skipped)} entries of the file unused: "
                 + "; ".join(f"{k} ({why})" for k, why in sorted(skipped.items())))
    return loaded, random, skipped


def weights_finite(model):
    """True when every parameter of ``model`` is finite (no NaN/inf to save)."""
    return all(bool(torch.isfinite(p).all()) for p in unwrap(model).parameters())


def format_eta(seconds):
    """``Exa(h:m:s):HH:MM:SS``, the reference's time-left field."""
    seconds = max(0, int(seconds))
    return f"Exa(h:m:s):{seconds // 3600:0>2}:{seconds % 3600 // 60:0>2}:{seconds % 60:0>2}"


# ---------------------------------------------------------------- stopping cleanly

class StopRequest:
    """Turns the first SIGINT/SIGTERM into a flag checked between iterations; a second SIGINT aborts."""

    def __init__(self):
        self.signum = 0
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this iteration and saving ckpt_last.pth "
              "(Ctrl-C again to abort without saving)", file=sys.stderr, flush=True)

    def __call__(self):
        return bool(self.signum)


def _worker_init(worker_id):
    # Ctrl-C reaches the whole process group: the main process stops cleanly, the workers must not die first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    data.worker_init_fn(worker_id)


class ResumableSampler(DistributedSampler):
    """DistributedSampler (also with one process) whose epoch order depends only on (seed, epoch);
    ``skip`` leaves out the first samples of this rank's share, to continue an epoch mid-way."""

    skip = 0

    def __iter__(self):
        return iter(list(super().__iter__())[self.skip:])

    def __len__(self):
        return super().__len__() - self.skip


# ---------------------------------------------------------------- the run

class Trainer:
    """One training run: rank, device, data, model, optimizer, checkpoints."""

    def __init__(self, args, rank, world, device, log):
        self.args, self.rank, self.world, self.device, self.log = args, rank, world, device, log
        self.amp = bool(args.amp)
        self.amp_dtype = amp_dtype(args.amp_dtype, device)
        self.test_options = test_options(args)
        self.stop = StopRequest()
        self.best_sad = math.inf
        self.start_epoch, self.start_iter, self.pending_test = 1, 0, False
        self.last_ckpt = None  # the newest checkpoint written (or resumed from) that holds finite weights
        self.testing = bool(args.testImgDir) and args.testFreq > 0
        self.test_pairs = []
        self.config = dict(vars(args), world_size=world,
                           crop_sizes=[list(c) for c in data.parse_crop_sizes(args.crop_h, args.crop_w)])
        self.config["run_id"] = new_run_id(self.config)  # a resumed run keeps its own (see resume)

    # -- setup

    def build(self):
        a = self.args
        seed_everything(a.seed + self.rank)
        crops = data.parse_crop_sizes(a.crop_h, a.crop_w)
        if a.online:
            self.dataset = data.OnlineCompositeDataset(a.adobeDir, a.cocoDir, a.bgPerFg, crops,
                                                       (a.size_h, a.size_w), a.seed, cache_dir=a.cache_dir,
                                                       cache_backgrounds=a.cache_backgrounds)
        else:
            self.dataset = data.CompositedDataset(a.imgDir, a.fgDir, a.bgDir, a.alphaDir, crops,
                                                  (a.size_h, a.size_w), a.seed, cache_dir=a.cache_dir)
        if a.cache_dir and self.rank == 0:
            self.log.info(self.dataset.cache_report())
        self.sampler = ResumableSampler(self.dataset, num_replicas=self.world, rank=self.rank, shuffle=True,
                                        seed=a.seed)
        workers = data.resolve_workers(a.threads)
        self.loader = DataLoader(self.dataset, batch_size=a.batchSize, sampler=self.sampler,
                                 **data.loader_options(workers, self.device), worker_init_fn=_worker_init)
        self.log.info(f"training set: {len(self.dataset)} samples ({'online' if a.online else 'offline'} "
                      f"composites), {len(self.loader)} iterations per epoch and process, {self.world} process(es), "
                      f"{workers} loader worker(s) each")

        model = build_model(a.stage, skip=a.skip, conv6_kernel=a.conv6_kernel)
        init_weights(model)
        if a.pretrain and not a.resume:
            apply_pretrain(model, a.pretrain, self.log, a.pretrain_partial)
        elif a.pretrain:
            self.log.info(f"--pretrain {a.pretrain} ignored: --resume {a.resume} holds the weights")
        elif stage_info(a.stage).frozen_encoder_decoder and not a.resume:
            self.log.warning("stage 2 without --pretrain trains a refinement head on a random encoder-decoder; "
                             "pass --pretrain <stage-1 checkpoint>")
        if stage_info(a.stage).frozen_encoder_decoder:
            params = freeze_encoder_decoder(model)
            self.log.info(f"stage 2: encoder-decoder frozen, training {len(params)} tensors of the refinement head")
        else:
            params = [p for p in model.parameters() if p.requires_grad]
        model.to(self.device)
        self.optimizer = torch.optim.Adam(params, lr=a.lr)
        self.scaler = None
        if self.amp and self.amp_dtype == torch.float16:  # bfloat16 has float32's range: no scaling
            new_api = hasattr(torch.amp, "GradScaler")  # torch ≥ 2.3
            self.scaler = torch.amp.GradScaler("cuda") if new_api else torch.cuda.amp.GradScaler()
        if a.resume:
            self.resume(model, a.resume)
        n = sum(p.numel() for p in model.parameters())
        self.log.info(f"model: stage {a.stage}, {model.arch}, {n:,} parameters, "
                      f"{sum(p.numel() for p in params):,} trained, device {self.device}"
                      + (f", mixed precision ({self.amp_dtype})" if self.amp else ""))
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.model = model

    def resume(self, model, path):
        ckpt = read_checkpoint(path)  # UserError for a missing or corrupt file
        run, here = (ckpt.get("config") or {}).get("run_id"), saved_run_id(self.args.saveDir)
        if here and run != here and not self.args.overwrite:
            raise UserError(f"--resume {path} is a checkpoint of {f'run {run}' if run else 'another run'}, but "
                            f"{self.args.saveDir} holds the files of run {here}: resume into another --saveDir, "
                            "or pass --overwrite to replace them")
        if run:
            self.config["run_id"] = run
        check_resume(model, ckpt, path, self.args.stage, self.args.skip)
        model.load_state_dict(ckpt["state_dict"], strict=True)
        self.start_epoch = ckpt["epoch"]
        self.best_sad = math.inf if ckpt.get("best_sad") is None else ckpt["best_sad"]
        if is_reference_format(ckpt) and ckpt.get("best_sad") is not None:
            # The reference stores its own whole-image float SAD, not /1000 and not from the saved 8-bit
            # mattes: no factor makes it comparable with this project's official-scale mean.
            self.log.info(f"{path}: best_sad {ckpt['best_sad']:g} is in the reference's format (whole-image "
                          "float SAD, not the official /1000 scale): disregarded, the next test sets the best")
            self.best_sad = math.inf
        if ckpt.get("optimizer"):
            try:
                self.optimizer.load_state_dict(ckpt["optimizer"])
            except (ValueError, KeyError) as exc:
                raise UserError(f"{path}: its optimizer state does not fit this model ({exc})") from None
        else:
            self.log.warning(f"{path} holds no optimizer state (a reference or ckpt_best checkpoint): "
                             "Adam starts afresh")
        old = ckpt.get("config") or {}
        state = ckpt.get("train_state") or {}
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if state.get("iteration"):
            if (state.get("world_size"), state.get("batchSize")) == (self.world, self.args.batchSize):
                self.start_iter = int(state["iteration"])
            else:
                self.log.warning(f"{path} stopped inside epoch {self.start_epoch} with another process count or "
                                 "batch size: that epoch restarts from its beginning")
        self.pending_test = bool(state.get("pending_test"))
        changed = [f"{k} {old[k]!r} → {self.config[k]!r}" for k in WATCHED_KEYS
                   if k in old and old[k] != self.config.get(k)]
        best = f"best SAD {self.best_sad:.3f}" if math.isfinite(self.best_sad) else "not tested yet"
        self.log.info(f"resumed {path}: continuing at epoch {self.start_epoch}, iteration {self.start_iter + 1}, {best}"
                      + (f"; changed: {', '.join(changed)}" if changed else ""))
        self.last_ckpt = path

    # -- checkpoints

    def save(self, name, epoch, iteration=0, optimizer=True, pending_test=False):
        """Write ``saveDir/name`` (rank 0 only); refuses non-finite weights. Returns the path or None."""
        path = os.path.join(self.args.saveDir, name)
        if not weights_finite(self.model):
            self.log.error(f"not writing {path}: the weights hold NaN or inf")
            return None
        state = {"iteration": iteration, "pending_test": pending_test, "world_size": self.world,
                 "batchSize": self.args.batchSize, "scaler": self.scaler.state_dict() if self.scaler else None}
        save_checkpoint(path, self.model, epoch, self.best_sad, optimizer=self.optimizer if optimizer else None,
                        config=self.config, train_state=state)
        done = f"epoch {epoch} up to iteration {iteration}" if iteration else f"after epoch {epoch - 1}"
        self.log.info(f"checkpoint saved to {path} ({done})")
        return path

    def remove_earlier_run(self):
        """``--overwrite`` of a new run: the earlier run's checkpoints and config.json go (train.log is kept)."""
        found = run_files(self.args.saveDir)
        if not self.args.overwrite or self.args.resume or not found:  # never the file being resumed
            return
        name = _run_name(self.args.saveDir)
        for n in found:
            os.remove(os.path.join(self.args.saveDir, n))
        self.log.info(f"--overwrite: removed {', '.join(found)} of {name} from {self.args.saveDir}")

    def write_config(self):
        os.makedirs(self.args.saveDir, exist_ok=True)
        text = json.dumps(self.config, indent=2, sort_keys=True) + "\n"
        write_bytes_atomic(os.path.join(self.args.saveDir, "config.json"), text.encode("utf-8"))

    # -- testing

    def run_test(self, epoch):
        """Rank 0: predict and score the test set as core/test.py does; keep ckpt_best.pth.

        Returns False when a stop request ended the test early."""
        a = self.args
        self.log.info(f"testing after epoch {epoch} ({a.crop_or_resize}, max size {a.max_size})")
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = False  # test images come in many sizes
        result = predict_folder(self.model, self.test_pairs, save_dir=a.testResDir or None, score=True,
                                should_stop=self.stop, **self.test_options.predict_kwargs())
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        if result.stopped:
            self.log.info(f"test after epoch {epoch} interrupted")
            return False
        means = result.means
        self.log.info("per-image metrics:\n" + format_table(result.rows, means))
        improved = means["sad"] < self.best_sad
        speed = sum(result.seconds) / max(1, len(result.seconds))
        self.log.info(f"Test epoch {epoch}: SAD {means['sad']:.3f} MSE {means['mse']:.5f} Grad {means['grad']:.3f} "
                      f"Conn {means['conn']:.3f} ({means['n']} images, {speed:.3f} s/image); best SAD "
                      f"{min(self.best_sad, means['sad']):.3f}"
                      + (f" (new best of run {self.config['run_id']})" if improved else ""))
        if improved:
            self.best_sad = means["sad"]
            self.save("ckpt_best.pth", epoch + 1, optimizer=False)
        return True

    # -- training

    def sync(self, values):
        """Sum a list of 0-d tensors/floats over the processes; returns Python floats."""
        t = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=self.device).detach().float().reshape(())
                         for v in values])
        if self.world > 1:
            dist.all_reduce(t)
        return t.tolist()

    def diverged(self, epoch, iteration, value):
        where = f"{self.last_ckpt} (resume with --resume {self.last_ckpt})" if self.last_ckpt else \
            "none: no checkpoint was written yet"
        return UserError(f"loss is {value} at epoch {epoch}, iteration {iteration}: training diverged (lower --lr"
                         f"{', or drop --amp' if self.amp else ''}); stopped without saving; "
                         f"last good checkpoint: {where}")

    def train_epoch(self, epoch):
        """One epoch; returns False when a stop was requested (state saved), True when it completed."""
        a = self.args
        lr = lr_at(epoch, a.lr, a.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.dataset.set_epoch(epoch)
        self.sampler.set_epoch(epoch)
        start = self.start_iter if epoch == self.start_epoch else 0
        self.sampler.skip = start * a.batchSize
        num_iter = start + len(self.loader)
        batches = iter(self.loader)
        self.model.train()
        keys = batch_keys(a.stage)
        t0, done = time.time(), 0
        bar = tqdm(total=num_iter, initial=start, desc=f"epoch {epoch}/{a.nEpochs}", unit="it",
                   disable=True if self.rank != 0 else None, dynamic_ncols=True)  # None: no bar when not a terminal
        try:
            for iteration, batch in enumerate(batches, start + 1):
                batch = data.training_batch(batch, self.device)
                x, targets = batch["input"], {k: batch[k] for k in keys}
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                    alpha, refined = self.model(x)
                terms = stage_loss(a.stage, alpha, refined, targets, a.wl_weight)
                names = list(terms)
                *sums, stop = self.sync([*terms.values(), float(self.stop.signum)])
                means = {k: v / self.world for k, v in zip(names, sums)}
                if not all(math.isfinite(v) for v in means.values()):
                    raise self.diverged(epoch, iteration, means["loss"])
                if stop:
                    if self.rank == 0:
                        self.last_ckpt = self.save("ckpt_last.pth", epoch, iteration=iteration - 1) or self.last_ckpt
                    return False
                self.optimizer.zero_grad(set_to_none=True)
                if self.scaler is not None:
                    self.scaler.scale(terms["loss"]).backward()
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    terms["loss"].backward()
                    self.optimizer.step()
                done += 1
                bar.set_postfix(loss=f"{means['loss']:.5f}", refresh=False)
                bar.update()
                if iteration % a.printFreq == 0:
                    speed = (time.time() - t0) / done
                    left = speed * (num_iter * (a.nEpochs - epoch + 1) - iteration)
                    detail = "".join(f" {k.capitalize()}:{v:.5f}" for k, v in means.items() if k != "loss")
                    self.log.info(f"Stage{a.stage}-Epoch[{epoch}/{a.nEpochs}]({iteration}/{num_iter}) Lr:{lr:.8f} "
                                  f"Loss:{means['loss']:.5f}{detail} Speed:{speed:.5f}s/iter {format_eta(left)}")
        finally:
            bar.close()
        return True

    def end_epoch(self, epoch):
        """Rank 0: test, ckpt_best, ckpt_e<N>, ckpt_last. Returns False when a stop was requested."""
        a = self.args
        if not weights_finite(self.model):  # every rank checks, so all stop together
            raise UserError(f"the weights hold NaN or inf after epoch {epoch}: training diverged (lower --lr); "
                            f"not saved; last good checkpoint: {self.last_ckpt or 'none'}")
        if self.rank != 0:
            return True
        tested = True
        if self.testing and epoch % a.testFreq == 0:
            tested = self.run_test(epoch)
        if a.ckptSaveFreq > 0 and epoch % a.ckptSaveFreq == 0:
            self.save(f"ckpt_e{epoch}.pth", epoch + 1)
        self.last_ckpt = self.save("ckpt_last.pth", epoch + 1, pending_test=not tested)
        return tested

    def run(self):
        a = self.args
        if self.testing and self.rank == 0:  # fail now, not after the first epoch
            self.test_pairs = find_pairs(a.testImgDir, a.testTrimapDir, a.testAlphaDir)
            check_pairs(self.test_pairs, a.crop_or_resize, a.max_size)
            self.log.info(f"test set: {len(self.test_pairs)} images")
        self.build()  # a resumed run's id is known from here on
        if self.rank == 0:
            self.remove_earlier_run()
            self.write_config()
            self.log.info(f"run {self.config['run_id']} ({'resumed' if a.resume else 'new'}) in {a.saveDir}; config: "
                          + json.dumps(self.config, sort_keys=True))
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed training size: let cuDNN pick its fastest kernels
        with self.stop:
            if self.pending_test and self.testing and self.rank == 0:
                self.run_test(self.start_epoch - 1)
            if self.start_epoch > a.nEpochs:
                self.log.info(f"nothing to do: the checkpoint's next epoch {self.start_epoch} is beyond "
                              f"--nEpochs {a.nEpochs}")
            for epoch in range(self.start_epoch, a.nEpochs + 1):
                completed = self.train_epoch(epoch)
                if completed:
                    completed = self.end_epoch(epoch)
                if self.sync([float(self.stop.signum or not completed)])[0]:
                    signum = self.stop.signum or signal.SIGTERM
                    self.log.info(f"stopped by {signal.Signals(signum).name}; continue with --resume "
                                  f"{os.path.join(a.saveDir, 'ckpt_last.pth')}")
                    return 128 + int(signum)
        best = f"best test SAD {self.best_sad:.3f}" if math.isfinite(self.best_sad) else "not tested"
        self.log.info(f"done ({best}); checkpoints of run {self.config['run_id']} in {a.saveDir}")
        return 0

# ---------------------------------------------------------------- one run per --saveDir

RUN_FILE = re.compile(r"ckpt_(best|last|e\d+)\.pth|config\.json")


def run_files(save_dir):
    """The files of a run in ``save_dir`` (checkpoints and config.json), sorted; [] when there are none."""
    try:
        return sorted(n for n in os.listdir(save_dir) if RUN_FILE.fullmatch(n))
    except (FileNotFoundError, NotADirectoryError):
        return []


def saved_run_id(save_dir):
    """The ``run_id`` recorded in ``save_dir/config.json``, or None (no file, an older run, unreadable)."""
    try:
        with open(os.path.join(save_dir, "config.json"), encoding="utf-8") as f:
            return json.load(f).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


def new_run_id(config):
    """``<start time>-<6 hex digits>``: names a run in config.json, every checkpoint and the log.

    The digits hash the config with the exact start time and the process id, so two runs started in the
    same second still get two ids."""
    text = json.dumps(config, sort_keys=True, default=str) + f"{time.time_ns()}:{os.getpid()}"
    digest = hashlib.sha256(text.encode()).hexdigest()[:6]
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{digest}"


def _run_name(save_dir):
    run = saved_run_id(save_dir)
    return f"run {run}" if run else "another run"


def check_save_dir(args):
    """Refuse, before anything is written, a new run into a --saveDir that holds another run's files.

    A second run there would replace that run's ``ckpt_best.pth`` (the best of *its* tests) and
    ``config.json``. Continuing it (``--resume``) and ``--overwrite`` pass; whether a resumed
    checkpoint is that run's is checked once it is read (:meth:`Trainer.resume`).
    """
    if args.overwrite or args.resume:
        return
    found = run_files(args.saveDir)
    if not found:
        return
    ckpts = [n for n in found if n != "config.json"]
    last = "ckpt_last.pth" if "ckpt_last.pth" in ckpts else (ckpts[-1] if ckpts else None)
    carry_on = f"continue it with --resume {os.path.join(args.saveDir, last)}, " if last else ""
    raise UserError(f"{args.saveDir} holds the files of {_run_name(args.saveDir)} ({', '.join(found)}): "
                    f"{carry_on}choose another --saveDir (train.sh: SAVE_DIR=DIR), or pass --overwrite to replace them")


def check_pretrain_file(args):
    """Refuse a ``--pretrain`` file that does not fit before anything is written or built.

    The check runs on a meta-device network (shapes only, no memory, no
    random draws), so the run's seeded initialisation is unchanged; the file is
    read again when the weights are loaded.
    """
    if args.pretrain and not args.resume:
        with torch.device("meta"):
            net = build_model(args.stage, skip=args.skip, conv6_kernel=args.conv6_kernel)
        check_pretrain(net, args.pretrain, args.pretrain_partial)


def main(argv=None):
    args = parse_args(argv)
    check_save_dir(args)
    check_pretrain_file(args)
    rank, local_rank, world = dist_env()
    device = select_device(args.cuda, local_rank)
    log = setup_logging(args.log, rank)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=args.dist_timeout))
    try:
        with logging_redirect_tqdm(loggers=[log]):
            return Trainer(args, rank, world, device, log).run()
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    run_cli(main)
