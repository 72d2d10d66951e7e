"""A stand-in for DIMNet with the same interface on two tiny convolutions.

Training orchestration (resume, schedules, checkpoints, ranks, stopping) does
not depend on the network's size; with this model core/train.py runs an
iteration in milliseconds instead of a second, so those tests can afford many
runs. Parameter names follow DIMNet's (``conv1_1``, ``refine_pred``) so the
stage/refinement-head checks see what they see in a real checkpoint.
"""

import torch
import torch.nn as nn


class TinyDIM(nn.Module):
    """``DIMNet(refine, skip, conv6_kernel)``'s interface: ``arch``, ``(alpha, refined)`` outputs."""

    def __init__(self, refine=False, skip=True, conv6_kernel=3):
        super().__init__()
        self.refine, self.skip, self.conv6_kernel = refine, skip, conv6_kernel
        self.conv1_1 = nn.Conv2d(4, 2, 3, padding=1)
        self.deconv1 = nn.Conv2d(2, 1, 3, padding=1)
        if refine:
            self.refine_pred = nn.Conv2d(4, 1, 3, padding=1)

    @property
    def arch(self):
        return {"refine": self.refine, "skip": self.skip, "conv6_kernel": self.conv6_kernel}

    def walk(self, x, ops):  # inference calls walk with its operations; this stand-in ignores them
        return self(x)

    def forward(self, x):
        raw = self.deconv1(torch.relu(self.conv1_1(x)))
        alpha = torch.sigmoid(raw)
        if not self.refine:
            return alpha, None
        return alpha, torch.sigmoid(raw + self.refine_pred(torch.cat([x[:, :3], alpha], 1)))


def tiny_build_model(stage=1, skip=True, conv6_kernel=3):
    """core.network.build_model's signature, building a :class:`TinyDIM`."""
    return TinyDIM(refine=stage >= 2, skip=skip, conv6_kernel=conv6_kernel)
