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
from .certify import (
    AveragednessReport,
    CertificationError,
    check_averaged,
    lipschitz_bounds,
    lipschitz_lower_bound,
    lipschitz_upper_bound,
)
from .layers import BjorckLinear, OrthoConv2d, SpectralNormConv2d
from .orthogonal import bjorck_orthonormalize
from .splines import LinearSpline, linear_spline

__version__ = "0.1.0"

__all__ = [
    "AbsoluteValue",
    "Averaged",
    "AveragednessReport",
    "BjorckLinear",
    "CertificationError",
    "ClippedPReLU",
    "GroupSort",
    "HouseHolder",
    "LinearSpline",
    "OrthoConv2d",
    "ReLU",
    "SpectralNormConv2d",
    "bjorck_orthonormalize",
    "check_averaged",
    "linear_spline",
    "lipschitz_bounds",
    "lipschitz_lower_bound",
    "lipschitz_upper_bound",
    "make_activation",
]
