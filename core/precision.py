"""Reduced-precision inference (``--precision bf16|fp16``): a lean forward with the decoder in bfloat16/float16.

``fp32`` (the default) is not handled here: it is :meth:`DIMNet.forward_lean`,
bit for bit. ``bf16`` (CPU and CUDA) and ``fp16`` (CUDA only) run
:func:`forward_reduced`, designed for speed rather than switched on: wrapping
the network in ``torch.autocast`` gains nothing on the CPU, because every
convolution then converts its weights and its NCHW input again.

* **The encoder stays float32.** Its maps decide, at each of the five
  max-poolings, where unpooling puts a value; in bfloat16 (8 bits of mantissa)
  many windows pick a different maximum, and the matte moved by ~4 grey levels
  on average (measured on the five real examples with the benchmark's random
  weights; float32 encoder: ~0.2). It runs channels-last, which oneDNN computes
  faster than the exact path's NCHW row strips and without layout copies (so
  without strips), with ReLU fused; its rounding differs from the exact path's
  in the last bits. It is most of this path's time (3.4 of 6.3 s at
  1600×1280 on 2 cores), which caps the gain over fp32 at ~1.1–1.3× there.
* **Everything after the last pooling runs in the reduced dtype**: conv6,
  the decoder and the refinement head, about half of the FLOPs, channels-last
  (oneDNN's AVX-512 BF16 / AMX kernels, cuDNN's tensor cores). Their weights are
  converted once per model, dtype and device (:func:`reduced_weights`). Each
  skip map is converted to the reduced dtype as soon as its pooling is done,
  which halves what the decoder keeps.
* Pooling records window offsets and unpooling scatters into the kept skip map
  as in the float32 lean path; every map is released as soon as nothing needs it.
* The 1-channel prediction layers are one matrix product plus shifted sums
  accumulated in float32; the sigmoids run in float32 and the alpha is float32.
"""

import functools
import warnings
import weakref

import torch
import torch.nn.functional as F

from core.network import (DECODER, ENCODER_BLOCKS, ENCODER_NAMES, REFINE, add_shifted_taps, pool_with_offsets,
                          unpool_offsets)

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision, device):
    """Raise ValueError (a one-line message) when ``precision`` cannot run on ``device``; warn once
    when bfloat16 will be slow on this CPU."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("--precision fp16 needs a CUDA GPU (CPUs compute float16 slowly): "
                         "use --precision bf16 on the CPU")
    if precision == "bf16" and device.type == "cpu":
        warn_if_slow_bf16()


@functools.lru_cache(maxsize=1)
def cpu_flags():
    """The CPU feature flags of /proc/cpuinfo (empty where it cannot be read); read once per process,
    since :func:`check_precision` asks on every prediction."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16_cpu(flags=None):
    """Whether the CPU computes bfloat16 natively (AVX-512 BF16 or AMX)."""
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_bf16", "amx_bf16"} & flags)


_warned_slow = False


def warn_if_slow_bf16(flags=None):
    """Warn (once per process) when bfloat16 has no native support on this CPU. Returns whether it warned."""
    global _warned_slow
    if _warned_slow or native_bf16_cpu(flags):
        return False
    _warned_slow = True
    warnings.warn("this CPU has no native bfloat16 (neither AVX-512 BF16 nor AMX in /proc/cpuinfo): "
                  "--precision bf16 is emulated and likely slower than fp32", stacklevel=3)
    return True


# model -> {(dtype, device): (signature, weights)}; weak, so a dropped model frees its copies
_CACHE = weakref.WeakKeyDictionary()


