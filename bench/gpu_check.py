"""One command that checks every GPU code path and prints one table.

    python bench/gpu_check.py                          # CUDA: about 2–5 minutes on one GPU
    python bench/gpu_check.py --device cpu --quick     # the same steps, tiny, on the CPU (DDP over gloo)

Five parts, each row of the table saying ok or FAILED (exit status 1 when any failed):

* **inference**, ``whole`` mode on a synthetic 1600×1280 image (the network
  input, no resizing) with the benchmark's fixed random weights: ``fp32``
  (the lean path; channels-last on CUDA), ``fp16`` and ``bf16``
  (``--precision``, core.ops.reduced), ``fp32 --amp`` (float16 autocast over the
  lean path) and the reference's operations (``model(x)``, ``core.ops.reference``,
  every intermediate kept) — seconds per image (median of 3 after a warm-up),
  peak memory (``torch.cuda.max_memory_allocated``: weights included) and the
  difference of the written 8-bit matte from the CPU float32 matte of the same
  input, mean/max grey levels in the unknown region (ok: mean ≤ 1);
* **training**: stage 1 at 320×320 on synthetic composites
  (``tools/make_synthetic.py`` + the online compositing of core.data, 8
  samples preloaded, so the loader is not measured), 50 iterations in float32
  and under ``--amp`` (float16 + GradScaler, and bfloat16), with
  ``cudnn.benchmark`` off and on — samples/s after 5 warm-up iterations, peak
  memory, every loss finite and float32;
* **loader**: stage 1 in float32 at batch 8 fed by the real loader (a synthetic
  set on disk at real sizes, 1920×1080 foregrounds and 640×480 backgrounds,
  online compositing with a warm ``--cache_dir``, core/train.py's DataLoader
  settings and worker count, :func:`core.data.training_batch` on the device)
  against the same steps on batches already on the device: samples/s of both,
  and whether the loader keeps up (at least 90 % of the in-memory rate);
* **DDP**: ``torchrun`` on every visible GPU with NCCL (2 CPU processes with
  gloo under ``--device cpu``), 20 iterations of stage 1; the parameters must
  be identical on every rank afterwards;
* **predict torchrun**: ``core/test.py`` on 5 synthetic pairs (640×480;
  --quick: 96×64) under ``torchrun --nproc_per_node 2`` (one GPU each; skipped
  with a note when fewer than 2 GPUs are visible) against one process: the
  matte bytes and ``metrics.json`` must be identical.

``--quick`` shrinks everything (192×128 inference without warm-up, 64×64
training, 1 + 2 and 2 iterations) so that the test suite can run the whole
script on the CPU. On CUDA two more inference rows turn TF32 off (torch lets
cuDNN use it for float32 convolutions by default): TF32 rounds the encoder's
maps, which moves max-pooling choices, so they show what it costs in grey
levels and what it gains in speed.
"""

import os
import sys

if __package__ in (None, ""):  # run as a script (also by torchrun): make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import contextlib
import json
import subprocess
import tempfile
import time

import numpy as np

from bench.common import ROOT, cpu_features, cpu_model, format_table, machine_summary
from bench.inference import VARIANTS, bench_state_dict, synthetic_pair
from core.utils import UserError, run_cli

VARIANT = "skip"  # the layout of the best released model


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device):
    """Peak GPU memory since :func:`reset_peak` in MiB, or '-' on the CPU."""
    import torch

    if device.type != "cuda":
        return "-"
    return f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f}"


def timed(fn, device, repeat, warmup=1):
    """(median seconds, last result) of ``fn()`` over ``repeat`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times, out = [], None
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times)), out


@contextlib.contextmanager
def tf32(device, allowed):
    """CUDA: let cuDNN convolutions and matrix products use TF32 (torch's default for cuDNN) or not."""
    import torch

    if device.type != "cuda":
        yield
        return
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def grey_diff(a, b, trimap):
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))[trimap == 128]
    return float(d.mean()), int(d.max())


# --------------------------------------------------------------------------- #
# Inference

