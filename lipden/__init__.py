"""lipden: 1-Lipschitz learned-spline denoisers and provably convergent reconstruction.

The public names are imported on first use (PEP 562): ``import lipden`` and the command
line's ``--help`` do not pay for importing torch and deepinv.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import TYPE_CHECKING, Any

try:
    __version__ = importlib.metadata.version("lipden")  # pyproject.toml's, once installed
except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

#: public name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    "AbsoluteValue": "nn.activations",
    "ClippedPReLU": "nn.activations",
    "GroupSort": "nn.activations",
    "HouseHolder": "nn.activations",
    "ReLU": "nn.activations",
    "make_activation": "nn.activations",
    "Averaged": "certify.averaged",
    "tv_reconstruct": "optim.baselines",
    "AveragednessReport": "certify.averaged",
    "CertificationError": "certify.bounds",
    "check_averaged": "certify.averaged",
    "lipschitz_bounds": "certify.bounds",
    "lipschitz_lower_bound": "certify.bounds",
    "lipschitz_upper_bound": "certify.bounds",
    "DenoiserConfig": "models.denoiser",
    "LipschitzDenoiser": "models.denoiser",
    "ConstrainedDenoiser": "models.protocol",
    "LipschitzCertified": "models.protocol",
    "NoiseLevelTrained": "models.protocol",
    "BjorckLinear": "nn.linear",
    "OrthoConv2d": "nn.layers",
    "SpectralNormConv2d": "nn.layers",
    "bjorck_orthonormalize": "nn.orthogonal",
    "denoiser_card": "models.pretrained",
    "list_denoisers": "models.pretrained",
    "load_denoiser": "models.pretrained",
    "ReconstructionResult": "optim.reconstruct",
    "SolverError": "optim.base",
    "reconstruct": "optim.reconstruct",
    "ConvergenceConditionError": "optim.base",
    "LinearSpline": "nn.splines",
    "linear_spline": "nn.splines",
    "TuneResult": "optim.tuning",
    "tune": "optim.tuning",
}

__all__ = [
    "AbsoluteValue",
    "Averaged",
    "AveragednessReport",
    "BjorckLinear",
    "CertificationError",
    "ClippedPReLU",
    "ConstrainedDenoiser",
    "ConvergenceConditionError",
    "DenoiserConfig",
    "GroupSort",
    "HouseHolder",
    "LinearSpline",
    "LipschitzCertified",
    "LipschitzDenoiser",
    "NoiseLevelTrained",
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
    from lipden.certify.averaged import Averaged, AveragednessReport, check_averaged
    from lipden.certify.bounds import (
        CertificationError,
        lipschitz_bounds,
        lipschitz_lower_bound,
        lipschitz_upper_bound,
    )
    from lipden.models.denoiser import DenoiserConfig, LipschitzDenoiser
    from lipden.models.pretrained import denoiser_card, list_denoisers, load_denoiser
    from lipden.models.protocol import ConstrainedDenoiser, LipschitzCertified, NoiseLevelTrained
    from lipden.nn.activations import (
        AbsoluteValue,
        ClippedPReLU,
        GroupSort,
        HouseHolder,
        ReLU,
        make_activation,
    )
    from lipden.nn.layers import OrthoConv2d, SpectralNormConv2d
    from lipden.nn.linear import BjorckLinear
    from lipden.nn.orthogonal import bjorck_orthonormalize
    from lipden.nn.splines import LinearSpline, linear_spline
    from lipden.optim.base import ConvergenceConditionError, SolverError
    from lipden.optim.baselines import tv_reconstruct
    from lipden.optim.reconstruct import ReconstructionResult, reconstruct
    from lipden.optim.tuning import TuneResult, tune


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lipden' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
