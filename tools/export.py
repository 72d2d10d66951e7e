"""Export a checkpoint to ONNX and/or TorchScript for deployment without this code.

    python tools/export.py --resume model/stage1_skip_sad_52.9.pth --out_dir model/export
    python tools/export.py --resume ckpt.pth --stage 2 --format onnx --out_dir export

Writes ``<out_dir>/<checkpoint stem>.onnx`` and/or ``<checkpoint stem>.torchscript.pt``.

The exported graph takes the network input ``x``: float32 N×4×H×W, H and W
any multiples of 32 (N, H and W are dynamic in both formats): the RGB image
normalised with the ImageNet mean/std after BGR→RGB and /255, then the
trimap/255 (unknown = 128/255), exactly what
``core.preprocess.make_input`` builds. It returns one tensor, float32
N×1×H×W in [0, 1]: the encoder-decoder alpha for stage 0/1 models, the
refined alpha for stage 2/3 (``--stage``; default: refined when the
checkpoint has a refinement head). The alpha is before forcing: set it to 1
where the trimap is 255 and 0 where it is 0, as ``core.inference.force_known``
does; sizes other than multiples of 32 are the caller's job (resize as in
``whole`` mode, or pad).

* ONNX: torch's ``torch.export``-based exporter (needs ``pip install onnx
  onnxscript``; opset ``--opset``, default 18). ``max_unpool2d`` has no
  direct translation; the exporter writes it as ScatterND, which onnxruntime
  runs. Exporting takes about half a minute on a CPU. With onnxruntime
  installed the file is checked against PyTorch on the sample input
  (``--no_verify`` skips it).
* TorchScript: ``torch.jit.trace`` (deprecated by PyTorch in favour of
  torch.export, still loadable with ``torch.jit.load``). torch ≥ 2.10 fails to
  trace ``max_unpool2d`` (a size check receives a traced tensor instead of an
  int); the export skips that check for traced sizes only, while tracing.
  The input-size check of ``DIMNet.forward`` is not traced: the exported
  module does not reject sizes that are not multiples of 32 by itself.

Both trace the network with autograd on, i.e. ``DIMNet``'s reference
operations (``max_pool2d`` indices, ``max_unpool2d``, out-of-place ReLU);
its inference-only path overwrites tensors in place, which the exporters
turn into graphs that only run at the traced batch size.
"""

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import contextlib
import importlib.util
import logging
import warnings

import torch
import torch.nn.functional as F

from core.checkpoint import load_model
from core.imageio import atomic_path
from core.inference import use_refined
from core.release import download_if_missing
from core.utils import UserError, run_cli

FORMATS = ("onnx", "torchscript", "both")
DEFAULT_OPSET = 18
MAX_SIDE = 8192  # upper bound the ONNX exporter records for the symbolic sizes


class AlphaOnly(torch.nn.Module):
    """``DIMNet`` → one output: the alpha (``refined=False``) or the refined alpha, N×1×H×W."""

    def __init__(self, model, refined):
        super().__init__()
        self.model = model
        self.index = 1 if refined else 0

    def forward(self, x):
        return self.model(x)[self.index]


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


def export_torchscript(module, sample, path):
    """Trace ``module`` on ``sample`` (N×4×H×W) and save it atomically to ``path``."""
    with torch.enable_grad(), traceable_unpool(), warnings.catch_warnings():  # reference path: see the module docstring
        warnings.simplefilter("ignore")  # deprecation and "trace might not generalize" (the input check)
        # check_trace re-traces and compares constants; max_unpool2d's size arithmetic trips it
        # although the graph is right (the tests compare outputs at other sizes).
        traced = torch.jit.trace(module, (sample,), check_trace=False)
        with atomic_path(path, ".pt") as tmp:
            torch.jit.save(traced, tmp)
    return path


def export_onnx(module, sample, path, opset=DEFAULT_OPSET):
    """Export ``module`` to ONNX with dynamic N, H = 32·h, W = 32·w; saved atomically to ``path``."""
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
        with torch.enable_grad(), warnings.catch_warnings():  # reference path: see the module docstring
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, (sample,), dynamo=True, opset_version=opset, input_names=["x"],
                                        output_names=["alpha"],
                                        dynamic_shapes=({0: batch, 2: 32 * h32, 3: 32 * w32},), verbose=False)
    finally:
        quiet.setLevel(level)
    with atomic_path(path, ".onnx") as tmp:
        program.save(tmp)
    return path


def verify_onnx(path, module, sample):
    """Max |ONNX − PyTorch| on ``sample`` with onnxruntime (CPU), or None when onnxruntime is missing."""
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    out = session.run(None, {"x": sample.numpy()})[0]
    with torch.no_grad():
        ref = module(sample).numpy()
    return float(abs(out - ref).max())


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
    parser.add_argument("--out_dir", default="model/export", help="output folder (default: model/export)")
    parser.add_argument("--format", choices=FORMATS, default="both", help="what to write (default: both)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--no_verify", action="store_true", help="do not check the ONNX file with onnxruntime")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.opset < 17:
        raise UserError(f"--opset must be at least 17, got {args.opset}")
    if not args.no_download:
        download_if_missing(args.resume)
    model, info = load_model(args.resume, stage=args.stage, skip=args.skip)
    refined = use_refined(model, args.stage)
    module = AlphaOnly(model, refined).eval()
    sample = sample_input()
    stem = os.path.splitext(os.path.basename(args.resume))[0]
    what = "refined alpha" if refined else "alpha"
    print(f"{args.resume}: skip={info['arch']['skip']} ({info['skip_source']}), exporting the {what}")
    if args.format in ("onnx", "both"):
        path = export_onnx(module, sample, os.path.join(args.out_dir, stem + ".onnx"), args.opset)
        diff = None if args.no_verify else verify_onnx(path, module, sample)
        check = "" if diff is None else f"; onnxruntime vs PyTorch max |diff| {diff:.2e}"
        print(f"wrote {path}{check}")
    if args.format in ("torchscript", "both"):
        path = export_torchscript(module, sample, os.path.join(args.out_dir, stem + ".torchscript.pt"))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
