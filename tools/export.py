"""Export a checkpoint to ONNX and/or TorchScript for deployment without this code.

    python tools/export.py --resume model/stage1_skip_sad_52.9.pth --out_dir model/export
    python tools/export.py --resume model/stage2/ckpt_best.pth --stage 2 --format onnx --out model/export/my_stage2

Writes ``<out>.onnx`` and/or ``<out>.torchscript.pt``; by default ``<out>`` is
``<out_dir>/<checkpoint folder>_<checkpoint stem>_stage<N>`` (``_alpha``/``_refined``
when the stage is unknown; a released file keeps its own name without the folder),
so every run's ``ckpt_best.pth`` gets its own names. A file
there that holds an export of another model (other weights or output) is not
replaced without ``--force``; re-exporting the same model replaces it.

The exported graph takes the network input ``x``: float32 N×4×H×W, H and W
any multiples of 32 (N, H and W are dynamic in both formats): the RGB image
normalised with the ImageNet mean/std after BGR→RGB and /255, then the
trimap/255 (unknown = 128/255), exactly what
``core.preprocess.make_input`` builds. It returns one tensor, float32
N×1×H×W in [0, 1]: the encoder-decoder alpha for stage 0/1 models, the
refined alpha for stage 2/3 (``--stage``; default: refined when the
checkpoint has a refinement head). The alpha is before forcing. For the
matte ``core/test.py`` writes, build ``x`` with
``core.inference.whole_input(image, trimap, max_size)`` (sides rounded down
to /32, image *and trimap* resized bilinearly, as the reference) and turn the
output into the 8-bit matte with ``core.inference.finish_matte(alpha, trimap)``
(resize back, force the known regions, truncate).

After writing, each file is run on a realistic input (a 640×480 synthetic
example of ``tools/make_synthetic.py``, or ``--check_image``/``--check_trimap``)
through those two functions and compared with ``core/test.py``'s matte of the
same image: the report gives max |Δα| of the network output and the
difference of the written matte in grey levels (ONNX needs onnxruntime;
``--no_verify`` skips the check).

* ONNX: torch's ``torch.export``-based exporter (needs ``pip install onnx
  onnxscript``; opset ``--opset``, default 18). ``max_unpool2d`` has no
  direct translation; the exporter writes it as ScatterND, which onnxruntime
  runs. Exporting takes one to two minutes on a CPU.
* TorchScript: ``torch.jit.trace`` (deprecated by PyTorch in favour of
  torch.export, still loadable with ``torch.jit.load``). torch ≥ 2.10 fails to
  trace ``max_unpool2d`` (a size check receives a traced tensor instead of an
  int); the export skips that check for traced sizes only, while tracing.
  The input-size check of ``DIMNet.forward`` is not traced: the exported
  module does not reject sizes that are not multiples of 32 by itself.

Both trace ``DIMNet.walk`` with the reference's operations
(``core.ops.reference``: ``max_pool2d`` indices, ``max_unpool2d``, out-of-place
ReLU), named explicitly; the lean inference operations overwrite tensors in
place, which the exporters turn into graphs that only run at the traced batch
size.
"""

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import contextlib
import hashlib
import importlib.util
import json
import logging
import warnings
import zipfile

import numpy as np
import torch
import torch.nn.functional as F

from core.checkpoint import RELEASES, load_model
from core.imageio import atomic_path, read_gray, read_image
from core.inference import finish_matte, predict_matte, use_refined, whole_input
from core.ops.reference import Reference
from core.release import download_if_missing
from core.utils import UserError, run_cli
from tools.make_synthetic import make_example

FORMATS = ("onnx", "torchscript", "both")
DEFAULT_OPSET = 18
MAX_SIDE = 8192  # upper bound the ONNX exporter records for the symbolic sizes
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
META_KEY = "dim_export"  # ONNX metadata_props key / TorchScript extra file (+ ".json") naming the exported model
CHECK_SIZE = (480, 640)  # the self-check's synthetic example, height × width


