"""The Deep Image Matting network (Xu et al., CVPR 2017, §3.1–3.2; SPEC §2).

A VGG-16 encoder (conv1_1 … conv5_3 plus conv6_1) with max-pooling indices, a
light decoder that unpools with those indices (optionally adding the encoder
feature of the same scale: the "skip" variant of the best released model), a
sigmoid alpha, and an optional refinement head (stages 2 and 3).

Parameter names are exactly the reference's so its released checkpoints load
with ``strict=True``.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.stages import has_refine

# (name, in, out) for the encoder convolutions, in order; a max-pool follows
# the last conv of each block.
ENCODER_BLOCKS = (
    (("conv1_1", 4, 64), ("conv1_2", 64, 64)),
    (("conv2_1", 64, 128), ("conv2_2", 128, 128)),
    (("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256)),
    (("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512)),
    (("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512)),
)
# Decoder convolutions after each unpooling, deepest first (kernel 5, pad 2).
DECODER = (("deconv5_1", 512, 512), ("deconv4_1", 512, 256), ("deconv3_1", 256, 128),
           ("deconv2_1", 128, 64), ("deconv1_1", 64, 64))
REFINE = (("refine_conv1", 4, 64), ("refine_conv2", 64, 64), ("refine_conv3", 64, 64))

ENCODER_NAMES = tuple(name for block in ENCODER_BLOCKS for name, _, _ in block)


class DIMNet(nn.Module):
    """Deep Image Matting encoder-decoder with an optional refinement head.

    Args:
        refine: build the refinement head (``refine_*``; stages 2 and 3).
        skip: add each encoder block's last feature map (after ReLU, before
            pooling) to the unpooled decoder feature of the same scale.
            The released ``stage1_skip_sad_52.9.pth`` uses it; older releases
            do not. Skip adds no parameters.
        conv6_kernel: 3 (pad 1; current reference) or 1 (pad 0; models
            released before 2019-09-09).

    ``forward(x)`` takes N×4×H×W (normalised RGB + trimap/255, see
    ``core.preprocess``), H and W multiples of 32, and returns
    ``(alpha, refined)``: N×1×H×W in [0, 1], ``refined`` None without a
    refinement head.
    """

    def __init__(self, refine=False, skip=True, conv6_kernel=3):
        super().__init__()
        if conv6_kernel not in (1, 3):
            raise ValueError(f"conv6_kernel must be 1 or 3, got {conv6_kernel}")
        self.refine = bool(refine)
        self.skip = bool(skip)
        self.conv6_kernel = conv6_kernel
        for block in ENCODER_BLOCKS:
            for name, cin, cout in block:
                setattr(self, name, nn.Conv2d(cin, cout, 3, padding=1))
        self.conv6_1 = nn.Conv2d(512, 512, conv6_kernel, padding=conv6_kernel // 2)
        self.deconv6_1 = nn.Conv2d(512, 512, 1)
        for name, cin, cout in DECODER:
            setattr(self, name, nn.Conv2d(cin, cout, 5, padding=2))
        self.deconv1 = nn.Conv2d(64, 1, 5, padding=2)
        if self.refine:
            for name, cin, cout in REFINE:
                setattr(self, name, nn.Conv2d(cin, cout, 3, padding=1))
            self.refine_pred = nn.Conv2d(64, 1, 3, padding=1)

    @property
    def arch(self):
        """The keyword arguments that rebuild this architecture."""
        return {"refine": self.refine, "skip": self.skip, "conv6_kernel": self.conv6_kernel}

    @staticmethod
    def check_input(x):
        if x.dim() != 4 or x.shape[1] != 4 or x.shape[2] % 32 or x.shape[3] % 32 or x.shape[2] == 0 or x.shape[3] == 0:
            raise ValueError("DIMNet expects an N×4×H×W input with H and W positive multiples of 32, "
                             f"got {tuple(x.shape)}")

    def forward(self, x):
        """``(alpha, refined)`` for ``x`` N×4×H×W float (see the class docstring).

        With autograd on this runs the reference's operations out of place (what
        training differentiates); with it off (``torch.no_grad`` /
        ``torch.inference_mode``) it runs :meth:`forward_lean`, the same numbers
        in a fraction of the memory.
        """
        self.check_input(x)
        if torch.is_grad_enabled():
            return self.forward_reference(x)
        return self.forward_lean(x)

    def forward_reference(self, x):
        """The reference's operations: max-pool indices, ``max_unpool2d``, out-of-place ReLU and skip sums.

        Autograd keeps whatever it needs for the backward pass, so nothing here is
        overwritten in place.
        """
        h = x
        skips, indices = [], []
        for block in ENCODER_BLOCKS:
            for name, _, _ in block:
                h = F.relu(getattr(self, name)(h))
            skips.append(h if self.skip else None)
            h, idx = F.max_pool2d(h, kernel_size=2, stride=2, return_indices=True)
            indices.append(idx)
        h = F.relu(self.conv6_1(h))
        h = F.relu(self.deconv6_1(h))
        for name, _, _ in DECODER:
            h = F.max_unpool2d(h, indices.pop(), kernel_size=2, stride=2)
            feat = skips.pop()
            if feat is not None:
                h = h + feat
            h = F.relu(getattr(self, name)(h))
        raw = self.deconv1(h)
        alpha = torch.sigmoid(raw)
        if not self.refine:
            return alpha, None
        r = torch.cat((x[:, :3], alpha), dim=1)
        for name, _, _ in REFINE:
            r = F.relu(getattr(self, name)(r))
        return alpha, torch.sigmoid(raw + self.refine_pred(r))

    def forward_lean(self, x):
        """Inference-only forward (autograd must be off): the reference's values in a fraction
        of its memory and time.

        * Every feature map is released as soon as nothing needs it; ReLU, the
          skip sums and the refined sigmoid overwrite their input.
        * Pooling keeps a 1-byte window offset per pooled value instead of int64
          indices (:func:`pool_with_offsets`), and unpooling scatters straight
          into the kept skip feature (:func:`unpool_offsets`).
        * On the CPU large convolutions run in row strips (:func:`conv_lean`), so
          oneDNN's layout copies and NNPACK's workspace stay strip-sized.
        * The encoder's convolutions are computed exactly as ``conv(x)`` is: its
          maps decide where unpooling puts values, and a last-bit difference can
          move a maximum to another pixel. The decoder and refinement
          convolutions (after the last pooling; nothing is compared there) use the
          fastest CPU kernels (NNPACK; a matrix product for the 1-channel
          layers), whose rounding differs from oneDNN's by about 1e-6 relative.
        * On CUDA the maps are channels-last, which cuDNN runs fastest (tensor
          cores under autocast).
        """
        if torch.is_grad_enabled():
            raise RuntimeError("forward_lean overwrites activations in place: call it under torch.no_grad() "
                               "or torch.inference_mode()")
        # NCHW on the CPU, as the reference's deploy code feeds it (the encoder must run its kernels)
        h = x.contiguous() if x.device.type == "cpu" else x.contiguous(memory_format=torch.channels_last)
        skips, offsets = [], []
        for block in ENCODER_BLOCKS:
            for name, _, _ in block:
                h = conv_lean(getattr(self, name), h)
            pooled, off = pool_with_offsets(h)
            skips.append(h if self.skip else None)
            offsets.append(off)
            h = pooled
        del pooled, off
        h = conv_lean(self.conv6_1, h)
        h = conv_lean(self.deconv6_1, h)
        for name, _, _ in DECODER:
            # pop() so the lists do not keep a map alive after its use
            h = unpool_offsets(h, offsets.pop(), out=skips.pop())
            h = conv_lean(getattr(self, name), h, exact=False)
        raw = conv_lean(self.deconv1, h, relu=False, exact=False)
        del h
        alpha = torch.sigmoid(raw)
        if not self.refine:
            return alpha, None
        r = torch.cat((x[:, :3], alpha), dim=1)
        for name, _, _ in REFINE:
            r = conv_lean(getattr(self, name), r, exact=False)
        refined = conv_lean(self.refine_pred, r, relu=False, exact=False)
        del r
        return alpha, refined.add_(raw).sigmoid_()


# --------------------------------------------------------------------------- #
# Building blocks of forward_lean (inference only: no autograd through them).

# Window position k of a 2×2 pooling window is (dy, dx) = divmod(k, 2): row-major,
# the order in which max_pool2d scans a window.
_WINDOW = ((0, 0), (0, 1), (1, 0), (1, 1))


def pool_with_offsets(feat):
    """2×2 / stride-2 max-pooling that records where each maximum came from.

    ``feat``: N×C×H×W float, H and W even. Returns ``(pooled, offsets)``:
    ``pooled`` N×C×H/2×W/2 with the values of ``F.max_pool2d(feat, 2, 2)``;
    ``offsets`` int8, same shape, 2·dy + dx of the maximum inside its window.
    Ties go to the first maximum in row-major order, the position
    ``max_pool2d(..., return_indices=True)`` reports, so
    ``unpool_offsets(pooled, offsets)`` equals ``F.max_unpool2d(pooled, indices, 2, 2)``
    (windows holding NaN excepted). Four strided element-wise maxima are much
    faster than the CPU max_pool2d kernel on NCHW maps, and the offsets cost
    1 byte per value instead of 8.
    """
    v = [feat[:, :, dy::2, dx::2] for dy, dx in _WINDOW]
    pooled = torch.maximum(v[0], v[1])
    torch.maximum(pooled, v[2], out=pooled)
    torch.maximum(pooled, v[3], out=pooled)
    # offset = 0 if v0 is the max, else 1 if v1, else 2 if v2, else 3:
    #        = n0 · (1 + n1 · (1 + n2)) with n_k = (v_k != max)
    offsets = (v[2] != pooled).to(torch.int8).add_(1)
    offsets.mul_(v[1] != pooled).add_(1)
    offsets.mul_(v[0] != pooled)
    return pooled, offsets


def unpool_offsets(h, offsets, out=None):
    """Max-unpooling with the window offsets of :func:`pool_with_offsets`.

    ``h``: N×C×h×w float; ``offsets``: int8, same shape. Each value goes to
    (2i + dy, 2j + dx) with (dy, dx) = divmod(offset, 2), zeros elsewhere, as
    ``F.max_unpool2d`` does. With ``out`` (N×C×2h×2w, e.g. the skip feature) the
    unpooled map is added to it in place and ``out`` is returned (``out +
    max_unpool2d(h)`` without allocating the unpooled map); without, a new map in
    ``h``'s memory format is returned.
    """
    n, c, hh, ww = h.shape
    fresh = out is None
    nchw = h.is_contiguous() and offsets.is_contiguous() and (fresh or out.is_contiguous())
    if fresh:
        fmt = torch.contiguous_format if nchw or not h.is_contiguous(memory_format=torch.channels_last) \
            else torch.channels_last
        out = torch.empty((n, c, 2 * hh, 2 * ww), dtype=h.dtype, device=h.device, memory_format=fmt).zero_()
    if nchw:
        _scatter_nchw(h, offsets, out)
        return out
    zero = h.new_zeros(())
    for k, (dy, dx) in enumerate(_WINDOW):
        out[:, :, dy::2, dx::2].add_(torch.where(offsets == k, h, zero))
    return out


def _scatter_nchw(h, offsets, out, chunk=1 << 20):
    """``out += max_unpool2d(h)`` for NCHW-contiguous maps: a flat-index scatter_add, a few
    channels at a time so the int64 indices stay small (about ``chunk`` of them)."""
    n, c, hh, ww = h.shape
    width = 2 * ww
    # flat index of each window's top-left pixel; + offset → + dy·width + dx = + dy·(width − 2) + offset
    corner = (torch.arange(hh, device=h.device).view(hh, 1) * (2 * width)
              + torch.arange(0, width, 2, device=h.device).view(1, ww)).view(1, hh * ww)
    rows = max(1, chunk // (hh * ww))
    hf, of, outf = h.view(n * c, -1), offsets.view(n * c, -1), out.view(n * c, -1)
    for r in range(0, n * c, rows):
        o = of[r:r + rows].long()
        index = (o >> 1).mul_(width - 2).add_(o).add_(corner)
        outf[r:r + rows].scatter_add_(1, index, hf[r:r + rows])


# False: every convolution of forward_lean uses the exact kernel (what ``conv(x)``
# runs), so inference equals the autograd path bit for bit, at the decoder's
# oneDNN speed (about half of NNPACK's on AVX2 CPUs).
FAST_KERNELS = True

# Row strips bound the CPU's per-convolution temporaries (oneDNN copies NCHW
# maps to its blocked layout and back) to about this many bytes of strip input +
# output. Smaller strips cost oneDNN nothing (measured 4–48 MB on 2 cores) ...
STRIP_BYTES = 16 << 20
# ... but the fast kernels want larger ones (NNPACK wastes halo rows and FFT
# tiles on thin strips); its workspace is ~3× a strip's input.
FAST_STRIP_FACTOR = 3
# oneDNN picks the same kernel for strips of at least this many rows as for the
# whole map, so strips give bit-identical results (tests/test_perf_equivalence.py).
MIN_STRIP_ROWS = 32
# PyTorch runs a single-image convolution with a ≤3×3 kernel in its native kernel
# instead of oneDNN when the input has at most this many elements; a strip must
# not fall below it when its whole map does not.
_NATIVE_CONV_MAX_NUMEL = 20480


_nnpack_failed = False  # set when an NNPACK call raised: oneDNN from then on


def _nnpack_ok(x, conv):
    if _nnpack_failed or not (x.dtype == torch.float32 and conv.stride == (1, 1) and conv.dilation == (1, 1)
                              and conv.groups == 1 and torch._C._get_nnpack_enabled()):
        return False
    return torch.backends.nnpack.is_available()  # also initialises NNPACK, which its kernels need


def _conv_taps(conv, x, pad_h, pad_w):
    """A convolution with few output channels as one matrix product plus shifted sums.

    ``z = W' @ x`` gives, for every kernel tap (i, j), the channel sum of that
    tap's weights times ``x`` (a Cout·k²×Cin by Cin×H·W product, which MKL runs
    at full speed); the output is the bias plus each tap's map shifted by
    (i − pad_h, j − pad_w), zero beyond the edges. oneDNN's direct kernels leave
    most of each vector idle when Cout is 1.
    """
    n, cin, hi, wi = x.shape
    cout, _, kh, kw = conv.weight.shape
    ho, wo = hi + 2 * pad_h - kh + 1, wi + 2 * pad_w - kw + 1
    taps = conv.weight.permute(0, 2, 3, 1).reshape(cout * kh * kw, cin)
    z = x.new_empty((n, cout * kh * kw, hi * wi))
    for b in range(n):  # 2-D products: a batched matmul here would transpose its result
        torch.mm(taps, x[b].reshape(cin, hi * wi), out=z[b])
    z = z.view(n, cout, kh, kw, hi, wi)
    out = torch.zeros((n, cout, ho, wo), dtype=x.dtype, device=x.device)
    if conv.bias is not None:
        out.copy_(conv.bias.view(1, cout, 1, 1))
    add_shifted_taps(out, lambda i, j: z[:, :, i, j], kh, kw, pad_h, pad_w)
    return out


def add_shifted_taps(out, tap, kh, kw, pad_h, pad_w):
    """``out[..., y, x] += tap(i, j)[..., y + i − pad_h, x + j − pad_w]`` for every kernel tap (i, j),
    where that pixel exists (zero padding); the last two dimensions are rows and columns."""
    ho, wo = out.shape[-2:]
    hi, wi = tap(0, 0).shape[-2:]
    for i in range(kh):
        dy = i - pad_h
        y0, y1 = max(0, -dy), min(ho, hi - dy)
        for j in range(kw):
            dx = j - pad_w
            x0, x1 = max(0, -dx), min(wo, wi - dx)
            out[..., y0:y1, x0:x1] += tap(i, j)[..., y0 + dy:y1 + dy, x0 + dx:x1 + dx]


def _conv_call(conv, x, pad_h, impl):
    """``conv`` on ``x`` with vertical zero padding ``pad_h`` (horizontal: the conv's own)."""
    pad = [pad_h, conv.padding[1]]
    if impl == "nnpack":
        global _nnpack_failed
        try:
            return torch._nnpack_spatial_convolution(x.contiguous(), conv.weight, conv.bias, pad)
        except RuntimeError:  # a private op: should a build reject a shape, fall back for good
            _nnpack_failed = True
    if impl == "taps":
        return _conv_taps(conv, x, *pad)
    return F.conv2d(x, conv.weight, conv.bias, padding=pad)


def conv_lean(conv, x, relu=True, exact=True):
    """``conv(x)`` then, if ``relu``, ReLU in place; inference only.

    ``conv``: an ``nn.Conv2d`` with stride 1 and 'same' zero padding; ``x``:
    N×C×H×W. On the CPU a map taller than two strips is computed in row strips
    of about :data:`STRIP_BYTES` (input + output; :data:`FAST_STRIP_FACTOR`
    times that for the fast kernels), each with its halo rows, into one
    preallocated output. ``exact`` (or :data:`FAST_KERNELS` off): the same kernel
    as ``conv(x)``, bit for bit; otherwise the fastest CPU kernel: NNPACK
    (FFT/Winograd) for maps with many output channels, :func:`_conv_taps` for few
    (the 1-channel prediction layers, which oneDNN runs at ~2% of its usual
    speed). Other devices: one plain call.
    """
    impl = "onednn"
    if x.device.type == "cpu" and not exact and FAST_KERNELS:
        impl = "taps" if conv.out_channels < 8 else ("nnpack" if _nnpack_ok(x, conv) else "onednn")
    n, _, height, width = x.shape
    pad = conv.padding[0]
    row_bytes = n * width * (conv.in_channels + conv.out_channels) * x.element_size()
    budget = STRIP_BYTES * (1 if impl == "onednn" else FAST_STRIP_FACTOR)
    rows = max(MIN_STRIP_ROWS, budget // row_bytes, _NATIVE_CONV_MAX_NUMEL // (n * conv.in_channels * width) + 1)
    if x.device.type != "cpu" or height < 2 * rows:
        y = _conv_call(conv, x, pad, impl)
        return y.relu_() if relu else y
    out = torch.empty((n, conv.out_channels, height, width), dtype=x.dtype)
    strips = height // rows  # every strip at least ``rows`` tall
    bounds = [height * i // strips for i in range(strips + 1)]
    for a, b in zip(bounds[:-1], bounds[1:]):
        lo, hi = max(0, a - pad), min(height, b + pad)
        xs = x[:, :, lo:hi]
        top, bottom = pad - (a - lo), pad - (hi - b)  # zero rows beyond the map's edge
        if top or bottom:
            xs = F.pad(xs, (0, 0, top, bottom))
        y = _conv_call(conv, xs, 0, impl)
        out[:, :, a:b] = y.relu_() if relu else y
    return out


def build_model(stage=1, skip=True, conv6_kernel=3):
    """The network for a training/inference ``stage`` (0–3, SPEC §7): with a refinement head as
    :data:`core.stages.STAGES` says."""
    return DIMNet(refine=has_refine(stage), skip=skip, conv6_kernel=conv6_kernel)


def freeze_encoder_decoder(model):
    """Stage-2 policy: freeze everything but the refinement head.

    Returns the list of parameters left trainable. Training policy lives here,
    outside the architecture, so the same class serves every stage.
    """
    trainable = []
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("refine_"))
        if p.requires_grad:
            trainable.append(p)
    return trainable
