"""An independent, deliberately plain transcription of the reference pipeline.

Written from SPEC §2 (network) and §9 (inference) only, without importing
anything from ``core``: it is the oracle the fidelity tests compare the
project's optimised code against, and the baseline a benchmark can time.

* :class:`ReferenceDIM` — the network as the reference writes it: every layer
  called by name, out-of-place ReLUs and additions, every intermediate kept.
  Same parameter names as the released checkpoints, so any DIM state dict loads.
* :func:`reference_from_state_dict` / :func:`reference_forward` — a
  :class:`ReferenceDIM` holding a state dict, and one forward pass with it.
* :func:`init_unsaturated` — random weights whose mattes are not saturated;
  :func:`assert_same_matte` — how close two implementations' 8-bit mattes must be.
* :func:`reference_input` — the reference's input building: torchvision
  ``ToTensor`` + ``Normalize`` on the RGB image, then ``trimap / 255.``.
* :func:`reference_whole`, :func:`reference_crop`, :func:`reference_resize` —
  the three deploy modes; :func:`reference_predict` adds the forcing of the
  known regions and the truncating cast to uint8.
"""

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision import transforms

__all__ = ["ReferenceDIM", "assert_same_matte", "init_unsaturated", "reference_from_state_dict", "reference_forward", "reference_input", "reference_inference_once",
           "reference_whole", "reference_crop", "reference_resize", "reference_predict"]


