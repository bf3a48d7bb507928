"""The fused training chain: its kernel against the unfused composition, the whole model
against the unfused path and float32, and when it applies."""

import pytest
import torch

from lipden.models.denoiser import DenoiserConfig, LipschitzDenoiser
from lipden.nn import fused
from lipden.nn.conv_ops import circular_pad
from lipden.nn.splines import (
    LinearSpline,
    apply_spline_tables,
    native_spline_module,
    set_spline_backend,
)


def _trained_like_spline(channels: int) -> LinearSpline:
    spline = LinearSpline(channels, init="absolute_value")
    with torch.no_grad():  # uneven knots and scalings, as after training
        spline.coefficients.add_(0.02 * torch.randn_like(spline.coefficients))
        spline.scaling.mul_(torch.rand(channels) + 0.5)
    return spline


def _activation(shape: tuple[int, ...]) -> torch.Tensor:
    """A channels-last bfloat16 activation with values on and off the knot grid, and a NaN."""
    x = (0.2 * torch.randn(shape)).to(torch.bfloat16)
    x.view(-1)[0] = float("nan")
    return x.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("shape,pad", [((2, 3, 5, 7), 1), ((1, 64, 12, 10), 1), ((2, 4, 3, 3), 2), ((1, 2, 1, 1), 1), ((2, 3, 4, 5), 0)])
def test_spline_pad_kernel_equals_spline_then_pad_then_bfloat16(native_backend, shape, pad):
    spline = _trained_like_spline(shape[1])
    x = _activation(shape)
    tables = spline.training_weight()
    leaves = [tables.intercepts.detach().requires_grad_(), tables.slopes.detach().requires_grad_()]
    unfused_tables = type(tables)(tables.index_scale, tables.index_shift, *leaves)
    x_ref = x.clone().requires_grad_()
    reference = circular_pad(apply_spline_tables(x_ref.float(), unfused_tables), pad, pad).to(torch.bfloat16)
    g = torch.randn(reference.shape).to(torch.bfloat16)
    reference.backward(g)

    x_fused = x.clone().requires_grad_()
    fused_leaves = [leaf.detach().clone().requires_grad_() for leaf in leaves]
    out = fused._SplinePad.apply(x_fused, tables.index_scale, tables.index_shift, *fused_leaves, pad, pad,
                                 native_spline_module())
    out.backward(g)
    assert out.is_contiguous(memory_format=torch.channels_last) and out.dtype == torch.bfloat16
    assert torch.equal(out.isnan(), reference.isnan())
    assert torch.equal(out.nan_to_num(), reference.nan_to_num())  # same rounding, same wrap-around
    assert x_fused.grad is not None and x_ref.grad is not None
    assert torch.equal(x_fused.grad.nan_to_num(), x_ref.grad.nan_to_num())
    for mine, theirs in zip(fused_leaves, leaves, strict=True):  # float64 sums, rounded once
        assert mine.grad is not None and theirs.grad is not None
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-5, atol=1e-6, equal_nan=True)


def _loss_and_gradients(model, clean, noisy, use_fused, autocast=True):
    model.zero_grad()
    applies = fused.fused_chain_applies if use_fused else (lambda body, x: False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("lipden.models.denoiser.fused_chain_applies", applies)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(noisy)
        ((out.float() - clean) ** 2).sum().backward()
    return out.detach().float(), torch.cat([p.grad.flatten() for p in model.parameters()])


def test_fused_training_step_is_as_accurate_as_the_unfused_one(native_backend):
    """On shipped weights, fused and unfused bfloat16 passes differ by far less than either
    differs from float32 (the convolutions run channels-last: same products, other order)."""
    from lipden.models.pretrained import load_denoiser

    model = load_denoiser("spline-sigma15").train()
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    clean = torch.rand(4, 1, 24, 24)
    noisy = clean + 15 / 255 * torch.randn(clean.shape)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fused.fused_chain_applies(model.body, noisy)
    out_f, grad_f = _loss_and_gradients(model, clean, noisy, use_fused=True)
    out_u, grad_u = _loss_and_gradients(model, clean, noisy, use_fused=False)
    out_32, grad_32 = _loss_and_gradients(model, clean, noisy, use_fused=False, autocast=False)
    assert (out_f - out_u).norm() <= 0.5 * (out_u - out_32).norm()
    assert (grad_f - grad_u).norm() <= 0.5 * (grad_u - grad_32).norm()
    assert (out_f - out_32).norm() <= 1e-2 * out_32.norm()


def test_fused_chain_applies_only_to_training_under_cpu_bfloat16_autocast_with_the_native_kernel(native_backend):
    model = LipschitzDenoiser(DenoiserConfig(channels=4, depth=3)).train()
    x = torch.rand(2, 1, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fused.fused_chain_applies(model.body, x)
        assert not fused.fused_chain_applies(model.body, x.double())
        model.eval()
        assert not fused.fused_chain_applies(model.body, x)  # eval: the certified float32 path
        model.train()
        set_spline_backend("eager")
        try:
            assert not fused.fused_chain_applies(model.body, x)
        finally:
            set_spline_backend("native")
        zero_padded = LipschitzDenoiser(DenoiserConfig(channels=4, depth=3, padding_mode="zeros")).train()
        assert not fused.fused_chain_applies(zero_padded.body, x)
        relu = LipschitzDenoiser(DenoiserConfig(channels=4, depth=3, activation="relu")).train()
        assert not fused.fused_chain_applies(relu.body, x)
    assert not fused.fused_chain_applies(model.body, x)  # no autocast
    with torch.autocast("cpu", dtype=torch.float16), pytest.raises(ValueError, match="fused_chain"):
        fused.fused_chain(relu.body, x)
