import pytest
import torch
from torch.autograd import gradcheck

from lipden import LinearSpline, linear_spline
from lipden.nn.splines import SPLINE_INITS, clip_spline_slopes


def random_spline(channels=6, knots=21, x_range=0.5, dtype=torch.float64, **kwargs):
    spline = LinearSpline(channels, num_knots=knots, x_range=x_range, **kwargs).to(dtype)
    with torch.no_grad():
        spline.coefficients.normal_(0, 0.5)  # far steeper than allowed: forces clipping
        spline.scaling.uniform_(0.5, 2.0)
    return spline


def train_randomly(spline, steps=20, shape=(8, 6, 5, 5)):
    opt = torch.optim.Adam(spline.parameters(), lr=1e-2)
    for _ in range(steps):
        x = torch.randn(shape, dtype=spline.coefficients.dtype)
        loss = (spline(x) - 3 * x.sin()).pow(2).mean()  # target is 3-Lipschitz
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("init", SPLINE_INITS)
def test_each_init_gives_the_named_function(init):
    spline = LinearSpline(4, num_knots=51, x_range=0.1, init=init).double()
    x = torch.linspace(-0.5, 0.5, 101, dtype=torch.float64).view(1, 1, -1).repeat(1, 4, 1)
    expected = {
        "identity": x,
        "relu": x.clamp(min=0),
        "absolute_value": x.abs(),
        "zero": torch.zeros_like(x),
        "maxmin": torch.where(torch.arange(4).view(1, 4, 1) % 2 == 0, x.abs(), x),
    }[init]
    torch.testing.assert_close(spline(x).detach(), expected, atol=1e-7, rtol=0)  # float32 init


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_slopes_bounded_after_training_and_random_parameters(dtype):
    spline = random_spline(dtype=dtype)
    assert spline.slopes().abs().max() <= 1 + 1e-6
    train_randomly(spline)
    slopes = spline.slopes()
    assert slopes.min() >= -1 - 1e-6 and slopes.max() <= 1 + 1e-6
    assert spline.lipschitz_certificate() <= 1 + 1e-6


def test_monotone_splines_have_slopes_in_zero_one():
    spline = random_spline(slope_min=0.0, slope_max=1.0)
    train_randomly(spline)
    x = torch.linspace(-3, 3, 2001, dtype=torch.float64).view(1, 1, -1).repeat(1, 6, 1)
    y = spline(x)
    assert (torch.diff(y, dim=-1) >= -1e-12).all()
    assert spline.slopes().min() >= -1e-9


def test_empirical_lipschitz_ratio_over_random_pairs():
    spline = random_spline()
    train_randomly(spline)
    x = torch.randn(20000, 6, dtype=torch.float64) * 0.6
    y = x + torch.randn_like(x) * torch.rand_like(x) * 0.3
    ratio = (spline(x) - spline(y)).abs() / (x - y).abs()
    assert ratio.max() <= 1 + 1e-6
    assert ratio.max() > 0.5  # the spline is not trivially flat


