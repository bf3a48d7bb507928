"""lipden: 1-Lipschitz learned-spline denoisers and provably convergent reconstruction.

The public names are imported on first use (PEP 562): ``import lipden`` and the command
line's ``--help`` do not pay for importing torch and deepinv.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    "AbsoluteValue": "activations",
    "ClippedPReLU": "activations",
    "GroupSort": "activations",
    "HouseHolder": "activations",
    "ReLU": "activations",
    "make_activation": "activations",
    "Averaged": "averaged",
    "tv_reconstruct": "baselines",
    "AveragednessReport": "certify",
    "CertificationError": "certify",
    "check_averaged": "certify",
    "lipschitz_bounds": "certify",
    "lipschitz_lower_bound": "certify",
    "lipschitz_upper_bound": "certify",
    "DenoiserConfig": "denoiser",
    "LipschitzDenoiser": "denoiser",
    "BjorckLinear": "layers",
    "OrthoConv2d": "layers",
    "SpectralNormConv2d": "layers",
    "bjorck_orthonormalize": "orthogonal",
    "denoiser_card": "pretrained",
    "list_denoisers": "pretrained",
    "load_denoiser": "pretrained",
    "ReconstructionResult": "reconstruction",
    "SolverError": "reconstruction",
    "reconstruct": "reconstruction",
    "ConvergenceConditionError": "solvers",
    "LinearSpline": "splines",
    "linear_spline": "splines",
    "TuneResult": "tuning",
    "tune": "tuning",
}

__all__ = [
    "AbsoluteValue",
    "Averaged",
    "AveragednessReport",
    "BjorckLinear",
    "CertificationError",
    "ClippedPReLU",
    "ConvergenceConditionError",
    "DenoiserConfig",
    "GroupSort",
    "HouseHolder",
    "LinearSpline",
    "LipschitzDenoiser",
    "OrthoConv2d",
    "ReLU",
    "ReconstructionResult",
    "SolverError",
    "SpectralNormConv2d",
    "TuneResult",
    "bjorck_orthonormalize",
    "check_averaged",
    "denoiser_card",
    "linear_spline",
    "lipschitz_bounds",
    "lipschitz_lower_bound",
    "lipschitz_upper_bound",
    "list_denoisers",
    "load_denoiser",
    "make_activation",
    "reconstruct",
    "tune",
    "tv_reconstruct",
]

if TYPE_CHECKING:
    from .activations import (
        AbsoluteValue,
        ClippedPReLU,
        GroupSort,
        HouseHolder,
        ReLU,
        make_activation,
    )
    from .averaged import Averaged
    from .baselines import tv_reconstruct
    from .certify import (
        AveragednessReport,
        CertificationError,
        check_averaged,
        lipschitz_bounds,
        lipschitz_lower_bound,
        lipschitz_upper_bound,
    )
    from .denoiser import DenoiserConfig, LipschitzDenoiser
    from .layers import BjorckLinear, OrthoConv2d, SpectralNormConv2d
    from .orthogonal import bjorck_orthonormalize
    from .pretrained import denoiser_card, list_denoisers, load_denoiser
    from .reconstruction import ReconstructionResult, SolverError, reconstruct
    from .solvers import ConvergenceConditionError
    from .splines import LinearSpline, linear_spline
    from .tuning import TuneResult, tune


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lipden' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
