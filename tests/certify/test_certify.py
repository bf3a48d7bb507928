import pytest
import torch
from torch import nn

import lipden
from lipden import (
    Averaged,
    CertificationError,
    check_averaged,
    lipschitz_bounds,
    lipschitz_upper_bound,
)
from tests.helpers import full_operator


def lipschitz_stack(activation="spline", channels=8):
    layers = [lipden.OrthoConv2d(1, channels)]
    for _ in range(2):
        layers += [lipden.make_activation(activation, channels), lipden.OrthoConv2d(channels, channels)]
    layers += [lipden.make_activation(activation, channels), lipden.OrthoConv2d(channels, 1)]
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, lipden.LinearSpline):
                m.coefficients.normal_(0, 0.2)
    return model.eval()


@pytest.mark.parametrize("activation", ["spline", "relu", "groupsort", "householder", "prelu"])
def test_bounds_of_a_lipschitz_stack(activation):
    model = lipschitz_stack(activation)
    lower, upper = lipschitz_bounds(model, (1, 1, 12, 12), num_points=2, power_iterations=10, ascent_steps=20)
    assert 0 < lower <= upper
    assert upper <= 1 + 1e-4


def test_upper_bound_of_plain_convolutions_against_dense_svd():
    conv = nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular").double()
    dense = float(torch.linalg.svdvals(full_operator(conv, (2, 6, 6))).max())
    assert lipschitz_upper_bound(conv, (1, 2, 6, 6)) == pytest.approx(dense, rel=1e-10)
    model = nn.Sequential(conv, nn.ReLU(), nn.Conv2d(3, 2, 3, padding=1).double())
    product = lipschitz_upper_bound(conv, (1, 2, 6, 6)) * lipschitz_upper_bound(model[2], (1, 3, 6, 6))
    assert lipschitz_upper_bound(model, (1, 2, 6, 6)) == pytest.approx(product)


def test_a_non_lipschitz_model_is_caught():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1))
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(6.0)
    lower, upper = lipschitz_bounds(model.eval(), (1, 1, 10, 10), num_points=2)
    assert lower > 1.0 and upper >= lower


def test_lower_bound_finds_a_known_constant():
    scale = 2.5
    lower = lipden.lipschitz_lower_bound(lambda x: scale * torch.relu(x - 0.5), (1, 1, 6, 6))
    assert lower == pytest.approx(scale, rel=1e-6)


def test_unsupported_modules_are_refused():
    class Residual(nn.Module):
        def forward(self, x):
            return x + torch.sin(x)

    with pytest.raises(CertificationError, match="Residual"):
        lipschitz_upper_bound(nn.Sequential(Residual()), (1, 1, 4, 4))
    with pytest.raises(CertificationError, match="stride"):
        lipschitz_upper_bound(nn.Conv2d(1, 1, 3, stride=2, padding=1), (1, 1, 8, 8))


def test_averaged_operator_is_certified_firmly_nonexpansive():
    report = check_averaged(Averaged(lipschitz_stack("relu")), (1, 1, 8, 8), alpha=0.5, num_points=2)
    assert report.certified and not report.violated
    assert report.upper is not None and report.lower <= report.upper


def test_reflection_is_nonexpansive_but_not_firmly_nonexpansive():
    report = check_averaged(lambda x: -x, (1, 1, 4, 4), alpha=0.5)
    assert report.violated  # 2T - I = -3 Id
    assert report.lower == pytest.approx(3.0, rel=1e-9)


def test_averaged_certificate_combines_bounds():
    inner = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, bias=False))
    with torch.no_grad():
        inner[0].weight.zero_()
        inner[0].weight[0, 0, 1, 1] = 3.0
    assert Averaged(inner, 0.25).lipschitz_certificate((1, 1, 5, 5)) == pytest.approx(0.75 + 0.75)
