"""Reduced-precision operations (``--precision bf16|fp16``): the decoder in bfloat16/float16, inference only.

Designed for speed rather than switched on: wrapping the network in
``torch.autocast`` gains nothing on the CPU, because every convolution then
converts its weights and its NCHW input again.

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
  (oneDNN's AVX-512 BF16 / AMX kernels, cuDNN's tensor cores). A float32 map
  entering such a layer is converted first. Their weights are converted once
  per model, dtype and device (:func:`reduced_weights`). Each skip map is
  converted to the reduced dtype as soon as its pooling is done, which halves
  what the decoder keeps.
* Pooling records window offsets and unpooling scatters into the kept skip map
  as in the float32 lean path; every map is released as soon as nothing needs it.
* The 1-channel prediction layers are one matrix product plus shifted sums
  accumulated in float32; the sigmoids run in float32 and the alpha is float32.
"""

import weakref

import torch
import torch.nn.functional as F

from core.ops.lean import add_shifted_taps, pool_with_offsets, unpool_offsets

CL = torch.channels_last


class Reduced:
    """One reduced-precision pass over ``model`` in ``dtype`` (see the module docstring and ``DIMNet.walk``)."""

    def __init__(self, model, dtype=torch.bfloat16):
        self.model, self.dtype = model, dtype
        self.weights = reduced_weights(model, dtype)

    def _layer(self, name):
        """``(weight, bias)`` of layer ``name`` in the reduced dtype, converted on its first use."""
        if name not in self.weights:
            conv = getattr(self.model, name)
            with torch.no_grad():
                self.weights[name] = (conv.weight.detach().to(self.dtype).contiguous(memory_format=CL),
                                      conv.bias.detach().to(self.dtype))
        return self.weights[name]

    def input(self, x):
        return x.contiguous(memory_format=CL)

    def conv(self, name, h, part):
        if part == "encoder":  # float32, on the model's own weights
            conv = getattr(self.model, name)
            return _conv(h, conv.weight, conv.bias)
        if h.dtype != self.dtype:
            h = h.to(self.dtype, memory_format=CL)
        return _conv(h, *self._layer(name))

    def predict(self, name, h):
        return _predict_conv(h, *self._layer(name))

    def pool(self, h, keep):
        pooled, offsets = pool_with_offsets(h)
        skip = h.to(self.dtype, memory_format=CL) if keep else None
        return pooled, offsets.contiguous(memory_format=CL), skip

    def unpool(self, h, offsets, skip):
        return unpool_offsets(h, offsets, out=skip)

    def refined(self, raw, pred):
        return pred.add_(raw).sigmoid_()


# model -> {(dtype, device): (signature, weights)}; weak, so a dropped model frees its copies
_CACHE = weakref.WeakKeyDictionary()


def reduced_weights(model, dtype):
    """``{layer name: (weight, bias)}``: ``model``'s convolutions already converted to ``dtype``, channels-last.

    Each layer is converted on its first use by a reduced pass and kept while
    the model lives; the whole cache is dropped when a parameter was replaced
    or changed in place (``load_state_dict``, an optimizer step), which its data
    pointer and version counter reveal. Encoder layers never enter it.
    """
    params = list(model.parameters())
    device = params[0].device
    signature = tuple((p.data_ptr(), p._version) for p in params)
    per_model = _CACHE.setdefault(model, {})
    hit = per_model.get((dtype, device))
    if hit is not None and hit[0] == signature:
        return hit[1]
    per_model.pop((dtype, device), None)  # free the stale copies before converting
    weights = {}
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