def check_inference(args, device, rows):
    import torch

    from core.inference import force_known, predict_matte, setup_backend, truncate_to_uint8
    from core.network import DIMNet
    from core.preprocess import make_input

    w, h = args.infer_size
    image, trimap = synthetic_pair(w, h)
    arch, stage = VARIANTS[VARIANT]
    state = bench_state_dict(VARIANT)
    cpu_model_ = DIMNet(**arch)
    cpu_model_.load_state_dict(state)
    cpu_model_.eval()
    kw = {"mode": "whole", "max_size": max(w, h), "stage": stage}
    start = time.perf_counter()
    cpu_matte = predict_matte(cpu_model_, image, trimap, **kw)
    print(f"CPU float32 matte for comparison: {time.perf_counter() - start:.1f} s", flush=True)
    del cpu_model_
    setup_backend(device, benchmark=False)  # whole mode: every photo size is new, so no autotuning
    model = DIMNet(**arch)
    model.load_state_dict(state)
    model.to(device).eval()
    setting = f"whole {w}×{h}"
    for name, extra in (("fp32", {}), ("fp16", {"precision": "fp16"}), ("bf16", {"precision": "bf16"}),
                        ("fp32 --amp", {"amp": True}), ("fp32 TF32 off", {}), ("bf16 TF32 off", {"precision": "bf16"})):
        if device.type == "cpu" and name not in ("fp32", "bf16"):
            rows.append([f"infer {name}", setting, "-", "-", "-", "CUDA only", "skipped"])
            continue
        reset_peak(device)
        with tf32(device, "TF32 off" not in name):
            seconds, matte = timed(lambda: predict_matte(model, image, trimap, **kw, **extra), device, args.repeat,
                                   warmup=min(1, args.warmup))
        mean, mx = grey_diff(matte, cpu_matte, trimap)
        status = "ok" if mean <= 1 else "FAILED"
        rows.append([f"infer {name}", setting, f"{seconds:.3f} s/img", "", peak_mib(device),
                     f"vs CPU fp32: {mean:.3f} / {mx}", status])
        report(rows)

    x = torch.from_numpy(make_input(image, trimap))[None].to(device)

    def reference():
        with torch.inference_mode():
            alpha = model(x)[0]  # always the reference's operations
        return truncate_to_uint8(force_known(alpha[0, 0].float().cpu().numpy(), trimap))

    reset_peak(device)
    seconds, matte = timed(reference, device, args.repeat, warmup=min(1, args.warmup))
    mean, mx = grey_diff(matte, cpu_matte, trimap)
    rows.append(["infer reference", f"{setting}, reference ops", f"{seconds:.3f} s/img", "", peak_mib(device),
                 f"vs CPU fp32: {mean:.3f} / {mx}", "ok" if mean <= 1 else "FAILED"])
    report(rows)


# --------------------------------------------------------------------------- #
# Training

def training_batches(args, device):
    """A few stage-1 samples of synthetic composites (tools/make_synthetic.py, online compositing), on ``device``."""
    from torch.utils.data import default_collate

    from core.data import OnlineCompositeDataset, training_batch
    from tools.make_synthetic import make_dataset

    s = args.train_size
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_dataset(tmp, num_fg=4, num_test_fg=1, size=max(s, 64), train_bg_per_fg=2)
        ds = OnlineCompositeDataset(paths["root_dir"], paths["train_bg_dir"], bg_per_fg=2, crop_sizes=((s, s),),
                                    size=(s, s), seed=0)
        samples = [ds[i] for i in range(min(len(ds), 8))]
    return [training_batch(default_collate([smp]), device) for smp in samples]


def train_run(device, batches, iterations, amp=None, benchmark=False, seed=0, warmup=5, get=None):
    """Stage-1 steps as core/train.py takes them; returns (iterations/s, losses finite and float32, last loss).

    ``get(it)``: the batch of iteration ``it`` (default: ``batches`` in turn)."""
    import torch

    from core.losses import stage_loss
    from core.network import build_model
    from core.train import amp_dtype, init_weights

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = benchmark
    torch.manual_seed(seed)
    model = build_model(1)
    init_weights(model)
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    dtype = amp_dtype(amp, device) if amp else None
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    ok, losses = True, []
    start = None
    for it in range(warmup + iterations):
        if it == warmup:
            sync(device)
            start = time.perf_counter()
        batch = get(it) if get else batches[it % len(batches)]
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            alpha, refined = model(batch["input"])
            terms = stage_loss(1, alpha, refined, batch)
        ok = ok and terms["loss"].dtype == torch.float32
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(terms["loss"]).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            terms["loss"].backward()
            optimizer.step()
        losses.append(terms["loss"].detach())
    sync(device)
    seconds = time.perf_counter() - start
    values = torch.stack(losses).float().cpu()
    ok = ok and bool(torch.isfinite(values).all())
    return iterations / seconds, ok, float(values[-1])


