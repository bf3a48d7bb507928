"""Small float64 problems for the solver tests: 2x2 operators A on (B, 2) "images", two measurements,
a linear and a nonlinear 1-Lipschitz denoiser, and a factory for each method on them."""

import math

import torch

from lipden.optim.base import METHODS
from lipden.optim.data import LeastSquares

F64 = torch.float64


def _matrix(rows):
    return torch.tensor(rows, dtype=F64)


def _symmetric(eigenvalues, angle):
    c, s = math.cos(angle), math.sin(angle)
    q = torch.tensor([[c, -s], [s, c]], dtype=F64)
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=F64)) @ q.T


#: 2x2 operators A: well conditioned, ill conditioned, singular (a null space the prior must fill)
PROBLEMS = {
    "well": _matrix([[1.0, 0.3], [0.2, 0.9]]),
    "ill": _matrix([[1.0, 0.99], [0.99, 1.0]]),
    "singular": _matrix([[1.0, 1.0], [0.0, 0.0]]),
}
#: denoisers N on (B, 2): a linear contraction W (symmetric, ||W|| = 0.9) and a nonlinear 1-Lipschitz map
W = _symmetric([0.9, 0.4], 0.7)
DENOISERS = {"linear": lambda v: v @ W.T, "clamp": lambda v: (0.8 * v).clamp(-0.5, 0.5)}
Y = torch.tensor([[1.0, -0.5], [0.3, 2.0]], dtype=F64)  # two measurements: a batch of two images


def find_problem(name: str, y: torch.Tensor = Y) -> LeastSquares:
    """f(x) = 1/2 ||A x - y||^2 on (B, 2) with the exact L = ||A^T A|| and the exact prox."""
    a = PROBLEMS[name]
    gram = a.T @ a

    def prox_l2(z, y, gamma):
        return torch.linalg.solve(torch.eye(2, dtype=F64) + gamma * gram, (z + gamma * y @ a).T).T

    return LeastSquares(lambda x: x @ a.T, lambda r: r @ a, prox_l2, y, float(torch.linalg.matrix_norm(gram, 2)))


def build(method: str, problem: str, denoiser: str, **given):
    data = find_problem(problem)
    params_type = METHODS[method].params_type
    params = params_type(**{**params_type.defaults(data.lipschitz_sq, given), **given})
    return METHODS[method](params, data, DENOISERS[denoiser])
