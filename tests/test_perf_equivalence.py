"""The lean inference operations (core.ops.lean and its building blocks) against plain PyTorch.

* pooling offsets / unpooling against ``F.max_pool2d(return_indices=True)`` /
  ``F.max_unpool2d`` on maps full of ties, bit for bit;
* row-strip convolutions against one ``conv(x)`` call, bit for bit (exact) or to
  float rounding (fast kernels);
* the whole forward, every architecture variant, against the autograd path and
  the independent transcription in ``tests/reference_impl.py``: bit for bit
  when every convolution uses the exact kernel, to float rounding with the
  fast decoder kernels.
"""

import os
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from reference_impl import ReferenceDIM  # noqa: E402

import core.ops.lean as network  # noqa: E402
from core.inference import setup_backend  # noqa: E402
from core.network import DIMNet  # noqa: E402
from core.ops import run  # noqa: E402
from core.ops.lean import Lean, conv_lean, pool_with_offsets, unpool_offsets  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def small_strips(monkeypatch):
    """Strips of 32 rows even for the tiny maps of these tests."""
    monkeypatch.setattr(network, "STRIP_BYTES", 1)


def he_init(model, seed):
    """He-normal weights, small biases: activations keep their size, the sigmoid is not saturated."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.Conv2d):
                fan_in = mod.in_channels * mod.kernel_size[0] * mod.kernel_size[1]
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=gen) * 0.01)
        for name in ("deconv1", "refine_pred"):  # spread the tiny test images' alpha over (0, 1)
            if hasattr(model, name):
                getattr(model, name).weight.mul_(5)
    return model.eval()


# --------------------------------------------------------------------------- #
# Pooling and unpooling

def tied_map(shape, memory_format, seed=0):
    """Values 0, 1, 2 only, a quarter of the 2×2 windows all zero: ties everywhere."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 3, shape, generator=gen).float()
    x[..., :4, :] = 0
    return x.contiguous(memory_format=memory_format)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_pool_offsets_match_max_pool_indices(memory_format):
    x = tied_map((2, 5, 12, 10), memory_format)
    pooled, offsets = pool_with_offsets(x)
    expected, indices = F.max_pool2d(x, 2, 2, return_indices=True)
    assert torch.equal(pooled, expected)
    assert offsets.dtype == torch.int8
    # offset → the flat index max_pool2d reports: (2i + dy)·W + 2j + dx
    i = torch.arange(6).view(6, 1)
    j = torch.arange(5).view(1, 5)
    dy, dx = offsets.long() // 2, offsets.long() % 2
    assert torch.equal((2 * i + dy) * 10 + 2 * j + dx, indices)
    # the all-zero windows go to the first position, as max_pool2d's do
    assert (offsets[..., :2, :] == 0).all()


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("into_skip", [False, True])
def test_unpool_offsets_matches_max_unpool(memory_format, into_skip):
    x = tied_map((2, 3, 8, 14), memory_format, seed=1)
    pooled, offsets = pool_with_offsets(x)
    _, indices = F.max_pool2d(x, 2, 2, return_indices=True)
    h = torch.randn(pooled.shape, generator=torch.Generator().manual_seed(2)).contiguous(memory_format=memory_format)
    expected = F.max_unpool2d(h, indices, 2, 2)
    if into_skip:
        skip = torch.randn(x.shape, generator=torch.Generator().manual_seed(3)).contiguous(memory_format=memory_format)
        expected = expected + skip
        out = unpool_offsets(h, offsets, out=skip)
        assert out is skip  # written in place
    else:
        out = unpool_offsets(h, offsets)
        assert out.is_contiguous(memory_format=memory_format)
    assert torch.equal(out, expected)


# --------------------------------------------------------------------------- #
# Convolutions in row strips

@pytest.fixture
def conv_calls(monkeypatch):
    """Counts the convolution calls conv_lean makes: one per row strip."""
    calls = []
    real = network._conv_call

    def counted(conv, x, pad_h, impl):
        calls.append(x.shape[2])
        return real(conv, x, pad_h, impl)

    monkeypatch.setattr(network, "_conv_call", counted)
    return calls


