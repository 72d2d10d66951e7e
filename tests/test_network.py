import pytest
import torch

from core.network import DIMNet, build_model, freeze_encoder_decoder
from tests.reference_impl import init_unsaturated

ENC = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv4_1", "conv4_2",
       "conv4_3", "conv5_1", "conv5_2", "conv5_3", "conv6_1"]
DEC = ["deconv6_1", "deconv5_1", "deconv4_1", "deconv3_1", "deconv2_1", "deconv1_1", "deconv1"]
REF = ["refine_conv1", "refine_conv2", "refine_conv3", "refine_pred"]


def keys(names):
    return {f"{n}.{k}" for n in names for k in ("weight", "bias")}


def test_parameter_count_stage1_conv6_3x3():
    assert sum(p.numel() for p in DIMNet().parameters()) == 28_297_153


def test_parameter_count_by_hand():
    # conv6 1×1 saves 512·512·8 weights; the refinement head adds four 3×3 convs.
    base = 28_297_153
    assert sum(p.numel() for p in DIMNet(conv6_kernel=1).parameters()) == base - 512 * 512 * 8
    head = (4 * 64 * 9 + 64) + 2 * (64 * 64 * 9 + 64) + (64 * 9 + 1)
    assert sum(p.numel() for p in DIMNet(refine=True).parameters()) == base + head


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_key_sets(stage):
    model = build_model(stage)
    expected = keys(ENC + DEC) | (keys(REF) if stage >= 2 else set())
    assert set(model.state_dict()) == expected


def test_conv6_shapes():
    assert DIMNet(conv6_kernel=1).conv6_1.weight.shape == (512, 512, 1, 1)
    assert DIMNet(conv6_kernel=3).conv6_1.padding == (1, 1)
    with pytest.raises(ValueError):
        DIMNet(conv6_kernel=5)


def _scaled(model, seed=0):
    # tests/reference_impl.py's unsaturated random weights: alpha spread over (0, 1), not stuck at 0 or 1.
    return init_unsaturated(model, seed)


def saturated(alpha):
    """Fraction of pixels where the sigmoid is saturated (alpha exactly 0 or 1 in float32)."""
    return ((alpha == 0) | (alpha == 1)).float().mean().item()


def test_skip_changes_output_not_parameters():
    a = _scaled(DIMNet(skip=True))
    b = DIMNet(skip=False)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 4, 64, 64)
    with torch.no_grad():
        ya, _ = a(x)
        yb, _ = b(x)
    assert set(a.state_dict()) == set(b.state_dict())
    assert (ya - yb).abs().max() > 1e-3


def test_forward_outputs_and_refined_formula():
    model = _scaled(DIMNet(refine=True))
    x = torch.randn(2, 4, 32, 96)
    alpha, refined = model(x)
    assert alpha.shape == refined.shape == (2, 1, 32, 96)
    # the formula below is checked on every pixel, none of them hidden by a saturated sigmoid
    assert saturated(alpha) < 0.01 and saturated(refined) < 0.01 and alpha.std() > 0.1
    # refined = sigmoid(raw + head(cat(rgb, alpha))), raw = logit(alpha)
    with torch.no_grad():
        r = torch.cat([x[:, :3], alpha], 1)
        for n in REF[:3]:
            r = torch.relu(getattr(model, n)(r))
        expected = torch.sigmoid(torch.logit(alpha.double()) + model.refine_pred(r).double())
    assert torch.allclose(refined.double(), expected, atol=1e-5)
    assert DIMNet()(x)[1] is None


def test_forward_is_the_same_with_and_without_autograd():
    # model(x) always runs the reference's operations: no_grad and inference_mode change nothing
    model = _scaled(DIMNet(refine=True))
    x = torch.randn(1, 4, 64, 32)
    a1, r1 = model(x)
    with torch.no_grad():
        a2, r2 = model(x)
    with torch.inference_mode():
        a3, r3 = model(x)
    assert saturated(a1) < 0.01 and saturated(r1) < 0.01 and a1.std() > 0.1
    assert torch.equal(a1.detach(), a2) and torch.equal(r1.detach(), r2)
    assert torch.equal(a1.detach(), a3) and torch.equal(r1.detach(), r3)


def test_inference_run_matches_autograd():
    # Inference runs the lean operations: exact kernels up to the decoder, faster
    # ones (rounding ~1e-6) after; with exact=True it is bit-identical.
    from core.ops import run

    model = _scaled(DIMNet(refine=True))
    x = torch.randn(1, 4, 64, 32)
    a1, r1 = model(x)
    a2, r2 = run(model, x)
    assert (a1.detach() - a2).abs().max() < 1e-4  # float rounding of the fast kernels
    assert (r1.detach() - r2).abs().max() < 1e-4
    a3, r3 = run(model, x, exact=True)
    assert torch.equal(a1.detach(), a3) and torch.equal(r1.detach(), r3)


@pytest.mark.parametrize("shape", [(1, 3, 32, 32), (1, 4, 33, 32), (1, 4, 32, 40), (4, 32, 32), (1, 4, 0, 32)])
def test_bad_input_shapes(shape):
    with pytest.raises(ValueError, match="multiples of 32"):
        DIMNet()(torch.zeros(shape))


def test_every_parameter_gets_a_gradient():
    model = _scaled(DIMNet(refine=True))
    alpha, refined = model(torch.randn(1, 4, 32, 32))
    (alpha.sum() + refined.sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_stage2_freeze_only_refine_trains():
    model = _scaled(DIMNet(refine=True))
    trainable = freeze_encoder_decoder(model)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == keys(REF)
    assert len(trainable) == 8
    _, refined = model(torch.randn(1, 4, 32, 32))
    refined.sum().backward()
    assert all((p.grad is None) == (not p.requires_grad) for p in model.parameters())


def test_network_module_uses_no_private_torch_api():
    # the network file is the paper's network; kernels that need torch internals live in core.ops
    import inspect

    import core.network

    source = inspect.getsource(core.network)
    for private in ("torch._C", "_nnpack", "torch.ops.", "mkldnn", "is_grad_enabled"):
        assert private not in source, private
