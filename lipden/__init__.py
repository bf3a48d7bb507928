"""lipden: 1-Lipschitz learned-spline denoisers and provably convergent reconstruction."""

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

__version__ = "0.1.0"

__all__ = [
    "AbsoluteValue",
    "Averaged",
    "AveragednessReport",
    "BjorckLinear",
    "CertificationError",
    "ConvergenceConditionError",
    "ClippedPReLU",
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
    "list_denoisers",
    "load_denoiser",
    "lipschitz_bounds",
    "lipschitz_lower_bound",
    "lipschitz_upper_bound",
    "make_activation",
    "reconstruct",
    "tune",
    "tv_reconstruct",
]
