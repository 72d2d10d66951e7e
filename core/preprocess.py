"""The network's input encoding (SPEC §2), shared by training data and inference.

The reference builds its input with torchvision's ``ToTensor`` (uint8 → float32
/ 255) and ``Normalize`` on the RGB image, then appends ``trimap / 255``; this
module does the same arithmetic in NumPy float32 so both paths agree bit for bit.
"""

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)  # RGB order
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def normalize_image(image_bgr):
    """BGR uint8 (or float 0..255) H×W×3 → normalised RGB float32 3×H×W."""
    rgb = np.ascontiguousarray(image_bgr[:, :, ::-1], dtype=np.float32) / np.float32(255)
    rgb = (rgb - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def make_input(image_bgr, trimap):
    """Network input, float32 4×H×W: normalised RGB, then trimap/255.

    ``image_bgr``: H×W×3 BGR, uint8 or float 0..255. ``trimap``: H×W, values
    0/128/255 (uint8 or float); unknown therefore enters as 128/255, as in the
    reference and the released checkpoints.
    """
    if image_bgr.shape[:2] != trimap.shape[:2]:
        raise ValueError(f"image {image_bgr.shape[:2]} and trimap {trimap.shape[:2]} differ in size")
    tri = trimap.astype(np.float32)[None] / np.float32(255)
    return np.concatenate([normalize_image(image_bgr), tri], axis=0)