def reduced_weights(model, dtype):
    """``{layer name: (weight, bias)}`` of ``model``'s convolutions in ``dtype``, channels-last.

    Converted once and kept while the model lives; converted again when a
    parameter was replaced or changed in place (``load_state_dict``, an
    optimizer step), which its data pointer and version counter reveal.
    """
    params = list(model.parameters())
    device = params[0].device
    signature = tuple((p.data_ptr(), p._version) for p in params)
    per_model = _CACHE.setdefault(model, {})
    hit = per_model.get((dtype, device))
    if hit is not None and hit[0] == signature:
        return hit[1]
    per_model.pop((dtype, device), None)  # free the stale copy before converting
    weights = {}
    with torch.no_grad():
        for name, conv in model.named_children():
            if isinstance(conv, torch.nn.Conv2d):
                if name in ENCODER_NAMES:
                    continue  # the encoder runs in float32 on the model's own weights
                weights[name] = (conv.weight.detach().to(dtype).contiguous(memory_format=torch.channels_last),
                                 conv.bias.detach().to(dtype))
    per_model[(dtype, device)] = (signature, weights)
    return weights


_fused_failed = False  # set when oneDNN's fused convolution + ReLU raised: plain calls from then on


def _conv(x, weight, bias, relu=True):
    """'Same' convolution (stride 1), then ReLU; on the CPU one oneDNN call with the ReLU fused (the same
    kernel and values as ``conv2d(...).relu_()``, ~8% faster: the map is not read and written again)."""
    global _fused_failed
    pad = weight.shape[-1] // 2
    if relu and x.device.type == "cpu" and not _fused_failed:
        try:
            return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, [pad, pad], [1, 1], [1, 1], 1,
                                                           "relu", [], "")
        except (AttributeError, RuntimeError):  # a private op: should a build lack or reject it, fall back
            _fused_failed = True
    y = F.conv2d(x, weight, bias, padding=pad)
    return y.relu_() if relu else y


def _predict_conv(x, weight, bias):
    """A convolution with 1 output channel (``deconv1``, ``refine_pred``), float32 N×1×H×W out.

    ``z = x · taps`` (an N·H·W×C by C×k² product in the reduced dtype, float32
    accumulation) gives each kernel tap's channel sum; the output is the bias
    plus each tap's map shifted into place, summed in float32.
    """
    n, c, h, w = x.shape
    k = weight.shape[-1]
    pad = k // 2
    taps = weight[0].reshape(c, k * k)
    xm = x.permute(0, 2, 3, 1).reshape(n * h * w, c)  # channels-last: a view
    z = torch.mm(xm, taps).float().view(n, h, w, k, k)
    out = torch.empty((n, h, w), dtype=torch.float32, device=x.device).fill_(float(bias[0]))
    add_shifted_taps(out, lambda i, j: z[..., i, j], k, k, pad, pad)
    return out.unsqueeze(1)


@torch.inference_mode()
def forward_reduced(model, x, dtype=torch.bfloat16):
    """``(alpha, refined)`` of a ``DIMNet`` (see the module docstring): the encoder in float32, everything
    after its last pooling in ``dtype``; float32 N×1×H×W out. Inference only.

    ``x``: N×4×H×W float32 input (see ``core.preprocess``), H and W multiples of 32.
    """
    model.check_input(x)
    wts = reduced_weights(model, dtype)
    cl = torch.channels_last
    h = x.contiguous(memory_format=cl)
    skips, offsets = [], []
    for block in ENCODER_BLOCKS:
        for name, _, _ in block:
            conv = getattr(model, name)
            h = _conv(h, conv.weight, conv.bias)
        pooled, off = pool_with_offsets(h)
        skips.append(h.to(dtype, memory_format=cl) if model.skip else None)
        offsets.append(off.contiguous(memory_format=cl))
        h = pooled
    del pooled, off
    h = _conv(h.to(dtype, memory_format=cl), *wts["conv6_1"])
    h = _conv(h, *wts["deconv6_1"])
    for name, _, _ in DECODER:
        h = unpool_offsets(h, offsets.pop(), out=skips.pop())
        h = _conv(h, *wts[name])
    raw = _predict_conv(h, *wts["deconv1"])
    del h
    alpha = torch.sigmoid(raw)
    if not model.refine:
        return alpha, None
    r = torch.cat((x[:, :3], alpha), dim=1).to(dtype).contiguous(memory_format=cl)
    for name, _, _ in REFINE:
        r = _conv(r, *wts[name])
    refined = _predict_conv(r, *wts["refine_pred"])
    del r
    return alpha, refined.add_(raw).sigmoid_()
