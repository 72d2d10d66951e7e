"""The Deep Image Matting network (Xu et al., CVPR 2017, §3.1–3.2; SPEC §2).

A VGG-16 encoder (conv1_1 … conv5_3 plus conv6_1) with max-pooling indices, a
light decoder that unpools with those indices (optionally adding the encoder
feature of the same scale: the "skip" variant of the best released model), a
sigmoid alpha, and an optional refinement head (stages 2 and 3).

Parameter names are exactly the reference's so its released checkpoints load
with ``strict=True``. This file is the network only: :meth:`DIMNet.walk` is its
one traversal, and how each step is computed (the reference's operations, the
lean inference kernels, reduced precision) lives in ``core.ops``.
"""

import torch
import torch.nn as nn

from core.ops.reference import Reference

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
    refinement head. It always runs the reference's operations, with or
    without autograd; inference goes through ``core.ops.run``.
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
        """``(alpha, refined)`` for ``x`` N×4×H×W float (see the class docstring): the reference's operations."""
        return self.walk(x, Reference)

    def walk(self, x, ops):
        """The network, step by step: ``ops(self)`` gives the operations of one pass (``core.ops``).

        Each convolution is named with its ``part`` of the network (encoder,
        bottleneck, decoder, refine), which an executor may compute differently.
        Maps are dropped as soon as nothing needs them, so a lean executor can
        free or overwrite them.
        """
        self.check_input(x)
        op = ops(self)
        h = op.input(x)
        skips, wheres = [], []
        for block in ENCODER_BLOCKS:
            for name, _, _ in block:
                h = op.conv(name, h, "encoder")
            h, where, skip = op.pool(h, self.skip)  # skip: the block's last map (None without skips)
            wheres.append(where)
            skips.append(skip)
        del where, skip  # the lists hold them; popping must free them
        h = op.conv("conv6_1", h, "bottleneck")
        h = op.conv("deconv6_1", h, "bottleneck")
        for name, _, _ in DECODER:
            h = op.unpool(h, wheres.pop(), skips.pop())  # + the skip map of the same scale
            h = op.conv(name, h, "decoder")
        raw = op.predict("deconv1", h)
        del h
        alpha = torch.sigmoid(raw)
        if not self.refine:
            return alpha, None
        r = torch.cat((x[:, :3], alpha), dim=1)
        for name, _, _ in REFINE:
            r = op.conv(name, r, "refine")
        pred = op.predict("refine_pred", r)
        del r
        return alpha, op.refined(raw, pred)


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
