"""Inverse problems on deepinv physics: deblurring and single-coil MRI.

Each problem has a name that rebuilds it (``problem_from_name``), ``physics(shape)`` with
an exact ``lipschitz_sq``, seeded ``measure(x, seed)``, and a classical ``baseline``.
"""

from __future__ import annotations

import re

from .base import InverseProblem, check_image
from .deblur import KERNELS, CertifiedBlurFFT, DeblurProblem, blur_kernel
from .groundtruth import default_image, dev_set, load_ground_truths
from .mri import MASKS, MRIProblem, RealMRI

_DEBLUR = re.compile(
    r"deblur-(?:gaussian(?P<bs>[0-9.]+)|uniform(?P<us>\d+)|motion(?P<ms>\d+)-seed(?P<seed>\d+))"
    r"-noise(?P<noise>[0-9.e-]+)$"
)
_MRI = re.compile(
    r"mri-(?P<mask>[a-z]+)-x(?P<acc>\d+)-cf(?P<cf>[0-9.e-]+)-noise(?P<noise>[0-9.e-]+)(?:-seed(?P<seed>\d+))?$"
)

STANDARD_PROBLEMS = (
    "deblur-gaussian1.6-noise0.01",
    "deblur-uniform9-noise0.01",
    "deblur-motion31-seed1-noise0.01",
    "deblur-motion31-seed2-noise0.01",
    "mri-random-x4-cf0.08-noise0.002",
    "mri-random-x8-cf0.04-noise0.002",
    "mri-equispaced-x4-cf0.08-noise0.002",
    "mri-equispaced-x8-cf0.04-noise0.002",
)


def problem_from_name(name: str) -> InverseProblem:
    """Rebuild a problem from its name, e.g. ``mri-random-x4-cf0.08-noise0.002``."""
    match = _DEBLUR.match(name)
    if match:
        noise = float(match["noise"])
        if match["bs"]:
            return DeblurProblem("gaussian", blur_sigma=float(match["bs"]), noise=noise)
        if match["us"]:
            return DeblurProblem("uniform", size=int(match["us"]), noise=noise)
        return DeblurProblem("motion", size=int(match["ms"]), seed=int(match["seed"]), noise=noise)
    match = _MRI.match(name)
    if match:
        return MRIProblem(
            match["mask"], int(match["acc"]), float(match["cf"]), float(match["noise"]), int(match["seed"] or 0)
        )
    raise ValueError(
        f"cannot parse problem name {name!r}; examples: {', '.join(STANDARD_PROBLEMS[:1] + STANDARD_PROBLEMS[4:5])}"
    )


__all__ = [
    "KERNELS",
    "MASKS",
    "STANDARD_PROBLEMS",
    "CertifiedBlurFFT",
    "DeblurProblem",
    "InverseProblem",
    "MRIProblem",
    "RealMRI",
    "blur_kernel",
    "check_image",
    "default_image",
    "dev_set",
    "load_ground_truths",
    "problem_from_name",
]