def check_training(args, device, rows):
    batches = training_batches(args, device)
    s = args.train_size
    if device.type == "cuda":  # one bfloat16 run is enough
        runs = [("fp32", None, False), ("fp32", None, True), ("amp fp16", "fp16", False), ("amp fp16", "fp16", True),
                ("amp bf16", "bf16", True)]
    else:  # on the CPU --amp means bfloat16; no cuDNN
        runs = [("fp32", None, False), ("amp bf16", "bf16", False)]
    for name, amp, benchmark in runs:
        reset_peak(device)
        rate, ok, last = train_run(device, batches, args.iterations, amp=amp, benchmark=benchmark,
                                   warmup=max(1, args.warmup))
        setting = f"stage 1, {s}×{s}, {args.iterations} it" + (
            f", cudnn.benchmark {'on' if benchmark else 'off'}" if device.type == "cuda" else "")
        rows.append([f"train {name}", setting, "", f"{rate:.1f} samples/s", peak_mib(device),
                     f"last loss {last:.5f}, all finite float32: {ok}", "ok" if ok else "FAILED"])
        report(rows)


def check_loader(args, device, rows):
    """Stage 1 fed by the real loader (warm cache, workers) against batches already on the device."""
    import torch

    from bench.data_throughput import make_layout
    from core import data
    from core.train import _worker_init

    s, batch = args.train_size, 2 if args.quick else 8
    fg, bg = ((96, 128), (48, 64)) if args.quick else ((1080, 1920), (480, 640))
    crops = ((s, s), (s + s // 2, s + s // 2)) if args.quick else data.DEFAULT_CROP_SIZES
    with tempfile.TemporaryDirectory(prefix="dim-gpu-check-") as tmp:
        adobe, coco = make_layout(tmp, 2 if args.quick else 8, 4, fg, bg, seed=0)
        ds = data.OnlineCompositeDataset(adobe, coco, bg_per_fg=4, crop_sizes=crops, size=(s, s), seed=0,
                                         cache_dir=os.path.join(tmp, "cache"))
        data.build_cache(ds, 1)
        in_memory = [data.training_batch(torch.utils.data.default_collate([ds[(b * batch + i) % len(ds)]
                                                                            for i in range(batch)]), device)
                     for b in range(4)]
        warmup = max(1, args.warmup)
        mem_rate, mem_ok, _ = train_run(device, in_memory, args.iterations, warmup=warmup)
        workers = 1 if args.quick else data.resolve_workers("auto")
        sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=(warmup + args.iterations) * batch,
                                                 generator=torch.Generator().manual_seed(0))
        loader = torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler, worker_init_fn=_worker_init,
                                             **data.loader_options(workers, device))
        it = iter(loader)
        rate, ok, last = train_run(device, None, args.iterations, warmup=warmup,
                                   get=lambda _: data.training_batch(next(it), device))
        del it, loader
    mem_rate, rate = mem_rate * batch, rate * batch
    keeps_up = rate >= 0.9 * mem_rate
    setting = f"stage 1, {s}×{s}, batch {batch}, {args.iterations} it, {workers} workers, warm cache"
    rows.append(["train loader", setting, "", f"{rate:.1f} samples/s", peak_mib(device),
                 f"in memory {mem_rate:.1f} samples/s; loader keeps up: {'yes' if keeps_up else 'no'}",
                 "ok" if ok and mem_ok else "FAILED"])
    report(rows)


# --------------------------------------------------------------------------- #
# DDP (torchrun)

