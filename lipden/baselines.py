"""Classical, convex baselines the learned priors are compared with: TV-regularised reconstruction."""

from __future__ import annotations

import math

import torch
from deepinv.models import TVDenoiser
from torch import Tensor


def tv_reconstruct(
    y: Tensor, physics, weight: float, *, x0: Tensor | None = None, max_iter: int = 300,
    tol: float = 1e-5, lipschitz_sq: float | None = None, inner_iterations: int = 50,
) -> tuple[Tensor, int]:
    """argmin_x 1/2 ||A x - y||^2 + weight TV(x) by FISTA (step 1/L), deepinv's TV prox inside.

    Convex: converges to the minimiser (objective gap O(1/k^2)); stops when the relative
    change of x falls below ``tol``. Returns the estimate (B, C, H, W) and the iterations.
    """
    if not weight > 0:
        raise ValueError(f"TV weight must be > 0, got {weight}")
    L = float(lipschitz_sq if lipschitz_sq is not None else getattr(physics, "lipschitz_sq", 1.0))
    step = 1.0 / L
    prox = TVDenoiser(n_it_max=inner_iterations, crit=1e-6)
    with torch.no_grad():
        x = physics.A_adjoint(y) if x0 is None else x0.clone()
        v, t, iterations = x.clone(), 1.0, 0
        for iterations in range(1, max_iter + 1):  # noqa: B007 (returned)
            gradient = physics.A_adjoint(physics.A(v) - y)
            x_next = prox(v - step * gradient, ths=step * weight)
            t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
            v = x_next + ((t - 1) / t_next) * (x_next - x)
            change = float(((x_next - x).flatten(1).norm(dim=1) / x_next.flatten(1).norm(dim=1).clamp_min(1e-12)).max())
            x, t = x_next, t_next
            if change <= tol:
                break
    return x, iterations