def test_tv2_equals_finite_differences():
    spline = random_spline(knots=15, x_range=1.0)
    functions = spline.learned_functions()
    # Evaluate on the knots (input units) and at points outside, slopes by differences.
    tv2 = []
    for c in range(6):
        knots = functions.knots[c]
        h = knots[1] - knots[0]
        points = torch.cat([knots[:1] - h, knots, knots[-1:] + h])
        x = torch.zeros(len(points), 6, dtype=torch.float64)
        x[:, c] = points
        values = spline(x)[:, c]
        slopes = torch.diff(values) / torch.diff(points)
        tv2.append(torch.diff(slopes).abs().sum())
    torch.testing.assert_close(torch.stack(tv2), functions.tv2, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(spline.tv2(), torch.stack(tv2).sum(), atol=1e-9, rtol=1e-9)


def test_linear_extension_outside_the_range_uses_boundary_slopes():
    spline = random_spline(channels=2, knots=11, x_range=1.0)
    functions = spline.learned_functions()
    far = torch.tensor([[-50.0, 50.0], [-60.0, 60.0]], dtype=torch.float64)
    out = spline(far)
    left = (out[1, 0] - out[0, 0]) / (-10)
    right = (out[1, 1] - out[0, 1]) / 10
    torch.testing.assert_close(left, functions.slopes[0, 0])
    torch.testing.assert_close(right, functions.slopes[1, -1])


def points_away_from_knots(spline, shape):
    """Inputs at random fractions 0.1..0.9 inside grid intervals (and outside the grid)."""
    channels = spline.num_activations
    k = torch.randint(-3, spline.num_knots + 2, shape, dtype=torch.float64)
    frac = torch.rand(shape, dtype=torch.float64) * 0.8 + 0.1
    t = -spline.x_range + (k + frac) * spline.grid
    alpha = spline.alpha().detach().view(1, channels, *([1] * (len(shape) - 2)))
    return t / alpha


@pytest.mark.parametrize("shape", [(3, 4), (2, 4, 3, 3), (2, 4, 2, 2, 2)])
def test_gradcheck_float64(shape):
    spline = random_spline(channels=4, knots=9, x_range=0.4)
    x = points_away_from_knots(spline, shape).requires_grad_(True)
    coefficients = spline.constrained_coefficients().detach().requires_grad_(True)
    scaling = spline.alpha().detach().requires_grad_(True)
    assert gradcheck(lambda x, c, a: linear_spline(x, c, 0.4, a), (x, coefficients, scaling))


def test_gradcheck_through_the_slope_clipping_where_no_slope_is_clipped():
    spline = random_spline(channels=3, knots=7, x_range=0.3)
    x = points_away_from_knots(spline, (5, 3))

    def f(coefficients, scaling):
        constrained = clip_spline_slopes(coefficients, spline.grid, -1.0, 1.0)
        return linear_spline(x, constrained, spline.x_range, scaling)

    c0 = (spline.coefficients.detach() * 0.02).clone().requires_grad_(True)  # slopes well inside [-1, 1]
    assert (torch.diff(c0, dim=1) / spline.grid).abs().max() < 0.9
    a0 = spline.scaling.detach().clone().requires_grad_(True)
    assert gradcheck(f, (c0, a0))


def test_clipped_slopes_get_the_gradient_only_towards_the_bounds():
    grid = 0.1
    raw_slopes = torch.tensor([[2.0, 1 + 1e-6, 0.5, -3.0]], dtype=torch.float64)  # above, round-off above, in, below
    for direction in (1.0, -1.0):
        leaf = raw_slopes.clone().requires_grad_(True)
        coefficients = torch.cat([leaf.new_zeros(1, 1), torch.cumsum(leaf, dim=1) * grid], dim=1)
        slopes = torch.diff(clip_spline_slopes(coefficients, grid, -1.0, 1.0), dim=1) / grid
        assert torch.allclose(slopes, torch.tensor([[1.0, 1.0, 0.5, -1.0]], dtype=torch.float64))
        (direction * slopes).sum().backward()
        passed = leaf.grad[0] != 0
        # descent (slope -= lr * grad) may move a clipped slope only back towards [-1, 1]
        expected = [True, True, True, False] if direction > 0 else [False, False, True, True]
        assert passed.tolist() == expected


def test_backward_saves_only_the_input_and_small_tables():
    spline = LinearSpline(16)
    x = torch.randn(4, 16, 32, 32, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = spline(x * 1.0)
    big = [b for b in saved if b > 100_000]
    assert sum(big) <= x.numel() * x.element_size()  # one input-sized tensor, no int64 index
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_scaling_is_guarded_and_keeps_the_lipschitz_bound():
    spline = random_spline(channels=3)
    with torch.no_grad():
        spline.scaling.copy_(torch.tensor([-2.0, 0.0, 1e-9]))
    assert (spline.alpha() >= spline.alpha_min).all()
    x = torch.randn(1000, 3, dtype=torch.float64)
    y = torch.randn(1000, 3, dtype=torch.float64)
    out_x, out_y = spline(x), spline(y)
    assert torch.isfinite(out_x).all()
    assert ((out_x - out_y).abs() <= (x - y).abs() * (1 + 1e-9)).all()


def test_nan_and_inf_inputs_propagate_without_crashing():
    spline = LinearSpline(2)
    x = torch.tensor([[float("nan"), float("inf")], [float("-inf"), 0.05]])
    y = spline(x)
    assert torch.isnan(y[0, 0])
    assert float(y[1, 1].detach()) == pytest.approx(0.05, abs=1e-6)


def test_learned_functions_shapes():
    spline = LinearSpline(5, num_knots=11)
    f = spline.learned_functions()
    assert f.knots.shape == (5, 11) and f.values.shape == (5, 11)
    assert f.slopes.shape == (5, 10) and f.tv2.shape == (5,)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_activations": 0},
        {"num_activations": 2, "num_knots": 1},
        {"num_activations": 2, "x_range": 0.0},
        {"num_activations": 2, "init": "sigmoid"},
        {"num_activations": 2, "slope_min": 1.0, "slope_max": 0.0},
    ],
)
def test_bad_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        LinearSpline(**kwargs)


def test_wrong_channel_count_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\(B, 3"):
        LinearSpline(3)(torch.randn(2, 4, 5, 5))


def test_compiled_forward_matches_eager():
    from lipden.nn.splines import get_spline_backend, set_spline_backend

    spline = random_spline(channels=4, knots=11, x_range=0.5, dtype=torch.float32)
    x = torch.randn(2, 4, 9, 7, requires_grad=True)
    eager = spline(x)
    (g_eager,) = torch.autograd.grad(eager.sum(), x)
    try:
        set_spline_backend("compiled")
        compiled = spline(x)
        (g_compiled,) = torch.autograd.grad(compiled.sum(), x)
    finally:
        set_spline_backend("eager")
    assert get_spline_backend() == "eager"
    torch.testing.assert_close(compiled, eager, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(g_compiled, g_eager)
    with pytest.raises(ValueError):
        set_spline_backend("cuda-magic")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(3, 4), (2, 4, 9, 7), (2, 4, 3, 2, 5)])