def ddp_worker(args):
    """One torchrun process: 20 (--quick: 3) stage-1 iterations under DDP; rank 0 prints the comparison."""
    import torch
    import torch.distributed as dist

    from core.losses import stage_loss
    from core.network import build_model
    from core.train import init_weights

    cuda = args.device == "cuda"
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(rank)  # different weights per rank: DDP must broadcast rank 0's
    model = build_model(1)
    init_weights(model)
    model.to(device).train()
    ids = [local_rank] if cuda else None
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    optimizer = torch.optim.Adam(ddp.parameters(), lr=1e-4)
    s = args.train_size
    gen = torch.Generator().manual_seed(100 + rank)  # different data per rank
    finite = True
    start = time.perf_counter()
    for _ in range(args.ddp_iterations):
        alpha = torch.rand(1, 1, s, s, generator=gen)
        batch = {"input": torch.rand(1, 4, s, s, generator=gen), "alpha": alpha, "trimap": torch.full_like(alpha, 128),
                 "image": torch.rand(1, 3, s, s, generator=gen) * 255, "fg": torch.rand(1, 3, s, s, generator=gen) * 255,
                 "bg": torch.rand(1, 3, s, s, generator=gen) * 255}
        batch = {k: v.to(device) for k, v in batch.items()}
        a, r = ddp(batch["input"])
        loss = stage_loss(1, a, r, batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        finite = finite and bool(torch.isfinite(loss))
    sync(device)
    seconds = time.perf_counter() - start
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    flags = torch.tensor([float(finite)], device=device)
    dist.all_reduce(flags, op=dist.ReduceOp.MIN)
    if rank == 0:
        diff = max(float((g - flat).abs().max()) for g in gathered)
        print("RESULT " + json.dumps({"world": world, "backend": dist.get_backend(), "max_diff": diff,
                                      "finite": bool(flags.item()), "seconds": seconds}), flush=True)
    dist.destroy_process_group()
    return 0


def check_ddp(args, device, rows):
    import torch

    nproc = torch.cuda.device_count() if device.type == "cuda" else 2
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           os.path.abspath(__file__), "--ddp_worker", "--device", device.type, "--train_size", str(args.train_size),
           "--ddp_iterations", str(args.ddp_iterations)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.ddp_timeout, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    backend = "nccl" if device.type == "cuda" else "gloo"
    setting = f"torchrun {nproc} process(es), {args.ddp_iterations} it, {args.train_size}×{args.train_size}"
    if proc.returncode != 0 or not lines:
        rows.append([f"ddp {backend}", setting, "", "", "-", f"exit {proc.returncode}", "FAILED"])
        print(proc.stdout[-2000:] + proc.stderr[-4000:], file=sys.stderr)
        return
    res = json.loads(lines[-1][len("RESULT "):])
    ok = res["max_diff"] == 0 and res["finite"] and res["world"] == nproc
    rows.append([f"ddp {res['backend']}", setting, f"{res['seconds']:.1f} s", "", "-",
                 f"params max diff across ranks {res['max_diff']:.1e}, losses finite: {res['finite']}",
                 "ok" if ok else "FAILED"])
    report(rows)


# --------------------------------------------------------------------------- #
# Prediction on two ranks (torchrun) against one process

def check_predict(args, device, rows):
    import cv2
    import torch

    from core.checkpoint import save_checkpoint
    from core.network import DIMNet

    cuda = device.type == "cuda"
    setting = "core/test.py, torchrun 2 processes vs 1, 5 images"
    if cuda and torch.cuda.device_count() < 2:
        rows.append(["predict torchrun", setting, "-", "-", "-",
                     f"needs 2 GPUs, {torch.cuda.device_count()} visible", "skipped"])
        report(rows)
        return
    w, h = (96, 64) if args.quick else (640, 480)
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("image", "trimap", "alpha"):
            os.makedirs(os.path.join(tmp, kind))
        for i in range(5):
            image, trimap = synthetic_pair(w + 32 * i, h, seed=i)
            cv2.imwrite(os.path.join(tmp, "image", f"p{i}.png"), image)
            cv2.imwrite(os.path.join(tmp, "trimap", f"p{i}.png"), trimap)
            cv2.imwrite(os.path.join(tmp, "alpha", f"p{i}.png"), cv2.GaussianBlur(trimap, (5, 5), 0))
        model = DIMNet(**VARIANTS[VARIANT][0])
        model.load_state_dict(bench_state_dict(VARIANT))
        ckpt = os.path.join(tmp, "bench.pth")
        save_checkpoint(ckpt, model, epoch=1, best_sad=float("inf"))
        flags = ["core/test.py", "--imgDir", os.path.join(tmp, "image"), "--trimapDir", os.path.join(tmp, "trimap"),
                 "--alphaDir", os.path.join(tmp, "alpha"), "--resume", ckpt, *(["--cuda"] if cuda else [])]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        times, outs = {}, {}
        for key, launch in (("one", [sys.executable]),
                            ("two", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                     "--nproc_per_node=2"])):
            outs[key] = os.path.join(tmp, key)
            start = time.perf_counter()
            proc = subprocess.run([*launch, *flags, "--saveDir", outs[key]], cwd=ROOT, capture_output=True,
                                  text=True, timeout=args.ddp_timeout, env=env)
            times[key] = time.perf_counter() - start
            if proc.returncode != 0:
                rows.append(["predict torchrun", setting, "", "", "-", f"{key}: exit {proc.returncode}", "FAILED"])
                print(proc.stdout[-2000:] + proc.stderr[-4000:], file=sys.stderr)
                return
        names = sorted(n for n in os.listdir(outs["one"]) if n.endswith(".png") or n.startswith("metrics."))
        same = [n for n in names if open(os.path.join(outs["one"], n), "rb").read()
                == open(os.path.join(outs["two"], n), "rb").read()]
        ok = len(names) == 7 and len(same) == len(names)
        rows.append(["predict torchrun", setting, f"{times['one']:.1f} s / {times['two']:.1f} s", "", "-",
                     f"{len(same)} of {len(names)} files (mattes, metrics) identical", "ok" if ok else "FAILED"])
        report(rows)


