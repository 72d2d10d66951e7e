"""Subject choice for a photo without a trimap: one rule (core.trimap) for core/demo.py and tools/app.py.

Each test runs both paths, the demo's (:func:`core.trimap.photo_trimap` on
files) and the page's (:func:`tools.app.automatic_trimap` on arrays), against
an expectation built independently: the mask file itself, a shape, and
torchvision's own transforms applied to the photo as PIL reads it in RGB.
"""

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from core.segment import Segmenter
from core.trimap import photo_trimap, trimap_from_mask, width_from_frac
from core.utils import UserError
from tools import app

H, W = 48, 64
PERSON = 15  # the "person" class of torchvision's VOC-category segmenters


def disc(h=H, w=W, r=14):
    yy, xx = np.mgrid[:h, :w]
    return np.where(np.hypot(yy - h / 2, xx - w / 2) < r, 255, 0).astype(np.uint8)


def colour_photo(h=H, w=W):
    """BGR uint8 with three different channels, so any swap of the colour order shows."""
    rng = np.random.default_rng(4)
    return np.dstack([rng.integers(0, 80, (h, w)), rng.integers(90, 170, (h, w)),
                      rng.integers(180, 256, (h, w))]).astype(np.uint8)


class Recorder:
    """A stand-in segmenter: records what it is handed and answers a disc."""

    name = "recorder"

    def __init__(self):
        self.seen = []

    def __call__(self, bgr):
        self.seen.append(bgr.copy())
        return disc(*bgr.shape[:2])

    def describe_classes(self):
        return "person"


def test_opaque_alpha_channel_is_not_the_subject(tmp_path):
    """A fully opaque RGBA photo: its alpha says nothing, so the mask (or the segmenter) gives the subject."""
    bgr, mask = colour_photo(), disc()
    rgba = np.dstack([bgr, np.full((H, W), 255, np.uint8)])
    cv2.imwrite(str(tmp_path / "opaque.png"), rgba)
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    expected = trimap_from_mask(mask, width_from_frac((H, W), 0.01))
    # demo, with a mask and with a segmenter
    trimap, source = photo_trimap(str(tmp_path / "opaque.png"), str(tmp_path / "mask.png"))
    assert source == f"mask {tmp_path / 'mask.png'}" and np.array_equal(trimap, expected)
    seg = Recorder()
    trimap, source = photo_trimap(str(tmp_path / "opaque.png"), None, seg)
    assert source.startswith("recorder") and np.array_equal(trimap, expected) and len(seg.seen) == 1
    # the page, the same photo (as stored) with the mask uploaded, and without
    trimap, note = app.automatic_trimap(rgba, mask, app.AUTO)
    assert note.startswith("the uploaded mask") and np.array_equal(trimap, expected)
    seg = Recorder()
    trimap, note = app.automatic_trimap(rgba, None, app.AUTO, segmenter=seg)
    assert note.startswith("the segmenter (recorder)") and np.array_equal(trimap, expected) and len(seg.seen) == 1
    # a translucent alpha channel is the subject, in both, ahead of the mask
    rgba[..., 3] = 255 - mask
    cv2.imwrite(str(tmp_path / "cutout.png"), rgba)
    inverse = trimap_from_mask(255 - mask, width_from_frac((H, W), 0.01))
    trimap, source = photo_trimap(str(tmp_path / "cutout.png"), str(tmp_path / "mask.png"))
    assert source == "its alpha channel" and np.array_equal(trimap, inverse)
    trimap, note = app.automatic_trimap(rgba, mask, app.AUTO)
    assert note.startswith("the photo's alpha channel") and np.array_equal(trimap, inverse)


def test_mask_of_another_size_is_refused(tmp_path):
    bgr = colour_photo()
    cv2.imwrite(str(tmp_path / "photo.png"), bgr)
    small = disc(H, W - 8)
    cv2.imwrite(str(tmp_path / "small.png"), small)
    with pytest.raises(UserError) as err:
        photo_trimap(str(tmp_path / "photo.png"), str(tmp_path / "small.png"))
    assert str(err.value) == (f"{tmp_path / 'small.png'}: mask is {W - 8}×{H} but its image "
                              f"{tmp_path / 'photo.png'} is {W}×{H}")
    with pytest.raises(UserError) as err:
        app.automatic_trimap(bgr, small, app.AUTO, name="photo p.png")
    assert str(err.value) == f"the mask or trimap is {W - 8}×{H} but photo p.png is {W}×{H}"
    with pytest.raises(UserError, match="but photo p.png is"):
        app.automatic_trimap(bgr, small, app.UPLOAD, name="photo p.png")


def capture_segmenter(monkeypatch):
    """A real :class:`Segmenter` (torchvision's transforms, its own preprocessing) whose network records its input."""
    seg = Segmenter("lraspp_mobilenet_v3_large", "person")
    inputs = []

    class Net(torch.nn.Module):
        def forward(self, x):
            inputs.append(x.clone())
            logits = torch.zeros(1, len(seg.weights.meta["categories"]), *x.shape[2:])
            logits[0, PERSON, :, : x.shape[3] // 2] = 10  # left half: a person
            return {"out": logits}

    monkeypatch.setattr(seg, "load", lambda: Net().eval())
    return seg, inputs


def test_segmenter_is_handed_rgb(tmp_path, monkeypatch):
    """What the segmenter's network sees equals torchvision's transforms of the RGB photo (its weights expect RGB)."""
    path = tmp_path / "photo.png"
    cv2.imwrite(str(path), colour_photo())
    seg, inputs = capture_segmenter(monkeypatch)
    rgb = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)  # PIL: RGB, not OpenCV
    expected = seg.weights.transforms()(rgb).unsqueeze(0)
    _, source = photo_trimap(str(path), None, seg)
    assert source == "lraspp_mobilenet_v3_large (person)"
    stored = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    _, note = app.automatic_trimap(stored, None, app.AUTO, segmenter=seg)
    assert note.startswith("the segmenter (lraspp_mobilenet_v3_large)")
    assert len(inputs) == 2
    for seen in inputs:
        assert seen.shape == expected.shape and torch.equal(seen, expected)
    # the order matters here: the same photo in BGR would be another input
    assert not torch.equal(seg.weights.transforms()(rgb.flip(0)).unsqueeze(0), expected)