class ReferenceDIM(nn.Module):
    """The reference network (SPEC §2), written out layer by layer.

    Args:
        stage: 0–3; stages 2 and 3 have the refinement head and return the
            refined alpha as the second output (0 for stages 0/1, as the
            reference returns).
        skip: add conv{1..5}_{last} (after ReLU) to the unpooled decoder maps.
        conv6_kernel: 3 (pad 1) or 1 (pad 0).
    """

    def __init__(self, stage=1, skip=True, conv6_kernel=3):
        super().__init__()
        self.stage = stage
        self.skip = skip
        self.conv1_1 = nn.Conv2d(4, 64, kernel_size=3, padding=1, bias=True)
        self.conv1_2 = nn.Conv2d(64, 64, kernel_size=3, padding=1, bias=True)
        self.conv2_1 = nn.Conv2d(64, 128, kernel_size=3, padding=1, bias=True)
        self.conv2_2 = nn.Conv2d(128, 128, kernel_size=3, padding=1, bias=True)
        self.conv3_1 = nn.Conv2d(128, 256, kernel_size=3, padding=1, bias=True)
        self.conv3_2 = nn.Conv2d(256, 256, kernel_size=3, padding=1, bias=True)
        self.conv3_3 = nn.Conv2d(256, 256, kernel_size=3, padding=1, bias=True)
        self.conv4_1 = nn.Conv2d(256, 512, kernel_size=3, padding=1, bias=True)
        self.conv4_2 = nn.Conv2d(512, 512, kernel_size=3, padding=1, bias=True)
        self.conv4_3 = nn.Conv2d(512, 512, kernel_size=3, padding=1, bias=True)
        self.conv5_1 = nn.Conv2d(512, 512, kernel_size=3, padding=1, bias=True)
        self.conv5_2 = nn.Conv2d(512, 512, kernel_size=3, padding=1, bias=True)
        self.conv5_3 = nn.Conv2d(512, 512, kernel_size=3, padding=1, bias=True)
        if conv6_kernel == 3:
            self.conv6_1 = nn.Conv2d(512, 512, kernel_size=3, padding=1, bias=True)
        else:
            self.conv6_1 = nn.Conv2d(512, 512, kernel_size=1, padding=0, bias=True)
        self.deconv6_1 = nn.Conv2d(512, 512, kernel_size=1, bias=True)
        self.deconv5_1 = nn.Conv2d(512, 512, kernel_size=5, padding=2, bias=True)
        self.deconv4_1 = nn.Conv2d(512, 256, kernel_size=5, padding=2, bias=True)
        self.deconv3_1 = nn.Conv2d(256, 128, kernel_size=5, padding=2, bias=True)
        self.deconv2_1 = nn.Conv2d(128, 64, kernel_size=5, padding=2, bias=True)
        self.deconv1_1 = nn.Conv2d(64, 64, kernel_size=5, padding=2, bias=True)
        self.deconv1 = nn.Conv2d(64, 1, kernel_size=5, padding=2, bias=True)
        if stage >= 2:
            self.refine_conv1 = nn.Conv2d(4, 64, kernel_size=3, padding=1, bias=True)
            self.refine_conv2 = nn.Conv2d(64, 64, kernel_size=3, padding=1, bias=True)
            self.refine_conv3 = nn.Conv2d(64, 64, kernel_size=3, padding=1, bias=True)
            self.refine_pred = nn.Conv2d(64, 1, kernel_size=3, padding=1, bias=True)

    def forward(self, x):
        # Encoder.
        x11 = F.relu(self.conv1_1(x))
        x12 = F.relu(self.conv1_2(x11))
        x1p, id1 = F.max_pool2d(x12, kernel_size=(2, 2), stride=(2, 2), return_indices=True)

        x21 = F.relu(self.conv2_1(x1p))
        x22 = F.relu(self.conv2_2(x21))
        x2p, id2 = F.max_pool2d(x22, kernel_size=(2, 2), stride=(2, 2), return_indices=True)

        x31 = F.relu(self.conv3_1(x2p))
        x32 = F.relu(self.conv3_2(x31))
        x33 = F.relu(self.conv3_3(x32))
        x3p, id3 = F.max_pool2d(x33, kernel_size=(2, 2), stride=(2, 2), return_indices=True)

        x41 = F.relu(self.conv4_1(x3p))
        x42 = F.relu(self.conv4_2(x41))
        x43 = F.relu(self.conv4_3(x42))
        x4p, id4 = F.max_pool2d(x43, kernel_size=(2, 2), stride=(2, 2), return_indices=True)

        x51 = F.relu(self.conv5_1(x4p))
        x52 = F.relu(self.conv5_2(x51))
        x53 = F.relu(self.conv5_3(x52))
        x5p, id5 = F.max_pool2d(x53, kernel_size=(2, 2), stride=(2, 2), return_indices=True)

        x61 = F.relu(self.conv6_1(x5p))

        # Decoder.
        x61d = F.relu(self.deconv6_1(x61))

        x5d = F.max_unpool2d(x61d, id5, kernel_size=2, stride=2)
        if self.skip:
            x5d = x5d + x53
        x51d = F.relu(self.deconv5_1(x5d))

        x4d = F.max_unpool2d(x51d, id4, kernel_size=2, stride=2)
        if self.skip:
            x4d = x4d + x43
        x41d = F.relu(self.deconv4_1(x4d))

        x3d = F.max_unpool2d(x41d, id3, kernel_size=2, stride=2)
        if self.skip:
            x3d = x3d + x33
        x31d = F.relu(self.deconv3_1(x3d))

        x2d = F.max_unpool2d(x31d, id2, kernel_size=2, stride=2)
        if self.skip:
            x2d = x2d + x22
        x21d = F.relu(self.deconv2_1(x2d))

        x1d = F.max_unpool2d(x21d, id1, kernel_size=2, stride=2)
        if self.skip:
            x1d = x1d + x12
        x12d = F.relu(self.deconv1_1(x1d))

        raw_alpha = self.deconv1(x12d)
        pred_mattes = torch.sigmoid(raw_alpha)

        if self.stage <= 1:
            return pred_mattes, 0

        # Refinement head: normalised RGB (first 3 input channels) + alpha.
        refine0 = torch.cat((x[:, :3, :, :], pred_mattes), 1)
        refine1 = F.relu(self.refine_conv1(refine0))
        refine2 = F.relu(self.refine_conv2(refine1))
        refine3 = F.relu(self.refine_conv3(refine2))
        pred_refine = self.refine_pred(refine3)
        pred_alpha = torch.sigmoid(raw_alpha + pred_refine)
        return pred_mattes, pred_alpha


