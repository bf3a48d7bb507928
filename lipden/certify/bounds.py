"""Lipschitz certificates: a certified upper bound and a measured lower bound.

The upper bound of a composition is the product of per-layer bounds that are themselves
certified (never estimated from below): exact norms of circular convolutions from the DFT
of the kernel at the given image size, a circular embedding for zero padding, exact matrix
norms, and exact activation constants. The lower bound is the largest secant ratio
``||f(x) - f(y)|| / ||x - y||`` found by Jacobian power iteration and adversarial ascent;
any such ratio is a true lower bound of the Lipschitz constant.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from lipden.nn.conv_ops import conv_operator_norm_bound


class CertificationError(ValueError):
    """Raised when a module's Lipschitz constant cannot be certified."""


_CONSTANT_BOUNDS: dict[type, float] = {
    nn.Identity: 1.0,
    nn.Flatten: 1.0,
    nn.ReLU: 1.0,
    nn.Tanh: 1.0,
    nn.Sigmoid: 0.25,
    nn.Hardtanh: 1.0,
    nn.Softplus: 1.0,
}


def _plain_conv_bound(conv: nn.Conv2d, shape: tuple[int, ...]) -> float:
    k = conv.kernel_size
    padding = conv.padding if conv.padding != "same" else (k[0] // 2, k[1] // 2)
    if (
        conv.stride != (1, 1)
        or conv.dilation != (1, 1)
        or conv.groups != 1
        or k[0] % 2 == 0
        or k[1] % 2 == 0
        or tuple(padding) != (k[0] // 2, k[1] // 2)
        or conv.padding_mode not in ("zeros", "circular")
    ):
        raise CertificationError(
            f"cannot certify {conv}: only stride-1, 'same', zero or circular padded odd kernels"
        )
    return conv_operator_norm_bound(conv.weight.detach(), (shape[-2], shape[-1]), conv.padding_mode)


def _module_bound(module: nn.Module, shape: tuple[int, ...]) -> float:
    certificate = getattr(module, "lipschitz_certificate", None)
    if certificate is not None:
        return float(certificate(shape))
    if isinstance(module, nn.Sequential):
        bound = 1.0
        for child in module:
            bound *= _module_bound(child, shape)
            shape = _output_shape(child, shape)
        return bound
    if isinstance(module, nn.Conv2d):
        return _plain_conv_bound(module, shape)
    if isinstance(module, nn.Linear):
        return float(torch.linalg.matrix_norm(module.weight.detach().double(), ord=2))
    if isinstance(module, nn.LeakyReLU):
        return max(1.0, abs(module.negative_slope))
    if isinstance(module, nn.Dropout) and not module.training:
        return 1.0
    if type(module) in _CONSTANT_BOUNDS:
        return _CONSTANT_BOUNDS[type(module)]
    raise CertificationError(
        f"cannot certify a {type(module).__name__}: give it a lipschitz_certificate(input_shape) "
        "method or build it from nn.Sequential and certified layers"
    )


def _output_shape(module: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    declared = getattr(module, "output_shape", None)  # lipden layers and activations declare it
    if declared is not None:
        return tuple(declared(shape))
    reference = next(iter(module.parameters()), None)
    size = (1, *shape[1:])
    # zeros on the parameters' device and dtype (torch's defaults when there are none)
    probe = torch.zeros(size) if reference is None else reference.new_zeros(size)
    with torch.no_grad():
        return tuple(module(probe).shape)


def lipschitz_upper_bound(model: nn.Module, input_shape: tuple[int, ...]) -> float:
    """Certified upper bound of the Lipschitz constant (l2 -> l2) of ``model``.

    ``input_shape`` is (B, C, H, W) or (B, features); the bound holds for that size (the
    norms of convolutions depend on the image size and boundary). Supported: modules with
    a ``lipschitz_certificate(input_shape)`` method (all lipden layers, activations and
    models), ``nn.Sequential`` of supported modules, and plain ``nn.Conv2d`` (stride 1,
    'same'), ``nn.Linear`` and standard activations. Raises :class:`CertificationError`
    otherwise, never guesses.
    """
    return _module_bound(model, tuple(input_shape))


def float64_eval_copy(module: nn.Module) -> nn.Module:
    module = copy.deepcopy(module).double().eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _secant(f: Callable[[Tensor], Tensor], x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        num = (f(x) - f(y)).flatten(1).norm(dim=1)
        den = (x - y).flatten(1).norm(dim=1)
        return float((num / den).max())


def lipschitz_lower_bound(
    f: Callable[[Tensor], Tensor],
    input_shape: tuple[int, ...],
    num_points: int = 4,
    power_iterations: int = 25,
    ascent_steps: int = 50,
    value_range: tuple[float, float] = (0.0, 1.0),
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> float:
    """Largest secant ratio ``||f(x) - f(y)|| / ||x - y||`` found: a true lower bound.

    Runs, from ``num_points`` random inputs uniform in ``value_range``, power iteration on
    ``J^T J`` (J v by central differences, J^T u by autograd), then an adversarial Adam
    ascent of the ratio over the pair (x, y). A module is evaluated on a float64 copy in
    eval mode so that round-off cannot inflate the ratio; a plain callable is evaluated on
    ``dtype`` inputs (float64 by default).
    """
    if isinstance(f, nn.Module):
        reference = next(iter(f.parameters()), None)
        device = reference.device if reference is not None else torch.device("cpu")
        f = float64_eval_copy(f)
        dtype = torch.float64
    else:
        device = torch.device("cpu")
    generator = torch.Generator().manual_seed(seed)
    low, high = value_range
    shape = (num_points, *input_shape[1:])
    x = (torch.rand(shape, generator=generator, dtype=dtype) * (high - low) + low).to(device)
    v = torch.randn(shape, generator=generator, dtype=dtype).to(device)
    v = v / v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))
    step = 1e-3 * max(high - low, 1e-12)
    best = 0.0

    def unit(t: Tensor) -> Tensor:
        return t / t.flatten(1).norm(dim=1).clamp(min=1e-300).view(-1, *([1] * (t.dim() - 1)))

    for _ in range(power_iterations):
        with torch.no_grad():
            jv = (f(x + step * v) - f(x - step * v)) / (2 * step)
        xg = x.detach().requires_grad_(True)
        (jtjv,) = torch.autograd.grad(f(xg), xg, grad_outputs=jv)
        v = unit(jtjv)
        best = max(best, _secant(f, x + step * v, x))

    # Adversarial ascent of the ratio, starting along the power-iteration direction.
    a = x.clone().requires_grad_(True)
    b = (x + 10 * step * v).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([a, b], lr=step)
    for _ in range(ascent_steps):
        optimizer.zero_grad()
        num = (f(a) - f(b)).flatten(1).norm(dim=1)
        den = (a - b).flatten(1).norm(dim=1).clamp(min=1e-12)
        (-(torch.log(num + 1e-300) - torch.log(den)).sum()).backward()
        optimizer.step()
        best = max(best, _secant(f, a.detach(), b.detach()))
    return best


def lipschitz_bounds(
    model: nn.Module, input_shape: tuple[int, ...], **lower_kwargs
) -> tuple[float, float]:
    """(lower, upper): a measured lower bound and a certified upper bound of Lip(model)."""
    upper = lipschitz_upper_bound(model, input_shape)
    lower = lipschitz_lower_bound(model, input_shape, **lower_kwargs)
    return lower, upper