# --------------------------------------------------------------------------- #

TABLE_HEADERS = ["check", "setting", "time", "throughput", "peak MiB", "difference / losses", "status"]


def report(rows):
    """A progress line for the row just added (the table comes at the end)."""
    row = rows[-1]
    print(f"  {row[0]}: {row[-1]} ({'; '.join(c for c in row[1:-1] if c and c != '-')})", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="where to run (cuda)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few iterations (the test suite's run)")
    parser.add_argument("--parts", default="inference,training,loader,ddp,predict",
                        help="comma-separated subset to run")
    parser.add_argument("--ddp_worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--train_size", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ddp_iterations", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.infer_size = (192, 128) if args.quick else (1600, 1280)
    args.train_size = args.train_size or (64 if args.quick else 320)
    args.iterations = 2 if args.quick else 50
    args.warmup = 0 if args.quick else 5
    args.ddp_iterations = args.ddp_iterations or (2 if args.quick else 20)
    args.repeat = 1 if args.quick else 3
    args.ddp_timeout = 300
    if args.ddp_worker:
        return ddp_worker(args)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("no CUDA device is visible: run on a GPU machine, or use --device cpu --quick")
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if any(p not in ("inference", "training", "loader", "ddp", "predict") for p in parts):
        raise UserError(f"--parts {args.parts!r}: choose from inference, training, loader, ddp, predict")
    device = torch.device(args.device)
    print(f"machine: {machine_summary(torch.get_num_threads())}")
    print(f"CPU: {cpu_model()}; {cpu_features()}")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        print(f"GPU: {torch.cuda.get_device_name(0)} ({props.total_memory / 2**30:.0f} GiB), "
              f"{torch.cuda.device_count()} visible; CUDA {torch.version.cuda}, cuDNN "
              f"{torch.backends.cudnn.version()}; TF32 for cuDNN convolutions: {torch.backends.cudnn.allow_tf32}")
    print(flush=True)
    rows = []
    start = time.perf_counter()
    if "inference" in parts:
        check_inference(args, device, rows)
    if "training" in parts:
        check_training(args, device, rows)
    if "loader" in parts:
        check_loader(args, device, rows)
    if "ddp" in parts:
        check_ddp(args, device, rows)
    if "predict" in parts:
        check_predict(args, device, rows)
    print(f"\nall checks ({time.perf_counter() - start:.0f} s; peak MiB = torch.cuda.max_memory_allocated, weights "
          "included; difference = mean / max grey levels of the 8-bit matte in the unknown region):")
    print(format_table(TABLE_HEADERS, rows))
    failed = [r[0] for r in rows if r[-1] == "FAILED"]
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    run_cli(main)