_DECODER_CONVS = ("deconv5_1", "deconv4_1", "deconv3_1", "deconv2_1", "deconv1_1")


def init_unsaturated(model, seed):
    """Fill every conv of a DIM network (this one or ``core.network.DIMNet``) with random
    weights whose mattes use the whole 0..255 range; returns the model in eval mode.

    PyTorch's default init gives a near-constant alpha, against which a fidelity
    test could not fail. Here: He-normal weights, N(0, 0.1) biases, and without
    skip connections the decoder convolutions doubled (each unpooling quarters
    the signal's energy). Deterministic for a given ``seed``.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, nn.Conv2d):
                fan_in = mod.in_channels * mod.kernel_size[0] * mod.kernel_size[1]
                gain = 2.0 if name in _DECODER_CONVS and not model.skip else 1.0
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5 * gain)
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=gen) * 0.1)
    return model.eval()


def reference_from_state_dict(model_state_dict, stage, skip, conv6_kernel):
    """A :class:`ReferenceDIM` in eval mode holding ``model_state_dict`` (strict load).

    Built on the meta device and given the state dict's tensors, so no time is
    spent on a random initialisation that would be overwritten.
    """
    with torch.device("meta"):
        net = ReferenceDIM(stage=stage, skip=skip, conv6_kernel=conv6_kernel)
    net.load_state_dict(model_state_dict, strict=True, assign=True)
    return net.eval()


def reference_forward(model_state_dict, x, stage, skip, conv6_kernel):
    """Build a :class:`ReferenceDIM`, load ``model_state_dict`` strictly and run ``x`` once.

    ``x``: N×4×H×W float32 (H, W multiples of 32). Returns ``(alpha, refined)``
    as the reference does (``refined`` is 0 for stages 0/1), without gradients.
    """
    net = reference_from_state_dict(model_state_dict, stage=stage, skip=skip, conv6_kernel=conv6_kernel)
    with torch.no_grad():
        return net(x)


_NORMALIZE = transforms.Compose([
    transforms.ToTensor(),
    transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
])


def reference_input(image_bgr, trimap):
    """1×4×H×W: ToTensor+Normalize of the RGB image, then trimap/255 (uint8 BGR, uint8 trimap)."""
    rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
    tensor_img = _NORMALIZE(rgb).unsqueeze(0)
    tensor_trimap = torch.from_numpy(trimap.astype(np.float32)[np.newaxis, np.newaxis, :, :])
    return torch.cat((tensor_img, tensor_trimap / 255.), 1)


def reference_inference_once(net, image_bgr, trimap, stage):
    """One forward pass; the stage-1 alpha for stages 0/1, the refined one for 2/3. float32 H×W."""
    x = reference_input(image_bgr, trimap)
    with torch.no_grad():
        if stage <= 1:
            pred_mattes, _ = net(x)
        else:
            _, pred_mattes = net(x)
    return pred_mattes.data.cpu().numpy()[0, 0, :, :]


def reference_crop(net, image_bgr, trimap, size_h, size_w, stage):
    h, w = trimap.shape
    origin_pred_mattes = np.zeros((h, w), dtype=np.float32)
    marks = np.zeros((h, w), dtype=np.float32)
    for start_h in range(0, h, size_h):
        end_h = start_h + size_h
        for start_w in range(0, w, size_w):
            end_w = start_w + size_w
            crop_img = image_bgr[start_h:end_h, start_w:end_w, :]
            crop_trimap = trimap[start_h:end_h, start_w:end_w]
            crop_origin_h = crop_img.shape[0]
            crop_origin_w = crop_img.shape[1]
            if len(np.where(crop_trimap == 128)[0]) <= 0:
                continue
            if crop_origin_h != size_h or crop_origin_w != size_w:
                crop_img = cv2.resize(crop_img, (size_w, size_h), interpolation=cv2.INTER_LINEAR)
                crop_trimap = cv2.resize(crop_trimap, (size_w, size_h), interpolation=cv2.INTER_LINEAR)
            pred_mattes = reference_inference_once(net, crop_img, crop_trimap, stage)
            if crop_origin_h != size_h or crop_origin_w != size_w:
                pred_mattes = cv2.resize(pred_mattes, (crop_origin_w, crop_origin_h), interpolation=cv2.INTER_LINEAR)
            origin_pred_mattes[start_h:end_h, start_w:end_w] += pred_mattes
            marks[start_h:end_h, start_w:end_w] += 1
    marks[marks <= 0] = 1.
    origin_pred_mattes /= marks
    return origin_pred_mattes


def reference_resize(net, image_bgr, trimap, size_h, size_w, stage):
    h, w = trimap.shape
    scale_img = cv2.resize(image_bgr, (size_w, size_h), interpolation=cv2.INTER_LINEAR)
    scale_trimap = cv2.resize(trimap, (size_w, size_h), interpolation=cv2.INTER_LINEAR)
    pred_mattes = reference_inference_once(net, scale_img, scale_trimap, stage)
    return cv2.resize(pred_mattes, (w, h), interpolation=cv2.INTER_LINEAR)


def reference_whole(net, image_bgr, trimap, max_size, stage):
    h, w = trimap.shape
    new_h = min(max_size, h - (h % 32))
    new_w = min(max_size, w - (w % 32))
    scale_img = cv2.resize(image_bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    scale_trimap = cv2.resize(trimap, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    pred_mattes = reference_inference_once(net, scale_img, scale_trimap, stage)
    return cv2.resize(pred_mattes, (w, h), interpolation=cv2.INTER_LINEAR)


def reference_predict(net, image, trimap, mode="whole", max_size=1600, size_h=320, size_w=320, stage=1,
                      return_float=False):
    """The reference deploy pipeline for one image: the uint8 H×W matte it writes.

    ``image``: BGR uint8 H×W×3; ``trimap``: uint8 H×W (channel 0 of a 3-channel
    read). With ``return_float`` also returns the forced float prediction the
    reference scores its printed SAD/MSE on: ``(matte_u8, alpha_float)``.
    """
    net.eval()
    if mode == "whole":
        origin_pred_mattes = reference_whole(net, image, trimap, max_size, stage)
    elif mode == "crop":
        origin_pred_mattes = reference_crop(net, image, trimap, size_h, size_w, stage)
    elif mode == "resize":
        origin_pred_mattes = reference_resize(net, image, trimap, size_h, size_w, stage)
    else:
        raise ValueError(mode)
    origin_pred_mattes[trimap == 255] = 1.
    origin_pred_mattes[trimap == 0] = 0.
    matte = (origin_pred_mattes * 255).astype(np.uint8)
    return (matte, origin_pred_mattes) if return_float else matte


def assert_same_matte(ours, expected, context=""):
    """Assert two uint8 mattes differ by at most one grey level anywhere (the project's promise).

    The project's inference computes every convolution before a max-pool with
    the reference's kernel, so pooling picks the same maxima; the decoder may
    use faster kernels whose float rounding (~1e-6) can move a truncated value
    by one level, never more, and only for values that sit on a level's
    edge (so ≥ 95% of pixels stay identical). Pipeline errors (rounding instead
    of truncation, a wrong resize, tile, skip, stage or input scaling) break
    these bounds.
    """
    ours, expected = np.asarray(ours), np.asarray(expected)
    assert ours.dtype == np.uint8 and ours.shape == expected.shape, (context, ours.dtype, ours.shape, expected.shape)
    diff = np.abs(ours.astype(np.int64) - expected.astype(np.int64))
    stats = dict(identical=float((diff == 0).mean()), max=int(diff.max()))
    assert stats["max"] <= 1 and stats["identical"] >= 0.95, (context, stats)
