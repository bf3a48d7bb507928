import math

import pytest
import torch

from lipden import BjorckLinear, LinearSpline, OrthoConv2d, SpectralNormConv2d
from lipden.nn.conv_ops import (
    circular_conv_norm,
    circular_conv_singular_values,
    conv2d_same,
    conv2d_same_adjoint,
    conv_operator_norm_bound,
    convolution_norm_bound_any_size,
    trig_grid_factor,
)
from tests.helpers import full_operator

CONV_CASES = [
    ("ortho-circular", lambda ci, co: OrthoConv2d(ci, co, 3, padding_mode="circular")),
    ("ortho-zeros", lambda ci, co: OrthoConv2d(ci, co, 3, padding_mode="zeros")),
    ("ortho-k5", lambda ci, co: OrthoConv2d(ci, co, 5, padding_mode="circular")),
    ("spectral-zeros", lambda ci, co: SpectralNormConv2d(ci, co, 3, padding_mode="zeros")),
    ("spectral-circular", lambda ci, co: SpectralNormConv2d(ci, co, 3, padding_mode="circular")),
]
SHAPES = [(4, 4), (2, 6), (6, 2)]


def adversarial_steps(layer, in_channels, steps=25, lr=1e-2):
    """Adam steps that try to push the layer's gain up."""
    opt = torch.optim.Adam(layer.parameters(), lr=lr)
    for _ in range(steps):
        parameter = next(layer.parameters())
        x = torch.randn(4, in_channels, 16, 16, dtype=parameter.dtype, device=parameter.device)
        loss = -layer(x).pow(2).sum() / x.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name,make", CONV_CASES, ids=[c[0] for c in CONV_CASES])
def test_conv_singular_values_after_training(name, make, shape, device):
    cin, cout = shape
    layer = make(cin, cout).double().to(device)
    adversarial_steps(layer, cin)
    layer.eval()
    for n in (8, 16):
        sv = torch.linalg.svdvals(full_operator(layer, (cin, n, n), device=device))
        assert sv.max() <= 1 + 1e-4, (name, n, float(sv.max()))
        if name.startswith("ortho") and "circular" in name or name == "ortho-k5":
            rank = min(cin, cout) * n * n
            torch.testing.assert_close(sv[:rank], torch.ones(rank, dtype=sv.dtype), atol=1e-3, rtol=0)


def test_ortho_conv_float32_weight_has_unit_singular_values_on_each_device(device):
    """The orthogonalisation computed in float32 on the device (a GPU's matrix products included)."""
    conv = OrthoConv2d(8, 8, padding_mode="circular").to(device)
    values = circular_conv_singular_values(conv.constrained_weight().double().cpu(), (16, 16))
    assert float((values - 1).abs().max()) < 1e-4


@pytest.mark.parametrize("name,make", CONV_CASES[:3], ids=[c[0] for c in CONV_CASES[:3]])
def test_ortho_conv_train_mode_weight_is_also_constrained(name, make):
    layer = make(4, 4).double()
    adversarial_steps(layer, 4, lr=5e-2)
    layer.train()
    sv = torch.linalg.svdvals(full_operator(layer, (4, 8, 8)))
    assert sv.max() <= 1 + 1e-4


@pytest.mark.parametrize("padding_mode", ["circular", "zeros"])
@pytest.mark.parametrize("size", [(8, 8), (6, 10), (16, 16)])
def test_certificate_is_exact_for_circular_and_an_upper_bound_for_zeros(padding_mode, size):
    kernel = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    op = full_operator(lambda x: conv2d_same(x, kernel, None, padding_mode), (3, *size))
    true_norm = float(torch.linalg.svdvals(op).max())
    bound = conv_operator_norm_bound(kernel, size, padding_mode)
    if padding_mode == "circular":
        assert bound == pytest.approx(true_norm, rel=1e-10)
        sv = circular_conv_singular_values(kernel, size)
        torch.testing.assert_close(sv[: op.shape[1]], torch.linalg.svdvals(op)[: op.shape[1]])
    else:
        assert true_norm <= bound * (1 + 1e-12)
        assert bound <= 1.2 * true_norm


def test_certificate_wraps_kernels_larger_than_the_image():
    kernel = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    op = full_operator(lambda x: conv2d_same(x, kernel, None, "circular"), (2, 3, 3))
    assert conv_operator_norm_bound(kernel, (3, 3), "circular") == pytest.approx(
        float(torch.linalg.svdvals(op).max()), rel=1e-10
    )