@pytest.mark.parametrize("cin, cout, k", [(4, 64, 3), (64, 32, 3), (32, 16, 5), (16, 16, 1)])
def test_exact_strips_equal_one_call(small_strips, conv_calls, cin, cout, k):
    conv = he_init(nn.Conv2d(cin, cout, k, padding=k // 2), seed=cin + k)
    # 160 columns: even 4 input channels stay above the native-conv threshold in 33-row strips
    x = torch.randn(1, cin, 100, 160, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(conv_lean(conv, x), F.relu(conv(x)))
        assert conv_calls == [33 + 2 * (k // 2), 33 + 2 * (k // 2), 34 + 2 * (k // 2)]  # 3 strips + halo rows
        assert torch.equal(conv_lean(conv, x, relu=False), conv(x))
        assert len(conv_calls) == 6


@pytest.mark.parametrize("cin, cout, k", [(32, 16, 5), (16, 16, 3), (64, 1, 5), (64, 1, 3), (8, 3, 5)])
@pytest.mark.parametrize("strips", [False, True])
def test_fast_kernels_agree_to_rounding(monkeypatch, conv_calls, cin, cout, k, strips):
    if strips:
        monkeypatch.setattr(network, "STRIP_BYTES", 1)
    conv = he_init(nn.Conv2d(cin, cout, k, padding=k // 2), seed=cin * k)
    x = torch.randn(2, cin, 70, 72, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        got = conv_lean(conv, x, relu=False, exact=False)
        expected = conv(x)
    assert len(conv_calls) == (2 if strips else 1)  # two 35-row strips, or one call
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    assert not torch.equal(got, torch.zeros_like(got))


def test_taps_kernel_handles_asymmetric_padding():
    conv = he_init(nn.Conv2d(6, 2, 5, padding=2), seed=5)
    x = torch.randn(1, 6, 11, 9, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        got = network._conv_taps(conv, x, 0, 2)  # no vertical padding: 7 output rows
        expected = F.conv2d(x, conv.weight, conv.bias, padding=(0, 2))
    assert got.shape == (1, 2, 7, 9)
    assert torch.allclose(got, expected, atol=1e-5)


# --------------------------------------------------------------------------- #
# The whole forward

ARCHS = [(skip, k, refine) for skip in (True, False) for k in (3, 1) for refine in (False, True)]


@pytest.mark.parametrize("skip, conv6_kernel, refine", ARCHS)
def test_lean_forward_equals_reference(small_strips, skip, conv6_kernel, refine):
    model = he_init(DIMNet(refine=refine, skip=skip, conv6_kernel=conv6_kernel), seed=ARCHS.index((skip, conv6_kernel, refine)))
    ref = ReferenceDIM(stage=2 if refine else 1, skip=skip, conv6_kernel=conv6_kernel).eval()
    ref.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(1, 4, 96, 64, generator=torch.Generator().manual_seed(3))
    levels = torch.tensor([0.0, 128.0, 255.0]) / 255  # a trimap channel
    x[:, 3] = levels[torch.randint(0, 3, (96, 64), generator=torch.Generator().manual_seed(4))]

    # autograd on: the reference's own operations, bit for bit
    a_grad, r_grad = model(x)
    with torch.no_grad():
        a_ref, r_ref = ref(x)
    assert torch.equal(a_grad.detach(), a_ref)
    # the fast decoder kernels: float rounding only
    a_fast, r_fast = run(model, x)
    assert torch.allclose(a_fast, a_ref, atol=1e-4)
    assert 0.02 < a_ref.std()  # the test could fail: the alpha is far from constant
    # exact kernels everywhere: pooling offsets, unpooling into the skip maps, strips
    # and in-place ops change nothing at all
    a_exact, r_exact = run(model, x, exact=True)
    assert torch.equal(a_exact, a_ref)
    if refine:
        assert torch.equal(r_grad.detach(), r_ref)
        assert torch.allclose(r_fast, r_ref, atol=1e-4)
        assert torch.equal(r_exact, r_ref)
    else:
        assert r_grad is r_fast is r_exact is None


def test_lean_forward_batch_and_noncontiguous_input(small_strips):
    model = he_init(DIMNet(refine=True, skip=True), seed=9)
    x = torch.randn(2, 64, 96, 4, generator=torch.Generator().manual_seed(5)).permute(0, 3, 2, 1)  # N×4×96×64, strided
    with torch.no_grad():
        ref = model(x)
    lean = run(model, x)
    for a, b in zip(ref, lean):
        assert torch.allclose(a, b, atol=1e-4)


def test_training_path_keeps_gradients_and_inputs():
    model = he_init(DIMNet(refine=True, skip=True), seed=4)
    x = torch.randn(1, 4, 64, 64, requires_grad=True)
    before = x.detach().clone()
    alpha, refined = model(x)
    (alpha.mean() + refined.mean()).backward()
    assert torch.equal(x.detach(), before)
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_lean_forward_refuses_autograd():
    with pytest.raises(RuntimeError, match="no_grad"):
        DIMNet().walk(torch.zeros(1, 4, 32, 32), Lean)


def test_inference_does_not_modify_the_input(small_strips):
    model = he_init(DIMNet(refine=True), seed=2)
    x = torch.randn(1, 4, 64, 64)
    before = x.clone()
    run(model, x)
    run(model, x, precision="bf16")
    assert torch.equal(x, before)


def test_setup_backend_sets_threads():
    before = torch.get_num_threads()
    try:
        assert setup_backend("cpu", threads=1) == torch.device("cpu")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_channels_last_matches_cpu():
    model = he_init(DIMNet(refine=True, skip=True), seed=6)
    x = torch.randn(1, 4, 128, 96)
    with torch.inference_mode():
        cpu = model(x)
    gpu = run(model.cuda(), x.cuda())
    for a, b in zip(cpu, gpu):
        assert torch.allclose(a, b.cpu(), atol=1e-3)  # TF32 convolutions on recent GPUs


# --------------------------------------------------------------------------- #
# The benchmark's FLOP count

def test_bench_flop_count_matches_the_layers_actually_run():
    from bench.inference import VARIANTS, conv_flops

    for variant, (arch, stage) in VARIANTS.items():
        ref = ReferenceDIM(stage=stage, skip=arch["skip"], conv6_kernel=arch["conv6_kernel"])
        counted = []

        def hook(mod, inputs, out):
            counted.append(2 * mod.in_channels * mod.out_channels * mod.kernel_size[0] * mod.kernel_size[1]
                           * out.shape[2] * out.shape[3])

        for mod in ref.modules():
            if isinstance(mod, nn.Conv2d):
                mod.register_forward_hook(hook)
        with torch.no_grad():
            ref(torch.zeros(1, 4, 64, 96))
        # every layer's pixel count scales with the input area (sides multiples of 32)
        assert conv_flops(variant, 1280, 1600) == sum(counted) * (1280 * 1600) // (64 * 96), variant
    assert conv_flops("skip", 32, 32) == 2 * sum(
        cin * cout * k * k * (32 // s) ** 2 for cin, cout, k, s in [
            (4, 64, 3, 1), (64, 64, 3, 1), (64, 128, 3, 2), (128, 128, 3, 2), (128, 256, 3, 4), (256, 256, 3, 4),
            (256, 256, 3, 4), (256, 512, 3, 8), (512, 512, 3, 8), (512, 512, 3, 8), (512, 512, 3, 16),
            (512, 512, 3, 16), (512, 512, 3, 16), (512, 512, 3, 32), (512, 512, 1, 32), (512, 512, 5, 16),
            (512, 256, 5, 8), (256, 128, 5, 4), (128, 64, 5, 2), (64, 64, 5, 1), (64, 1, 5, 1)])
