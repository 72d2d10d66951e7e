"""SAD and MSE written out from their definitions (SPEC, the official evaluation code), for
checking that reports carry the right numbers without asking core.metrics again."""

import numpy as np


def sad_mse_by_hand(pred, gt, trimap):
    """(SAD, MSE) of uint8 mattes over the unknown region (trimap == 128), in float64.

    SAD = Σ|pred − gt| / 255 / 1000; MSE = Σ((pred − gt) / 255)² / #unknown (NaN without unknown pixels).
    """
    unknown = trimap == 128
    diff = (pred.astype(np.float64) - gt.astype(np.float64))[unknown] / 255
    mse = float((diff ** 2).sum() / unknown.sum()) if unknown.any() else float("nan")
    return float(np.abs(diff).sum() / 1000), mse
