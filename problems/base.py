"""What every inverse problem provides: physics for an image shape, seeded measurements, ||A^T A||."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from deepinv.physics import LinearPhysics
from torch import Tensor

from .tuned import TUNED_DEFAULTS_FILE, TunedSetup, stored_entries, tuned_setup


def check_image(x: Tensor, name: str = "x") -> None:
    """Raise ValueError unless ``x`` is a finite float tensor of shape (B, C, H, W)."""
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be an image tensor of shape (B, C, H, W), got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf values")


def per_image(gamma: float | Tensor, like: Tensor) -> float | Tensor:
    """A prox step as deepinv passes it (a float, or one per image of shape (B,)), shaped
    to broadcast over ``like``, a tensor whose first dimension is the batch."""
    if isinstance(gamma, Tensor) and gamma.dim() > 0:
        return gamma.to(like.real.dtype).reshape(-1, *([1] * (like.dim() - 1)))
    return gamma


class InverseProblem(ABC):
    """A linear inverse problem ``y = A x + n`` on real images (B, C, H, W) in [0, 1].

    ``name`` describes the problem completely (``problem_from_name(name)`` rebuilds it).
    ``physics(shape)`` is a deepinv ``LinearPhysics`` carrying ``lipschitz_sq``, the exact
    (or certified) ``||A^T A||``, which the solvers' step-size conditions use.
    """

    #: 'natural' (photographs) or 'mri' (magnitude slices): which default images suit it.
    kind = "natural"

    def __init__(self, noise: float) -> None:
        if not 0 <= noise < 1:
            raise ValueError(f"noise must be in [0, 1) (images in [0, 1]), got {noise}")
        self.noise = float(noise)
        self._physics: dict[tuple[tuple[int, ...], str], LinearPhysics] = {}

    @property
    @abstractmethod
    def name(self) -> str: ...

    @abstractmethod
    def _build_physics(self, shape: tuple[int, int, int]) -> LinearPhysics: ...

    @abstractmethod
    def _noise_like(self, y: Tensor, generator: torch.Generator) -> Tensor: ...

    def physics(self, shape: tuple[int, ...], device: str | torch.device = "cpu") -> LinearPhysics:
        """The forward operator for images of shape (..., C, H, W) on ``device``, built once per
        shape and device (asking for another device never moves an operator handed out before)."""
        key = tuple(int(s) for s in shape[-3:])
        if len(key) != 3 or min(key) < 1:
            raise ValueError(f"expected an image shape (C, H, W), got {tuple(shape)}")
        where = str(torch.device(device))
        if (key, where) not in self._physics:
            self._physics[key, where] = self._build_physics(key).to(device)  # type: ignore[arg-type]
        return self._physics[key, where]

    def lipschitz_sq(self, shape: tuple[int, ...]) -> float:
        """Exact ``||A^T A||`` for images of this shape."""
        return float(self.physics(shape).lipschitz_sq)

    def measure(self, x: Tensor, seed: int = 0) -> Tensor:
        """``y = A x + n`` with the noise drawn from ``torch.Generator().manual_seed(seed)``."""
        check_image(x)
        physics = self.physics(x.shape, x.device)
        y = physics.A(x)
        if self.noise > 0:
            generator = torch.Generator().manual_seed(int(seed))
            y = y + self.noise * self._noise_like(y, generator).to(y.device, y.dtype)
        return y

    def baseline(self, y: Tensor, shape: tuple[int, ...]) -> Tensor:
        """The classical no-prior reconstruction ``A^T y`` (zero-filled for MRI), clipped to [0, 1]."""
        return self.physics(shape, y.device).A_adjoint(y).clamp(0, 1)

    def tuned_setup(self, method: str = "pnp-fbs", box: bool | None = None) -> TunedSetup:
        """The best stored setup of ``method`` for this problem (:func:`problems.tuned.tuned_setup`):
        ``lipden.reconstruct(y, physics, load_denoiser(s.model), **s.reconstruct_kwargs())``."""
        return tuned_setup(self.name, method, box=box, path=TUNED_DEFAULTS_FILE)

    def default_parameters(self, method: str) -> dict:
        """Solver parameters tuned for this problem (``lipden.tune``), or {} if none are stored."""
        return dict(self._tuned_entry(method).get("parameters", {}))

    def tuned_weights_sha256(self, method: str) -> str | None:
        """sha256 of the prior's weights the stored parameters were tuned with (None: not recorded)."""
        return self._tuned_entry(method).get("weights_sha256")

    def default_iteration_cap(self, method: str) -> int | None:
        """Iteration cap stored with the tuned parameters (a weak prior converges slowly), or None."""
        cap = self._tuned_entry(method).get("max_iter")
        return None if cap is None else int(cap)

    def default_acceleration(self, method: str) -> int:
        """Anderson memory stored with the tuned parameters (0: the plain iteration)."""
        return int(self._tuned_entry(method).get("accelerate", 0))

    def _tuned_entry(self, method: str) -> dict:
        """This problem's entry for ``method`` in ``problems/tuned_defaults.json`` ({} if none)."""
        return stored_entries(self.name, TUNED_DEFAULTS_FILE).get(method, {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"