def test_native_kernel_equals_eager_forward_and_input_gradient(native_backend, shape, dtype):
    from lipden.nn.splines import set_spline_backend

    spline = random_spline(channels=4, knots=11, x_range=0.5, dtype=dtype)
    x = (0.6 * torch.randn(shape, dtype=dtype)).requires_grad_(True)  # some entries beyond the grid
    with torch.no_grad():
        x.view(-1)[:3] = torch.tensor([float("nan"), 9.0, -9.0], dtype=dtype)
    native = spline(x)
    g_native, ga_native = torch.autograd.grad((native.nan_to_num() * 1.7).sum(), (x, spline.coefficients))
    set_spline_backend("eager")
    try:
        eager = spline(x)
        g_eager, ga_eager = torch.autograd.grad((eager.nan_to_num() * 1.7).sum(), (x, spline.coefficients))
    finally:
        set_spline_backend("native")
    assert torch.equal(native.isnan(), eager.isnan())
    torch.testing.assert_close(native.nan_to_num(), eager.nan_to_num(), rtol=0, atol=0)
    torch.testing.assert_close(g_native, g_eager, rtol=0, atol=0)
    # float64 sums here, float32 bincount there: equal up to float32 round-off of the largest sum
    scale = float(ga_eager.nan_to_num().abs().max())
    torch.testing.assert_close(ga_native, ga_eager, equal_nan=True, rtol=0, atol=1e-6 * scale)


def test_native_kernel_passes_gradcheck(native_backend):
    spline = random_spline(channels=4, knots=9, x_range=0.4)
    x = points_away_from_knots(spline, (2, 4, 3, 3)).requires_grad_(True)
    coefficients = spline.constrained_coefficients().detach().requires_grad_(True)
    scaling = spline.alpha().detach().requires_grad_(True)
    assert gradcheck(lambda x, c, a: linear_spline(x, c, 0.4, a), (x, coefficients, scaling))


def _spline_stack(count=3, channels=5, knots=13):
    torch.manual_seed(3)
    body = torch.nn.Sequential(*[LinearSpline(channels, num_knots=knots, x_range=0.5) for _ in range(count)]).double()
    with torch.no_grad():
        for spline in body:
            spline.coefficients.add_(0.2 * torch.randn_like(spline.coefficients))  # some slopes clipped
            spline.scaling.uniform_(0.5, 2.0)
    return body


def test_shared_weight_give_each_spline_its_own_values_and_gradients():
    from lipden.nn.splines import shared_spline_tables

    body = _spline_stack()
    x = torch.randn(4, 5, 6, 6, dtype=torch.float64)

    def output_and_grads(shared: bool):
        body.zero_grad()
        if shared:
            with shared_spline_tables(body):
                assert all(s.shared_weight is not None for s in body)
                out = body(x)
        else:
            out = body(x)
        (out * torch.cos(x)).sum().backward()
        return [out.detach()] + [p.grad.clone() for p in body.parameters()]

    for separate, together in zip(output_and_grads(False), output_and_grads(True), strict=True):
        torch.testing.assert_close(together, separate, rtol=1e-12, atol=1e-12)
    assert all(s.shared_weight is None for s in body)
    body.eval()
    with shared_spline_tables(body):
        assert all(s.shared_weight is None for s in body)  # eval mode: nothing shared


def test_shared_weight_are_cleared_when_the_block_fails():
    from lipden.nn.splines import shared_spline_tables

    body = _spline_stack()
    with pytest.raises(RuntimeError, match="inside"), shared_spline_tables(body):
        raise RuntimeError("inside the block")
    assert all(s.shared_weight is None for s in body)


def test_total_tv2_matches_the_sum_over_splines_of_any_shapes():
    from lipden.nn.splines import total_tv2

    splines = list(_spline_stack(count=3)) + list(_spline_stack(count=2, channels=3, knots=7))
    expected = sum(s.tv2() for s in splines)
    torch.testing.assert_close(total_tv2(splines), expected, rtol=1e-12, atol=0)
    assert total_tv2([]) is None


def test_eval_mode_computes_the_tables_once_until_a_parameter_changes():
    spline = random_spline().eval()
    x = torch.randn(3, 6, 4, 4, dtype=torch.float64)
    calls = []
    original = spline.training_weight
    spline.training_weight = lambda: calls.append(1) or original()
    with torch.no_grad():
        first = spline(x)
        torch.testing.assert_close(spline(x), first, rtol=0, atol=0)
        assert len(calls) == 1  # cached
        spline.coefficients.mul_(0.5)  # an in-place change must reach the output
        changed = spline(x)
    assert len(calls) == 2 and not torch.equal(changed, first)
    torch.testing.assert_close(changed, spline.train()(x).detach())  # the same function as in training