class AlphaOnly(torch.nn.Module):
    """``DIMNet`` → one output: the alpha (``refined=False``) or the refined alpha, N×1×H×W, through the
    reference's operations."""

    def __init__(self, model, refined):
        super().__init__()
        self.model = model
        self.index = 1 if refined else 0

    def forward(self, x):
        return self.model.walk(x, Reference)[self.index]


@contextlib.contextmanager
def traceable_unpool():
    """Let ``torch.jit.trace`` record ``F.max_unpool2d``.

    Its output-size check calls ``torch._check_value(size >= 0)``, which
    raises when tracing turns the size into a tensor. Skip the check for
    tensor sizes only (the sizes come from the pooling it inverts), restoring
    the original afterwards.
    """
    original = F._check_unpool_output_size

    def check(output_size, dim):
        if not isinstance(output_size[dim], torch.Tensor):
            original(output_size, dim)

    F._check_unpool_output_size = check
    try:
        yield
    finally:
        F._check_unpool_output_size = original


def export_torchscript(module, sample, path, meta=None):
    """Trace ``module`` on ``sample`` (N×4×H×W) and save it atomically to ``path``.

    ``meta``: a JSON-able dict stored in the file as ``extra/dim_export.json`` (see :func:`export_meta`)."""
    with traceable_unpool(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation and "trace might not generalize" (the input check)
        # check_trace re-traces and compares constants; max_unpool2d's size arithmetic trips it
        # although the graph is right (the tests compare outputs at other sizes).
        traced = torch.jit.trace(module, (sample,), check_trace=False)
        with atomic_path(path, ".pt") as tmp:
            extra = {META_KEY + ".json": json.dumps(meta)} if meta is not None else None
            torch.jit.save(traced, tmp, _extra_files=extra)
    return path


def export_onnx(module, sample, path, opset=DEFAULT_OPSET, meta=None):
    """Export ``module`` to ONNX with dynamic N, H = 32·h, W = 32·w; saved atomically to ``path``.

    ``meta``: a JSON-able dict stored in the model's ``metadata_props`` under ``dim_export``."""
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"ONNX export needs {' and '.join(missing)}: pip install {' '.join(missing)}")
    batch = torch.export.Dim("batch", min=1, max=1024)
    h32 = torch.export.Dim("h32", min=1, max=MAX_SIDE // 32)
    w32 = torch.export.Dim("w32", min=1, max=MAX_SIDE // 32)
    quiet = logging.getLogger("onnx_ir")  # "Attribute type is ambiguous …" for empty attribute lists, harmless
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, (sample,), dynamo=True, opset_version=opset, input_names=["x"],
                                        output_names=["alpha"],
                                        dynamic_shapes=({0: batch, 2: 32 * h32, 3: 32 * w32},), verbose=False)
    finally:
        quiet.setLevel(level)
    if meta is not None:
        program.model.metadata_props[META_KEY] = json.dumps(meta)
    with atomic_path(path, ".onnx") as tmp:
        program.save(tmp)
    return path


# ---------------------------------------------------------------- names, and not overwriting another model

def weights_fingerprint(model, refined):
    """SHA-256 of the weights (names, shapes, bytes) and the exported output: what makes two exports the same."""
    digest = hashlib.sha256(b"refined" if refined else b"alpha")
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def export_meta(checkpoint, model, refined, stage):
    """What an export file records about its model (read back by :func:`read_meta`)."""
    return {"checkpoint": os.path.abspath(checkpoint), "output": "refined alpha" if refined else "alpha",
            "stage": stage, "fingerprint": weights_fingerprint(model, refined)}


def read_meta(path):
    """The :func:`export_meta` dict stored in an existing export, or None (not ours, or unreadable)."""
    if path.endswith(".onnx"):
        try:
            import onnx
            from google.protobuf.message import DecodeError
        except ImportError:
            return None
        try:
            props = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
        except (OSError, DecodeError):
            return None
        text = props.get(META_KEY)
    else:
        try:
            with zipfile.ZipFile(path) as archive:
                name = next((n for n in archive.namelist() if n.endswith(f"/extra/{META_KEY}.json")), None)
                text = archive.read(name).decode() if name else None
        except (OSError, zipfile.BadZipFile):
            return None
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def default_stem(checkpoint, stage, refined):
    """``<folder>_<checkpoint stem>_stage<N>`` (``_alpha``/``_refined`` when the stage is unknown).

    The folder tells trained models apart (every run writes ``ckpt_best.pth``: ``model/smoke/ckpt_best.pth``
    → ``smoke_ckpt_best_stage1``); a released file's own name is unique and is kept alone.
    """
    stem = os.path.splitext(os.path.basename(checkpoint))[0]
    if os.path.basename(checkpoint) not in RELEASES:
        folder = os.path.basename(os.path.dirname(os.path.abspath(checkpoint)))
        stem = f"{folder}_{stem}" if folder else stem
    return f"{stem}_stage{stage}" if stage is not None else f"{stem}_{'refined' if refined else 'alpha'}"


def output_paths(out, formats):
    """``{format: path}`` for the base name ``out`` (a trailing .onnx/.torchscript.pt/.pt is dropped)."""
    for suffix in (*SUFFIXES.values(), ".pt"):
        if out.endswith(suffix):
            out = out[:-len(suffix)]
            break
    return {fmt: out + SUFFIXES[fmt] for fmt in formats}


def check_overwrite(paths, meta, force):
    """Refuse (UserError) to replace an existing file unless it holds an export of the same model, or ``force``."""
    if force:
        return
    for path in paths:
        if not os.path.exists(path):
            continue
        old = read_meta(path)
        if old is None:
            raise UserError(f"{path} exists and is not an export of this tool (or cannot be read): "
                            "choose another --out, or pass --force to replace it")
        if old.get("fingerprint") != meta["fingerprint"]:
            raise UserError(f"{path} holds the export of another model ({old.get('checkpoint')}, "
                            f"{old.get('output')}): choose another --out, or pass --force to replace it")


# ---------------------------------------------------------------- the self-check on a realistic input

def synthetic_example(height=CHECK_SIZE[0], width=CHECK_SIZE[1], seed=0):
    """A non-random test image: (image BGR uint8, trimap uint8) of a tools/make_synthetic.py example
    (textured foreground with hair-like strands and a semi-transparent region over a texture)."""
    image, trimap, _ = make_example(np.random.default_rng(seed), height, width)
    return image, trimap


def compare_on_image(run, model, image, trimap, refined, max_size=1600):
    """Run an exported model (``run``: float32 1×4×H×W array → 1×1×H×W array) on one image in ``whole`` mode.

    Returns ``(max |Δα|, max grey-level difference, pixels that differ)``: the
    network output against PyTorch's at the same input, and the written 8-bit
    matte (:func:`core.inference.finish_matte`) against ``core/test.py``'s
    (:func:`core.inference.predict_matte`).
    """
    x = whole_input(image, trimap, max_size)
    out = np.asarray(run(x), np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x))[1 if refined else 0].numpy()
    stage = 2 if refined else 1
    want = predict_matte(model, image, trimap, mode="whole", max_size=max_size, stage=stage).astype(np.int16)
    diff = np.abs(finish_matte(out, trimap).astype(np.int16) - want)
    return float(np.abs(out - ref).max()), int(diff.max()), int(np.count_nonzero(diff))


