import pytest
import torch

from lipden import AbsoluteValue, ClippedPReLU, GroupSort, HouseHolder, ReLU, make_activation
from lipden.nn.activations import ACTIVATIONS


def jacobian_singular_values(f, x):
    jac = torch.autograd.functional.jacobian(f, x)
    n = x.numel()
    return torch.linalg.svdvals(jac.reshape(n, n))


def randomized(module):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 3.0)  # PReLU slope far outside [-1, 1], random HouseHolder angles
    return module.double()


@pytest.mark.parametrize(
    "module",
    [ReLU(8), AbsoluteValue(8), ClippedPReLU(8), GroupSort(8, 2), GroupSort(8, 4), HouseHolder(8)],
    ids=["relu", "abs", "prelu", "maxmin", "groupsort4", "householder"],
)
def test_jacobian_singular_values_at_most_one(module):
    module = randomized(module)
    for _ in range(5):
        x = torch.randn(2, 8, 3, 3, dtype=torch.float64)
        sv = jacobian_singular_values(module, x)
        assert sv.max() <= 1 + 1e-12
    assert module.lipschitz_certificate() <= 1


@pytest.mark.parametrize("module", [GroupSort(8, 2), GroupSort(6, 3), HouseHolder(8)])
def test_gradient_norm_preserving(module):
    module = randomized(module)
    x = torch.randn(1, module.num_channels, 2, 2, dtype=torch.float64)
    sv = jacobian_singular_values(module, x)
    torch.testing.assert_close(sv, torch.ones_like(sv))


def test_maxmin_pairs_consecutive_channels():
    x = torch.tensor([[1.0, 3.0, -2.0, -5.0]])
    assert GroupSort(4)(x).tolist() == [[3.0, 1.0, -2.0, -5.0]]


def test_householder_is_continuous_across_its_hyperplane():
    act = HouseHolder(2).double()
    with torch.no_grad():
        act.theta.fill_(0.3)
    v = torch.tensor([torch.cos(torch.tensor(0.3)), torch.sin(torch.tensor(0.3))], dtype=torch.float64)
    on_plane = torch.tensor([-v[1], v[0]]).view(1, 2)
    eps = 1e-9 * v.view(1, 2)
    torch.testing.assert_close(act(on_plane + eps), act(on_plane - eps), atol=1e-8, rtol=0)


@pytest.mark.parametrize("name", [*ACTIVATIONS, "maxmin"])
def test_make_activation_by_name(name):
    act = make_activation(name, 4)
    y = act(torch.randn(3, 4, 5, 5))
    assert y.shape == (3, 4, 5, 5)


def test_unknown_activation_lists_the_valid_names():
    with pytest.raises(ValueError, match="spline.*relu"):
        make_activation("swish", 4)


def test_prelu_slope_is_clipped():
    act = ClippedPReLU(2)
    with torch.no_grad():
        act.weight.copy_(torch.tensor([5.0, -5.0]))
    out = act(torch.tensor([[-1.0, -1.0]]))
    assert out.tolist() == [[-1.0, 1.0]]
