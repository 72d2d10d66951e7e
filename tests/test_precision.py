"""--precision (core.ops.reduced, core.ops.capabilities) and training under --amp on the CPU."""

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import core.ops.capabilities
import core.ops.reduced
from bench.inference import bench_state_dict, synthetic_pair
from core.inference import forward_once, predict_matte
from core.losses import stage_loss
from core.network import DIMNet
from core.ops import run
from core.ops.capabilities import native_bf16_cpu, warn_if_slow_bf16
from core.ops.lean import Lean
from core.ops.reduced import Reduced, reduced_weights
from core.preprocess import make_input
from tests.conftest import ROOT

pytestmark = pytest.mark.usefixtures("one_thread")

ARCHS = {"skip": dict(refine=False, skip=True, conv6_kernel=3),
         "refine": dict(refine=True, skip=False, conv6_kernel=1)}


def bench_model(variant):
    model = DIMNet(**ARCHS[variant])
    model.load_state_dict(bench_state_dict(variant))
    return model.eval()


@pytest.fixture(scope="module")
def skip_model():
    return bench_model("skip")


@pytest.fixture(scope="module")
def pair():
    return synthetic_pair(160, 128, seed=3)


def test_fp32_is_todays_lean_path_bit_for_bit(skip_model, pair, monkeypatch):
    image, trimap = pair
    x = torch.from_numpy(make_input(image, trimap))[None]
    with torch.inference_mode():
        lean = skip_model.walk(x, Lean)[0][0, 0].numpy()
    monkeypatch.setattr(core.ops, "Reduced", None)  # fp32 must never reach the reduced path
    got = forward_once(skip_model, image, trimap, precision="fp32")
    assert got.dtype == np.float32 and np.array_equal(got, lean)
    assert np.array_equal(predict_matte(skip_model, image, trimap, precision="fp32"),
                          predict_matte(skip_model, image, trimap))


@pytest.mark.parametrize("variant", ["skip", "refine"])
def test_bf16_is_within_a_grey_level_of_fp32(variant, skip_model, pair):
    model = skip_model if variant == "skip" else bench_model(variant)
    image, trimap = pair
    fp32 = predict_matte(model, image, trimap).astype(int)
    bf16 = predict_matte(model, image, trimap, precision="bf16").astype(int)
    unknown = trimap == 128
    diff = np.abs(bf16 - fp32)[unknown]
    # the bound of the issue is on the mean; a window whose maximum moves (the encoder runs channels-last,
    # rounding its last bits differently) can shift a few pixels by more
    assert diff.mean() <= 1.0 and diff.max() <= 32
    assert np.count_nonzero(diff) > 0  # it did run in reduced precision
    # the alpha itself comes back float32 in [0, 1]
    alpha = forward_once(model, image, trimap, precision="bf16")
    assert alpha.dtype == np.float32 and alpha.shape == trimap.shape and 0 <= alpha.min() <= alpha.max() <= 1


def test_bf16_decoder_equals_a_float32_decoder_on_bf16_weights(skip_model, pair):
    """The reduced path's algebra (taps product, shifted sums, unpooling) against plain convolutions:
    the encoder in float32, then every later layer in float32 on bfloat16-rounded weights and maps."""
    import torch.nn.functional as F

    from core.network import DECODER, ENCODER_BLOCKS
    from core.ops.lean import pool_with_offsets, unpool_offsets

    image, trimap = pair
    x = torch.from_numpy(make_input(image, trimap))[None]
    m = skip_model

    def rounded(t):
        return t.bfloat16().float()

    with torch.inference_mode():
        # channels-last, as the reduced pass runs the encoder: the same kernels pick the same maxima
        h, skips, offsets = x.contiguous(memory_format=torch.channels_last), [], []
        for block in ENCODER_BLOCKS:
            for name, _, _ in block:
                h = F.relu(getattr(m, name)(h))
            pooled, off = pool_with_offsets(h)
            skips.append(rounded(h))
            offsets.append(off)
            h = pooled
        for name in ("conv6_1", "deconv6_1"):
            c = getattr(m, name)
            h = rounded(F.relu(F.conv2d(rounded(h), rounded(c.weight), rounded(c.bias), padding=c.padding)))
        for name, _, _ in DECODER:
            h = rounded(unpool_offsets(h, offsets.pop(), out=skips.pop()))
            c = getattr(m, name)
            h = rounded(F.relu(F.conv2d(h, rounded(c.weight), rounded(c.bias), padding=c.padding)))
        want = torch.sigmoid(F.conv2d(h, rounded(m.deconv1.weight), rounded(m.deconv1.bias), padding=2))
        got, refined = m.walk(x, Reduced)
    assert refined is None and got.dtype == torch.float32
    assert torch.allclose(got, want, atol=0.02)
    assert (got - want).abs().mean() < 2e-3