def onnx_runner(path):
    """``x → alpha`` through onnxruntime (CPU), or None when onnxruntime is not installed."""
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"x": x})[0]


def torchscript_runner(path):
    """``x → alpha`` through ``torch.jit.load``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
        loaded = torch.jit.load(path)

    def run(x):
        with torch.no_grad():
            return loaded(torch.from_numpy(x)).numpy()
    return run


def check_input(args):
    """(image, trimap, description) for the self-check: ``--check_image``/``--check_trimap`` or a synthetic example."""
    if bool(args.check_image) != bool(args.check_trimap):
        raise UserError("--check_image and --check_trimap go together")
    if args.check_image:
        image, trimap = read_image(args.check_image), read_gray(args.check_trimap)
        if image.shape[:2] != trimap.shape:
            raise UserError(f"{args.check_trimap}: trimap is {trimap.shape[1]}×{trimap.shape[0]} but "
                            f"{args.check_image} is {image.shape[1]}×{image.shape[0]}")
        return image, trimap, args.check_image
    image, trimap = synthetic_example()
    return image, trimap, f"a synthetic {image.shape[1]}×{image.shape[0]} example"


def sample_input(batch=2, height=64, width=96, seed=0):
    """A fixed random network input, float32 batch×4×height×width (batch 2: N stays dynamic)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, height, width, generator=g)
    x[:, 3] = torch.randint(0, 3, (batch, height, width), generator=g).float() * 127.5 / 255
    return x


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Export a Deep Image Matting checkpoint to ONNX / TorchScript.")
    parser.add_argument("--resume", required=True, help="checkpoint to export (a missing released model is downloaded)")
    parser.add_argument("--no_download", action="store_true", help="never download a missing released model")
    parser.add_argument("--stage", type=int, choices=(0, 1, 2, 3), default=None,
                        help="0/1: export the encoder-decoder alpha, 2/3: the refined alpha "
                             "(default: refined when the checkpoint has a refinement head)")
    parser.add_argument("--skip", dest="skip", action="store_true", default=None,
                        help="the model has skip connections (default: from the checkpoint or its file name)")
    parser.add_argument("--no_skip", dest="skip", action="store_false", help="the model has no skip connections")
    parser.add_argument("--out", help="output name without extension: writes OUT.onnx and/or OUT.torchscript.pt "
                                      "(default: <out_dir>/<checkpoint folder>_<checkpoint stem>_stage<N>)")
    parser.add_argument("--out_dir", default="model/export", help="output folder when --out is not given "
                                                                  "(default: model/export)")
    parser.add_argument("--force", action="store_true", help="replace files that hold another model's export")
    parser.add_argument("--format", choices=FORMATS, default="both", help="what to write (default: both)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--no_verify", action="store_true", help="skip the check of the written files")
    parser.add_argument("--check_image", help="check on this photo instead of a synthetic 640×480 example")
    parser.add_argument("--check_trimap", help="its trimap (with --check_image)")
    parser.add_argument("--check_max_size", type=int, default=1600,
                        help="whole mode's --max_size for the check (default: 1600)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.opset < 17:
        raise UserError(f"--opset must be at least 17, got {args.opset}")
    check = None if args.no_verify else check_input(args)  # a bad --check_image fails before the export
    if not args.no_download:
        download_if_missing(args.resume)
    model, info = load_model(args.resume, stage=args.stage, skip=args.skip)
    refined = use_refined(model, args.stage)
    stage = args.stage if args.stage is not None else info.get("stage")
    formats = ("onnx", "torchscript") if args.format == "both" else (args.format,)
    out = args.out or os.path.join(args.out_dir, default_stem(args.resume, stage, refined))
    paths = output_paths(out, formats)
    meta = export_meta(args.resume, model, refined, stage)
    check_overwrite(paths.values(), meta, args.force)
    module = AlphaOnly(model, refined).eval()
    sample = sample_input()
    what = "refined alpha" if refined else "alpha"
    print(f"{args.resume}: skip={info['arch']['skip']} ({info['skip_source']}), exporting the {what}")
    runners = {}
    if "onnx" in paths:
        export_onnx(module, sample, paths["onnx"], args.opset, meta)
        runners["onnx"] = onnx_runner(paths["onnx"])
    if "torchscript" in paths:
        export_torchscript(module, sample, paths["torchscript"], meta)
        runners["torchscript"] = torchscript_runner(paths["torchscript"])
    for fmt, path in paths.items():
        print(f"wrote {path}")
        if check is None:
            continue
        if runners[fmt] is None:
            print("  not checked: pip install onnxruntime to run the ONNX file")
            continue
        image, trimap, where = check
        dalpha, grey, pixels = compare_on_image(runners[fmt], model, image, trimap, refined, args.check_max_size)
        print(f"  checked on {where} (whole mode): max |Δα| {dalpha:.2e} against PyTorch; the written matte "
              f"differs from core/test.py's by at most {grey} grey level{'' if grey == 1 else 's'} "
              f"({pixels} of {trimap.size} pixels)")
    return 0


if __name__ == "__main__":
    run_cli(main)
