"""The training losses of Deep Image Matting (Xu et al., CVPR 2017, §3.1–3.2; SPEC §7).

Conventions (the keys and scales of a ``core.data`` batch):

* ``pred``: predicted alpha, N×1×H×W float in [0, 1] (the network's sigmoid output).
* ``alpha``: ground-truth alpha, N×1×H×W float in [0, 1] (already divided by 255:
  the ``a = alpha/255`` of SPEC §7).
* ``trimap``: N×1×H×W float or uint8 with values 0/128/255; the unknown region U
  is exactly ``trimap == 128``.
* ``fg``, ``bg``, ``image``: N×3×H×W float 0..255, BGR (colour order does not
  matter: the loss treats the channels alike).

|U| is the unknown-pixel count of the whole batch (every sample together), as in
the reference. ``eps2`` is the ε² = 1e-12 inside the square root (a Charbonnier
loss that keeps the gradient finite at zero error); ``denom_offset`` is the
``+ 1`` of the reference's denominators, which keeps a batch without unknown
pixels finite (its loss is 0, or N·H·W·ε for the stage-0 loss).

All functions are pure and device-agnostic: masks come from comparisons on the
input tensors, results are 0-d tensors on the inputs' device that carry autograd.
"""

import torch

from core.stages import stage_info

EPS2 = 1e-12
DENOM_OFFSET = 1.0
UNKNOWN = 128


def unknown_mask(trimap, dtype=torch.float32):
    """1 where ``trimap == 128`` (the unknown region U), else 0; same shape as ``trimap``."""
    return (trimap == UNKNOWN).to(dtype)


def alpha_loss(pred, alpha, trimap, eps2=EPS2, denom_offset=DENOM_OFFSET):
    """Σ_U sqrt((p − a)² + ε²) / (|U| + 1).

    ``pred``, ``alpha``, ``trimap``: N×1×H×W (see the module docstring).
    Returns a 0-d tensor; for predictions and alphas in [0, 1] it lies in [0, 1).
    """
    mask = unknown_mask(trimap, pred.dtype)
    err = torch.sqrt((pred - alpha) ** 2 + eps2)
    return (err * mask).sum() / (mask.sum() + denom_offset)


def composition_loss(pred, fg, bg, image, trimap, eps2=EPS2, denom_offset=DENOM_OFFSET):
    """Σ_U Σ_channels sqrt((p·fg + (1 − p)·bg − image)² + ε²) / 255 / (|U| + 1) / 3.

    ``pred``: N×1×H×W in [0, 1]; ``fg``, ``bg``, ``image``: N×3×H×W float 0..255
    (the alpha broadcasts over the three channels); ``trimap``: N×1×H×W 0/128/255.
    Returns a 0-d tensor: the mean per-channel compositing error of U on the
    0..1 scale (the ε and the ``+ 1`` aside).
    """
    mask = unknown_mask(trimap, pred.dtype)
    comp = pred * fg + (1.0 - pred) * bg
    err = torch.sqrt((comp - image) ** 2 + eps2) / 255.0
    return (err * mask).sum() / (mask.sum() + denom_offset) / 3.0


def simple_alpha_loss(pred, alpha, trimap, eps2=EPS2, denom_offset=DENOM_OFFSET):
    """Stage 0's loss: the difference is masked to U *before* the square root.

    sqrt(((p − a)·[U])² + ε²) summed over ALL pixels / (|U| + 1): each known pixel
    contributes ε = 1e-6, so the value exceeds :func:`alpha_loss` by
    (N·H·W − |U|)·ε / (|U| + 1). Shapes as :func:`alpha_loss`.
    """
    mask = unknown_mask(trimap, pred.dtype)
    err = torch.sqrt(((pred - alpha) * mask) ** 2 + eps2)
    return err.sum() / (mask.sum() + denom_offset)


def stage_loss(stage, alpha_pred, refined_pred, batch, wl_weight=0.5):
    """The training loss of ``stage`` (SPEC §7) and its named terms.

    Args:
        stage: 0 (simple alpha loss), 1 (wl·alpha + (1 − wl)·composition),
            2 (alpha loss of the refined alpha), 3 (stage 1 + stage 2).
        alpha_pred: the encoder-decoder alpha, N×1×H×W in [0, 1].
        refined_pred: the refined alpha N×1×H×W (stages 2 and 3), else unused.
        batch: dict with ``alpha`` N×1×H×W in [0, 1], ``trimap`` N×1×H×W 0/128/255
            and, for stages 1 and 3, ``fg``, ``bg``, ``image`` N×3×H×W BGR 0..255,
            on the predictions' device.
        wl_weight: wl, the alpha loss's weight in the stage-1 loss.
    Returns:
        dict of 0-d float32 tensors: ``loss`` (to minimise) and the terms the
        reference logs — stage 1: ``alpha``, ``comp``; stage 3: ``stage1``,
        ``stage2``, ``alpha``, ``comp``. Predictions are computed on in float32
        (AMP-safe: ε² = 1e-12 vanishes in float16).
    """
    terms = stage_info(stage).terms  # ValueError for an unknown stage
    alpha, trimap = batch["alpha"], batch["trimap"]
    if "simple" in terms:
        return {"loss": simple_alpha_loss(alpha_pred.float(), alpha, trimap)}
    out, total = {}, 0
    if "comp" in terms:
        p = alpha_pred.float()
        a = alpha_loss(p, alpha, trimap)
        c = composition_loss(p, batch["fg"], batch["bg"], batch["image"], trimap)
        out, total = {"alpha": a, "comp": c}, wl_weight * a + (1.0 - wl_weight) * c
    if "refined" in terms:
        if refined_pred is None:
            raise ValueError(f"stage {stage} needs the refined alpha, but the model has no refinement head")
        stage2 = alpha_loss(refined_pred.float(), alpha, trimap)
        if not out:
            return {"loss": stage2}
        return {"loss": total + stage2, "stage1": total, "stage2": stage2, **out}
    return {"loss": total, **out}
