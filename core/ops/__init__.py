"""How the network runs: the operations ``DIMNet.walk`` is given, and the one entry inference calls.

* :mod:`core.ops.reference`: the reference's operations (``DIMNet.forward``:
  training, export, anything that needs autograd).
* :mod:`core.ops.lean`: memory-lean inference, float32 (``exact`` for the
  reference's kernels everywhere).
* :mod:`core.ops.reduced`: the decoder in bfloat16/float16.
* :mod:`core.ops.capabilities`: CPU flags and which precision runs where.
"""

import functools

import torch

from core.ops.capabilities import DTYPES
from core.ops.lean import Lean
from core.ops.reduced import Reduced


def run(model, x, precision="fp32", exact=False, amp=False):
    """``(alpha, refined)`` of ``model`` (a ``DIMNet``) for ``x`` N×4×H×W, under ``torch.inference_mode``.

    ``precision``: ``fp32`` (the lean operations; ``exact``: the exact kernel for
    every convolution, bit for bit ``model(x)``) or ``bf16``/``fp16``
    (:mod:`core.ops.reduced`; ``exact`` and ``amp`` do not apply). ``amp``:
    float16 autocast around the lean pass on CUDA (ignored elsewhere).
    """
    with torch.inference_mode():
        if precision != "fp32":
            return model.walk(x, functools.partial(Reduced, dtype=DTYPES[precision]))
        with torch.autocast(x.device.type, dtype=torch.float16, enabled=amp and x.device.type == "cuda"):
            return model.walk(x, functools.partial(Lean, exact=exact))