@pytest.mark.parametrize("degree,grid", [(1, 4), (2, 8), (2, 64), (4, 16)])
def test_trig_grid_factor_bounds_random_and_worst_case_polynomials(degree, grid):
    generator = torch.Generator().manual_seed(degree * 100 + grid)
    fine = torch.linspace(0, 2 * torch.pi, 20001, dtype=torch.float64)
    coarse = torch.arange(grid, dtype=torch.float64) * 2 * torch.pi / grid
    factor = trig_grid_factor(degree, grid)
    for trial in range(50):
        a, b = torch.randn(2, degree + 1, generator=generator, dtype=torch.float64)
        if trial == 0:  # the extremal cos(n (x - pi / grid)), maximal between nodes
            a, b = torch.zeros(degree + 1, dtype=torch.float64), torch.zeros(degree + 1, dtype=torch.float64)
            a[degree], b[degree] = math.cos(math.pi * degree / grid), math.sin(math.pi * degree / grid)
        k = torch.arange(degree + 1, dtype=torch.float64)

        def poly(x, a=a, b=b, k=k):
            return (a * torch.cos(k * x[:, None]) + b * torch.sin(k * x[:, None])).sum(-1)

        sup, grid_max = poly(fine).abs().max(), poly(coarse).abs().max()
        assert sup <= factor * grid_max * (1 + 1e-9)
        if trial == 0:
            assert float(sup) == pytest.approx(float(factor * grid_max), rel=1e-6)


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
@pytest.mark.parametrize("channels", [(4, 4), (3, 6), (6, 3)])
def test_any_size_bound_holds_at_every_size_and_is_tight_for_orthogonal_kernels(kernel_size, channels):
    torch.manual_seed(kernel_size)
    kernel = torch.randn(channels[1], channels[0], kernel_size, kernel_size, dtype=torch.float64)
    bound = convolution_norm_bound_any_size(kernel)
    exact = [circular_conv_norm(kernel, (h, w)) for h, w in [(2, 2), (5, 7), (17, 13), (64, 64), (97, 101)]]
    assert max(exact) <= bound * (1 + 1e-12)
    assert bound <= 1.05 * max(exact)
    conv = OrthoConv2d(channels[0], channels[1], max(kernel_size, 3), padding_mode="circular").double().eval()
    weight = conv.inference_weight()
    assert convolution_norm_bound_any_size(weight) == pytest.approx(circular_conv_norm(weight, (64, 64)), abs=1e-6)


@pytest.mark.parametrize("padding_mode", ["circular", "zeros"])
@pytest.mark.parametrize("channels", [(1, 1), (3, 5), (5, 3)])
def test_conv_adjoint(padding_mode, channels):
    cin, cout = channels
    kernel = torch.randn(cout, cin, 3, 3, dtype=torch.float64)
    x = torch.randn(2, cin, 7, 9, dtype=torch.float64)
    y = torch.randn(2, cout, 7, 9, dtype=torch.float64)
    lhs = (conv2d_same(x, kernel, None, padding_mode) * y).sum()
    rhs = (x * conv2d_same_adjoint(y, kernel, padding_mode)).sum()
    assert float(lhs) == pytest.approx(float(rhs), rel=1e-12)


@pytest.mark.parametrize("make", [lambda: OrthoConv2d(3, 5), lambda: SpectralNormConv2d(3, 5)])
def test_eval_weight_is_cached_until_parameters_change(make):
    layer = make().eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        first = layer.constrained_weight()
        assert layer.constrained_weight() is first
        before = layer(x)
        next(layer.parameters()).add_(0.1)
        assert layer.constrained_weight() is not first
        assert not torch.allclose(layer(x), before)


def test_eval_mode_still_backpropagates_to_parameters():
    layer = OrthoConv2d(3, 3).eval()
    layer(torch.randn(1, 3, 8, 8)).sum().backward()
    assert layer.orthogonal_matrix.grad is not None


