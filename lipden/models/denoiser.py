"""The 1-Lipschitz DnCNN-like denoiser of Ducotterd et al. (JMLR 2024).

``N = W_depth o sigma o W_{depth-1} o ... o sigma o W_1``: ``depth`` 3x3 convolutions with a
1-Lipschitz activation between them, no batch normalization. With orthogonal (BCOP) or
spectrally normalized convolutions and 1-Lipschitz activations, N is 1-Lipschitz by
construction, and ``N.averaged()`` = (Id + N) / 2 is firmly nonexpansive, which is what the
convergent solvers need.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Literal, cast

import deepinv
import torch
from torch import Tensor, nn

from lipden.certify.averaged import Averaged
from lipden.certify.bounds import lipschitz_upper_bound
from lipden.memory import freed_memory_kept
from lipden.models.tiling import run_in_bounded_passes
from lipden.nn.activations import ACTIVATION_ALIASES, ACTIVATIONS, make_activation
from lipden.nn.fused import fused_chain, fused_chain_applies
from lipden.nn.layers import OrthoConv2d, SpectralNormConv2d, shared_training_weights
from lipden.nn.splines import LinearSpline, shared_spline_tables, total_tv2

CONV_TYPES = ("ortho", "spectral", "free")


@dataclass
class DenoiserConfig:
    """Architecture of a :class:`LipschitzDenoiser`; stored with the weights.

    conv: ``ortho`` (BCOP, the paper's), ``spectral`` (spectral normalization) or ``free``
    (plain ``nn.Conv2d``: no Lipschitz guarantee, for measuring the price of the constraint).
    sigma: the noise level the model was trained for, on the [0, 1] scale (None: unknown).
    activation_kwargs: extra arguments of the activation (e.g. ``num_knots`` for splines).
    """

    channels: int = 64
    depth: int = 8
    kernel_size: int = 3
    activation: str = "spline"
    activation_kwargs: dict = field(default_factory=dict)
    conv: str = "ortho"
    padding_mode: str = "circular"
    bias: bool = True
    sigma: float | None = None

    def __post_init__(self) -> None:
        if self.depth < 2:
            raise ValueError(f"depth must be >= 2, got {self.depth}")
        if self.channels < 1:
            raise ValueError(f"channels must be >= 1, got {self.channels}")
        if self.conv not in CONV_TYPES:
            raise ValueError(f"conv must be one of {CONV_TYPES}, got {self.conv!r}")
        name = ACTIVATION_ALIASES.get(self.activation, self.activation)
        if name not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose from {', '.join(ACTIVATIONS)}")
        if self.sigma is not None and not 0 < self.sigma < 1:
            raise ValueError(f"sigma is on the [0, 1] scale and must be in (0, 1), got {self.sigma}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DenoiserConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown denoiser config keys: {sorted(unknown)}")
        return cls(**data)


#: Spline settings of a config that does not name them. ``init`` only shapes a network built
#: before any training (weights replace the coefficients); a training run names its own start in
#: ``activation_kwargs`` where it differs (``lipden.train.config.TrainConfig.spline_init``).
SPLINE_DEFAULTS = {"num_knots": 51, "x_range": 0.1, "init": "absolute_value"}


def is_spline(activation: str) -> bool:
    """Whether ``activation`` (a name or alias of ``--activation``) is the learned spline."""
    return ACTIVATION_ALIASES.get(activation, activation) == "spline"

PRESETS: dict[str, DenoiserConfig] = {
    # The paper's denoiser, sized for a GPU.
    "paper": DenoiserConfig(channels=64, depth=8),
    # Same family, sized to train in about an hour on 2 CPU cores.
    "cpu": DenoiserConfig(channels=32, depth=8),
}


def _activation_kwargs(config: DenoiserConfig) -> dict:
    if is_spline(config.activation):
        kwargs = {**SPLINE_DEFAULTS, **config.activation_kwargs}
        if config.conv == "free":
            kwargs.setdefault("slope_min", None)
            kwargs.setdefault("slope_max", None)
        return kwargs
    return dict(config.activation_kwargs)


def _make_conv(config: DenoiserConfig, cin: int, cout: int) -> nn.Module:
    if config.conv == "ortho":
        return OrthoConv2d(cin, cout, config.kernel_size, bias=config.bias, padding_mode=config.padding_mode)
    if config.conv == "spectral":
        return SpectralNormConv2d(cin, cout, config.kernel_size, bias=config.bias, padding_mode=config.padding_mode)
    # nn.Conv2d validates padding_mode itself (any of its four modes is allowed here)
    padding_mode = cast(Literal["zeros", "reflect", "replicate", "circular"], config.padding_mode)
    return nn.Conv2d(
        cin, cout, config.kernel_size, padding=config.kernel_size // 2, bias=config.bias,
        padding_mode=padding_mode,
    )


class LipschitzDenoiser(deepinv.models.Denoiser):
    """1-Lipschitz CNN denoiser, a ``deepinv`` denoiser: ``forward(x, sigma=None)``.

    Input (B, C, H, W) with values in [0, 1] up to noise, any H and W; colour images are
    denoised channel by channel by the grayscale network. Output has the input's shape.
    ``sigma`` (float or (B,) tensor, [0, 1] scale) is only checked against the noise level
    the model was trained for: a mismatch gives a warning (the network is not
    noise-level conditioned). A NaN or infinite input is refused with a ValueError in eval
    mode; in training mode that scan is skipped (it would stall every GPU step on a device
    read-back) and the trainer checks the loss instead.

    On a CPU, in a process that has not applied :func:`lipden.memory.keep_freed_memory`
    (the command line applies it; a Python program using the library usually has not), an
    eval-mode call under ``torch.no_grad()`` (as in the solvers) runs the network in passes
    whose widest activation takes at most ``cpu_pass_bytes`` (several small images per pass,
    a large image in exact tiles; :func:`lipden.models.tiling.run_in_bounded_passes`). Same
    result; glibc then serves the activations from reused heap memory instead of fresh
    page-faulting ``mmap`` blocks, which made a forward on eight 256x256 images 1.75-2.4x
    faster on 2 CPU cores (``benchmarks/speed.py`` (g)). ``cpu_pass_bytes = None`` turns this off.
    """

    #: Activation bytes per pass on a CPU (16 MiB: 131,072 pixels at 32 channels in float32),
    #: below glibc's largest mmap threshold (32 MiB).
    cpu_pass_bytes: int | None = 16 * 2**20

    def __init__(self, config: DenoiserConfig | None = None) -> None:
        super().__init__()
        self.config = config or DenoiserConfig()
        c = self.config
        widths = [1] + [c.channels] * (c.depth - 1) + [1]
        layers: list[nn.Module] = []
        for index in range(c.depth):
            layers.append(_make_conv(c, widths[index], widths[index + 1]))
            if index < c.depth - 1:
                layers.append(make_activation(c.activation, c.channels, **_activation_kwargs(c)))
        self.body = nn.Sequential(*layers)

    @property
    def is_lipschitz_constrained(self) -> bool:
        return self.config.conv != "free"

    @property
    def trained_sigma(self) -> float | None:
        """The noise level the model was trained for ([0, 1] scale; None: unknown)."""
        return self.config.sigma

    def _check_sigma(self, sigma: float | Tensor | None) -> None:
        trained = self.config.sigma
        if sigma is None or trained is None:
            return
        values = sigma.detach().flatten().tolist() if isinstance(sigma, Tensor) else [float(sigma)]
        if any(not math.isclose(v, trained, rel_tol=0.02, abs_tol=1e-6) for v in values):
            warnings.warn(
                f"this denoiser was trained for sigma={trained:.4g} ({trained * 255:.3g}/255), "
                f"called with sigma={values[0]:.4g}; it is not noise-level conditioned",
                stacklevel=3,
            )

    def forward(self, x: Tensor, sigma: float | Tensor | None = None, **kwargs) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"expected an image tensor of shape (B, C, H, W), got {shape}")
        dtype = next(self.parameters()).dtype
        if x.dtype != dtype:
            raise ValueError(f"image dtype {x.dtype} does not match the model's {dtype}: convert with x.to({dtype})")
        if not self.training and not torch.isfinite(x).all():
            raise ValueError("the image contains NaN or inf values")
        self._check_sigma(sigma)
        b, c, h, w = x.shape
        planes = x.reshape(b * c, 1, h, w)
        max_pixels = self._cpu_pass_pixels(x)
        # training: one batched parametrisation pass for all convolutions, one for all splines
        with shared_training_weights(self.body), shared_spline_tables(self.body):
            if fused_chain_applies(self.body, planes):
                out = fused_chain(self.body, planes)
            elif max_pixels is None:
                out = self.body(planes)
            else:
                out = run_in_bounded_passes(self.body, planes, max_pixels)
        return out.reshape(b, c, h, w)

    def _cpu_pass_pixels(self, x: Tensor) -> int | None:
        """Pixels per pass for a bounded CPU evaluation of x, or None for one pass."""
        # under autograd (incl. torch.func transforms) one pass, one graph
        if self.training or torch.is_grad_enabled() or x.device.type != "cpu" or not self.cpu_pass_bytes:
            return None
        if freed_memory_kept():  # freed blocks are reused anyway: one pass is faster (no tile borders)
            return None
        return max(1, self.cpu_pass_bytes // (self.config.channels * x.element_size()))

    def lipschitz_certificate(self, input_shape: tuple[int, ...]) -> float:
        """Certified Lipschitz bound on (B, C, H, W) inputs (channels are independent)."""
        return lipschitz_upper_bound(self.body, (1, 1, *input_shape[-2:]))

    def averaged(self, alpha: float = 0.5) -> Averaged:
        """``(1 - alpha) Id + alpha N``: alpha-averaged (alpha = 1/2: firmly nonexpansive)."""
        return Averaged(self, alpha)

    def regularization(self) -> Tensor:
        """Sum of the TV2 of all spline activations (0 if there are none)."""
        total = total_tv2(m for m in self.modules() if isinstance(m, LinearSpline))
        return total if total is not None else torch.zeros((), device=next(self.parameters()).device)