def test_weights_are_converted_once_and_again_after_a_change(skip_model):
    model = bench_model("skip")
    x = torch.zeros(1, 4, 32, 32)
    run(model, x, precision="bf16")
    first = reduced_weights(model, torch.bfloat16)
    assert reduced_weights(model, torch.bfloat16) is first
    assert first["deconv1_1"][0].dtype == torch.bfloat16 and "conv1_1" not in first  # encoder stays float32
    kept = first["deconv1_1"][0]
    run(model, x, precision="bf16")
    assert reduced_weights(model, torch.bfloat16)["deconv1_1"][0] is kept  # not converted again
    with torch.no_grad():
        model.deconv1_1.weight.mul_(2)
    again = reduced_weights(model, torch.bfloat16)
    assert again is not first and again == {}
    run(model, x, precision="bf16")
    assert torch.equal(again["deconv1_1"][0], kept * 2)


def test_slow_bf16_warns_once():
    core.ops.capabilities._warned_slow = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert warn_if_slow_bf16(flags={"avx2", "avx512f"}) is True
        assert warn_if_slow_bf16(flags={"avx2", "avx512f"}) is False
    assert len(caught) == 1 and "no native bfloat16" in str(caught[0].message)
    assert native_bf16_cpu({"avx512_bf16"}) and native_bf16_cpu({"amx_bf16"}) and not native_bf16_cpu({"avx2"})


def test_fp16_on_the_cpu_is_refused_in_one_line(tmp_path):
    import cv2

    ckpt = tmp_path / "any.pth"
    ckpt.write_bytes(b"not read: the precision is checked first")
    image, trimap = synthetic_pair(64, 64)
    for folder, picture in (("img", image), ("tri", trimap)):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "a.png"), picture)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "core/test.py", "--resume", str(ckpt), "--imgDir", str(tmp_path / "img"),
                           "--trimapDir", str(tmp_path / "tri"), "--saveDir", str(out), "--precision", "fp16"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--precision fp16 needs a CUDA GPU" in lines[0] and "--precision bf16" in lines[0]
    assert not out.exists()
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        core.ops.capabilities.check_precision("fp16", "cpu")


def test_losses_stay_float32_under_bf16_autocast():
    g = torch.Generator().manual_seed(0)
    alpha = torch.rand(1, 1, 8, 8, generator=g)
    trimap = torch.full((1, 1, 8, 8), 128.0)
    batch = {"alpha": alpha, "trimap": trimap, "image": torch.rand(1, 3, 8, 8, generator=g) * 255,
             "fg": torch.rand(1, 3, 8, 8, generator=g) * 255, "bg": torch.rand(1, 3, 8, 8, generator=g) * 255}
    conv = torch.nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.zero_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pred = conv(alpha)  # bfloat16, as the network's output under autocast
        assert pred.dtype == torch.bfloat16
        terms = stage_loss(0, pred, None, batch)
        exact = stage_loss(0, alpha, alpha, batch)
        terms1 = stage_loss(1, pred, None, batch)
    assert terms["loss"].dtype == torch.float32 and terms1["loss"].dtype == torch.float32
    # a perfect prediction leaves ε = sqrt(1e-12) per pixel, which bfloat16/float16 arithmetic would lose
    assert exact["loss"].item() == pytest.approx(1e-6 * 64 / 65, rel=1e-3)
    want = stage_loss(0, pred.float(), None, batch)["loss"]
    assert terms["loss"].item() == want.item()


def test_training_with_amp_on_the_cpu(tmp_path):
    from core import train
    from tests.test_train import base_args, write_dataset

    d = write_dataset(tmp_path / "data")
    status = train.main(base_args(d, tmp_path / "run", "--nEpochs", "1", "--amp"))
    assert status == 0
    text = (tmp_path / "run" / "train.log").read_text()
    assert "mixed precision (torch.bfloat16)" in text
    losses = [float(part.split(":")[1]) for line in text.splitlines() for part in line.split()
              if part.startswith("Loss:")]
    assert losses and all(np.isfinite(losses))


def test_amp_dtype_fp16_on_the_cpu_is_a_user_error():
    from core.train import amp_dtype
    from core.utils import UserError

    assert amp_dtype(None, torch.device("cpu")) == torch.bfloat16
    assert amp_dtype(None, torch.device("cuda")) == torch.float16
    assert amp_dtype("bf16", torch.device("cuda")) == torch.bfloat16
    with pytest.raises(UserError, match="--amp_dtype fp16 needs --cuda"):
        amp_dtype("fp16", torch.device("cpu"))


def test_gpu_check_quick_on_the_cpu():
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--device", "cpu", "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = proc.stdout
    for row in ("infer fp32", "infer bf16", "infer reference", "train fp32", "train amp", "train loader", "ddp gloo"):
        assert row in out, out
    assert "FAILED" not in out


def test_fused_conv_relu_equals_conv_then_relu():
    g = torch.Generator().manual_seed(1)
    cl = torch.channels_last
    x = torch.randn(1, 8, 40, 48, generator=g).contiguous(memory_format=cl)
    w = torch.randn(16, 8, 3, 3, generator=g).contiguous(memory_format=cl)
    b = torch.randn(16, generator=g)
    with torch.inference_mode():
        for dtype in (torch.float32, torch.bfloat16):
            got = core.ops.reduced._conv(x.to(dtype), w.to(dtype), b.to(dtype))
            want = torch.nn.functional.conv2d(x.to(dtype), w.to(dtype), b.to(dtype), padding=1).relu_()
            assert got.dtype == dtype and torch.equal(got, want)
