"""One forward pass on one image, shared by every inference mode (``core.inference``, ``core.tiling``)."""

import torch

from core.ops import run
from core.preprocess import make_input


def forward_once(model, image_bgr, trimap, refined=None, amp=False, precision="fp32", exact=False):
    """One forward pass on an image whose sides are multiples of 32.

    ``image_bgr``: H×W×3 uint8 BGR; ``trimap``: H×W uint8. Returns the alpha,
    float32 H×W in [0, 1]: the refined one when ``refined`` (default: when the
    model gives one, i.e. has a refinement head). ``amp``: float16 autocast on
    CUDA (ignored on the CPU); it changes mattes by a little more than float
    rounding. ``precision``: ``fp32`` (default) or ``bf16``/``fp16``
    (``fp16`` on CUDA only; see ``core.ops.capabilities.check_precision``).
    ``exact``: the exact kernel for every float32 convolution (``core.ops.lean``).
    """
    param = next(model.parameters())
    x = torch.from_numpy(make_input(image_bgr, trimap))[None].to(param.device)
    alpha, refined_alpha = run(model, x, precision=precision, exact=exact, amp=amp)
    del x
    if refined is None:
        refined = refined_alpha is not None
    out = refined_alpha if refined else alpha
    if out is None:
        raise ValueError("the refined alpha was asked for but the model has no refinement head")
    return out[0, 0].float().cpu().numpy()
