"""The reference's operations (SPEC §2): what ``DIMNet.forward`` runs, training differentiates and export traces.

Max-pooling keeps int64 indices, ``max_unpool2d`` puts each value back where
its maximum was, ReLU and the skip sums allocate new maps. Nothing is
overwritten in place, so autograd can keep whatever its backward pass needs.
"""

import torch
import torch.nn.functional as F


class Reference:
    """One pass of the reference's operations over ``model`` (see ``DIMNet.walk`` for the calls)."""

    def __init__(self, model):
        self.model = model

    def input(self, x):
        return x

    def conv(self, name, h, part):
        """Layer ``name`` then ReLU; ``part`` (where the layer sits) changes nothing here."""
        return F.relu(getattr(self.model, name)(h))

    def predict(self, name, h):
        """A 1-channel prediction layer, no activation."""
        return getattr(self.model, name)(h)

    def pool(self, h, keep):
        """2×2 max-pooling: ``(pooled, indices, skip)``, ``skip`` = ``h`` if ``keep`` else None."""
        pooled, indices = F.max_pool2d(h, kernel_size=2, stride=2, return_indices=True)
        return pooled, indices, (h if keep else None)

    def unpool(self, h, indices, skip):
        h = F.max_unpool2d(h, indices, kernel_size=2, stride=2)
        return h if skip is None else h + skip

    def refined(self, raw, pred):
        """The refined alpha: sigmoid of the decoder's logit plus the refinement head's."""
        return torch.sigmoid(raw + pred)
