"""What a denoiser declares about its Lipschitz constant: the one name of the certified bound.

A solver with a convergence guarantee needs a certified bound of Lip(N), the Lipschitz
constant of the denoiser N in the l2 norm on images of a given size. Every lipden layer,
activation and model (``LipschitzDenoiser``, ``Averaged``) states it through the same method,
``lipschitz_certificate(input_shape)``; :func:`lipden.certify.bounds.lipschitz_upper_bound`
computes it for a module that does not (a ``Sequential`` of supported layers) by walking it.
The protocols are structural (``typing.Protocol``): any object with the method qualifies,
no base class is needed, and ``isinstance`` checks it at run time.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class LipschitzCertified(Protocol):
    """A map N with a certified Lipschitz bound: ``||N(u) - N(v)|| <= b ||u - v||`` for all
    inputs u, v of shape ``input_shape`` ((B, C, H, W) for images; the bound of a convolution
    depends on the image size and boundary), where ``b = lipschitz_certificate(input_shape)``.
    ``b`` is an upper bound computed from the parameters (never an estimate from samples)."""

    def lipschitz_certificate(self, input_shape: tuple[int, ...]) -> float:
        """The certified bound b (a float >= 0) for inputs of ``input_shape``."""
        ...


@runtime_checkable
class ConstrainedDenoiser(LipschitzCertified, Protocol):
    """A denoiser that also says whether its architecture enforces the bound.

    ``is_lipschitz_constrained`` is False for a model trained without constraints (its
    certificate, a product of layer norms, is valid but typically far above 1): a solver then
    treats it as uncertified instead of building on a bound the training never aimed at.
    """

    @property
    def is_lipschitz_constrained(self) -> bool:
        """True when every layer is constrained to be 1-Lipschitz by construction."""
        ...


@runtime_checkable
class NoiseLevelTrained(Protocol):
    """A denoiser trained for one noise level: solvers call it with that sigma by default."""

    @property
    def trained_sigma(self) -> float | None:
        """The training noise standard deviation on the [0, 1] scale (None: unknown)."""
        ...
