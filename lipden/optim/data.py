"""The data fidelity f(x) = 1/2 ||A x - y||^2 as the methods use it: grad f, prox_{gamma f}, L.

grad f(x) = A^T (A x - y) is L-Lipschitz with L = ||A^T A|| (``lipschitz_sq``), hence
1/L-cocoercive (Baillon-Haddad); prox_{gamma f} is firmly nonexpansive for every gamma > 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from torch import Tensor

Operator = Callable[[Tensor], Tensor]


class DataTerm(Protocol):
    """What a method needs of f: grad f, prox_{gamma f}, L = Lip(grad f), per-image restriction."""

    @property
    def lipschitz_sq(self) -> float: ...

    def gradient(self, x: Tensor) -> Tensor: ...

    def prox(self, z: Tensor, gamma: float) -> Tensor: ...

    def restrict(self, index: Tensor) -> DataTerm: ...


@dataclass(frozen=True)
class LeastSquares:
    """f(x) = 1/2 ||A x - y||^2 for batched images x (B, C, H, W) and measurements y (B, ...).

    ``A``, ``A_adjoint``: the operator and its adjoint (plain callables, e.g. a deepinv
    ``LinearPhysics``' methods, or matrices in a test); ``prox_l2(z, y, gamma)``:
    prox_{gamma f}(z) = argmin_x 1/2 ||A x - y||^2 + ||x - z||^2 / (2 gamma);
    ``lipschitz_sq``: ||A^T A||, the Lipschitz constant of grad f.
    """

    A: Operator
    A_adjoint: Operator
    prox_l2: Callable[[Tensor, Tensor, float], Tensor]
    y: Tensor
    lipschitz_sq: float

    def gradient(self, x: Tensor) -> Tensor:
        """grad f(x) = A^T (A x - y)."""
        return self.A_adjoint(self.A(x) - self.y)

    def prox(self, z: Tensor, gamma: float) -> Tensor:
        """prox_{gamma f}(z)."""
        return self.prox_l2(z, self.y, gamma)

    def restrict(self, index: Tensor) -> LeastSquares:
        """The same f for the images ``index`` (1-D, long) of the batch alone."""
        return replace(self, y=self.y[index])


@dataclass(frozen=True)
class CallableData:
    """A data term given by its two maps, ``gradient(x)`` and ``prox(z, gamma)``; it has no
    per-image measurements to restrict to."""

    gradient_fn: Operator
    prox_fn: Callable[[Tensor, float], Tensor]
    lipschitz_sq: float = float("nan")

    def gradient(self, x: Tensor) -> Tensor:
        return self.gradient_fn(x)

    def prox(self, z: Tensor, gamma: float) -> Tensor:
        return self.prox_fn(z, gamma)

    def restrict(self, index: Tensor) -> CallableData:
        raise NotImplementedError("a data term given as callables has no per-image measurements")