@pytest.mark.parametrize("make", [lambda: OrthoConv2d(3, 5), lambda: SpectralNormConv2d(3, 5)])
def test_export_to_plain_conv2d(make):
    layer = make().eval()
    x = torch.randn(2, 3, 9, 7)
    torch.testing.assert_close(layer.to_conv2d()(x), layer(x), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("features", [(8, 8), (5, 9), (9, 5)])
def test_bjorck_linear_singular_values_after_training(features):
    fin, fout = features
    layer = BjorckLinear(fin, fout).double()
    opt = torch.optim.Adam(layer.parameters(), lr=5e-2)
    for _ in range(25):
        x = torch.randn(16, fin, dtype=torch.float64)
        loss = -layer(x).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    layer.eval()
    sv = torch.linalg.svdvals(full_operator(layer, (fin,)))
    assert sv.max() <= 1 + 1e-4
    torch.testing.assert_close(sv, torch.ones_like(sv), atol=1e-3, rtol=0)
    x = torch.randn(3, fin, dtype=torch.float64)
    torch.testing.assert_close(layer.to_linear()(x), layer(x))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"stride": 2},
        {"kernel_size": 4},
        {"padding": 0},
        {"padding_mode": "reflect"},
    ],
)
@pytest.mark.parametrize("cls", [OrthoConv2d, SpectralNormConv2d])
def test_bad_conv_arguments(cls, kwargs):
    with pytest.raises(ValueError):
        cls(3, 3, **{"kernel_size": 3, **kwargs})


@pytest.mark.parametrize("cls", [OrthoConv2d, SpectralNormConv2d])
def test_wrong_input_shape_is_a_clear_error(cls):
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        cls(3, 3)(torch.randn(1, 4, 8, 8))


@pytest.mark.parametrize("size,pads", [((5, 7), (1, 1)), ((3, 4), (2, 1)), ((6, 6), (0, 2)), ((1, 1), (1, 1))])
def test_circular_pad_matches_torch_and_passes_gradcheck(size, pads):
    from lipden.nn.conv_ops import circular_pad

    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    ph, pw = pads
    torch.testing.assert_close(circular_pad(x, ph, pw), torch.nn.functional.pad(x, (pw, pw, ph, ph), mode="circular"))
    assert torch.autograd.gradcheck(lambda t: circular_pad(t, ph, pw), (x,))
    with pytest.raises(ValueError, match="smaller than"):
        circular_pad(x, size[0] + 1, 0)


def test_batched_parametrisation_equals_the_per_layer_one_with_its_gradients():
    from lipden.nn.layers import batched_training_weights

    torch.manual_seed(0)
    layers = [OrthoConv2d(1, 8), OrthoConv2d(8, 8), OrthoConv2d(8, 8, kernel_size=5), OrthoConv2d(8, 1),
              OrthoConv2d(6, 6, kernel_size=1), OrthoConv2d(8, 8, bjorck_iters=5)]
    probes = [torch.randn_like(layer.training_weight()) for layer in layers]

    def loss_and_grads(weights):
        for layer in layers:
            layer.zero_grad()
        sum((w * p).sum() for w, p in zip(weights, probes, strict=True)).backward()
        return [p.grad.clone() for layer in layers for p in layer.parameters() if p.grad is not None]

    single = [layer.training_weight() for layer in layers]
    batched = batched_training_weights(layers)
    for a, b in zip(single, batched, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    for a, b in zip(loss_and_grads(single), loss_and_grads(batched_training_weights(layers)), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    # still orthogonal: a property of the result, measured on the operator
    values = circular_conv_singular_values(batched[1].detach().double(), (8, 8))
    assert float((values - 1).abs().max()) < 1e-5


def test_denoiser_training_forward_uses_batched_passes_and_cleans_up():
    from lipden import DenoiserConfig, LipschitzDenoiser

    model = LipschitzDenoiser(DenoiserConfig(channels=8, depth=4, sigma=None)).train()
    layers = [m for m in model.modules() if isinstance(m, OrthoConv2d)]
    calls = []
    splines = [m for m in model.modules() if isinstance(m, LinearSpline)]
    for layer in layers:
        layer.training_weight = lambda original=layer.training_weight: calls.append(1) or original()
    for spline in splines:
        spline.training_weight = lambda original=spline.training_weight: calls.append(1) or original()
    out = model(torch.rand(2, 1, 16, 16))
    out.square().sum().backward()
    assert not calls  # no layer or spline ran its own parametrisation
    assert all(layer.shared_weight is None for layer in layers)
    assert all(spline.shared_weight is None for spline in splines)
    assert all(p.grad is not None for module in layers + splines for p in module.parameters())
    def failing(x):
        raise RuntimeError("inside the forward pass")

    layers[-1].forward = failing
    with pytest.raises(RuntimeError, match="inside the forward"):
        model(torch.rand(2, 1, 16, 16))
    assert all(layer.shared_weight is None for layer in layers)  # cleared on errors too
