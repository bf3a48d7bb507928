"""The networks of the 1-D fitting benchmark, trained side by side: a batch of fully connected
1-Lipschitz networks (``BjorckLinear`` layers, width-10 activations) evaluated as one, their
extraction into plain ``nn.Sequential`` networks and the measured Lipschitz constant."""

from __future__ import annotations

import copy
from typing import cast

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from lipden import BjorckLinear, make_activation
from lipden.nn.orthogonal import bjorck_orthonormalize

ACTIVATIONS = ("spline", "relu", "absolute_value", "groupsort", "householder")
WIDTH = 10
DEPTH = 4  # linear layers; DEPTH - 1 activation layers
PIECES = 10
# Knots every 0.02 over [-1.5, 1.5]: the pre-activations start within [-1, 1] (orthonormal
# weights, zero biases, |x| <= 1); the margin leaves room for the learned biases.
SPLINE_KWARGS = {"num_knots": 151, "x_range": 1.5, "init": "absolute_value"}
LEARNING_RATES = {"linear": 2e-3, "spline_coefficients": 2e-3, "spline_scaling": 2e-3, "other": 2e-3}
TRAIN_POINTS = 1000
TEST_POINTS = 10001
LIPSCHITZ_GRID = 100001
LIPSCHITZ_PAIRS = 20000
LIPSCHITZ_INTERVAL = 1.5
LIPSCHITZ_TOLERANCE = 1e-4



# --- networks --------------------------------------------------------------------------------


def activation_kwargs(name: str) -> dict:
    return dict(SPLINE_KWARGS) if name == "spline" else {}


def initial_linear_layers(seed: int) -> list[BjorckLinear]:
    """The DEPTH BjorckLinear layers (default init) shared by all networks of one seed."""
    torch.manual_seed(seed)
    widths = [1] + [WIDTH] * (DEPTH - 1) + [1]
    return [BjorckLinear(widths[i], widths[i + 1]) for i in range(DEPTH)]


def _to_channels(h: Tensor, half_major: bool) -> Tensor:
    """(M, W, B) hidden states of M networks -> (1, M * W, B): channels of one activation.

    The batch of points is a "spatial" axis, so this is a view in network-major channel
    order (m, c). HouseHolder pairs channel i with channel i + C/2: the order (half, m, c)
    (a copy) pairs each network's two halves exactly as in a width-W module.
    """
    m, w, b = h.shape
    if half_major:
        return h.reshape(m, 2, w // 2, b).transpose(0, 1).reshape(1, m * w, b)
    return h.reshape(1, m * w, b)


def _from_channels(y: Tensor, m: int, half_major: bool) -> Tensor:
    _, c, b = y.shape
    w = c // m
    if half_major:
        return y.reshape(2, m, w // 2, b).transpose(0, 1).reshape(m, w, b)
    return y.reshape(m, w, b)


class ParallelNetworks(nn.Module):
    """Independent 1-Lipschitz networks evaluated as one batched computation.

    ``specs`` lists (activation, seed) per network, grouped by activation. Input (B, 1),
    output (M, 1, B): network m's output in row m. Hidden states are (M, W, B), so the
    linear layers are one batched matrix product and the activations see channels.
    """

    def __init__(self, specs: list[tuple[str, int]], bjorck_iters: int = 15) -> None:
        super().__init__()
        self.specs = specs
        self.bjorck_iters = bjorck_iters
        templates = {seed: initial_linear_layers(seed) for seed in sorted({s for _, s in specs})}
        self.raw_weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for layer in range(DEPTH):
            stack = [templates[seed][layer] for _, seed in specs]
            self.raw_weights.append(nn.Parameter(torch.stack([t.raw_weight.detach() for t in stack])))
            self.biases.append(nn.Parameter(torch.stack([cast(Tensor, t.bias).detach() for t in stack])))
        # Consecutive runs of one activation: (name, first network, count).
        self.groups: list[tuple[str, int, int]] = []
        for index, (name, _) in enumerate(specs):
            if self.groups and self.groups[-1][0] == name:
                self.groups[-1] = (name, self.groups[-1][1], self.groups[-1][2] + 1)
            else:
                self.groups.append((name, index, 1))
        self.activations = nn.ModuleList(
            nn.ModuleList(
                make_activation(name, count * WIDTH, **activation_kwargs(name))
                for name, _, count in self.groups
            )
            for _ in range(DEPTH - 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        h = x.T.unsqueeze(0)  # (1, 1, B), broadcast over the networks by the first layer
        for layer in range(DEPTH):
            weight = bjorck_orthonormalize(self.raw_weights[layer], self.bjorck_iters)
            bias = self.biases[layer].unsqueeze(2)
            h = weight * h + bias if layer == 0 else torch.baddbmm(bias, weight, h)
            if layer < DEPTH - 1:
                # split, not slicing: the backward of a slice zero-fills a full-size gradient
                chunks = h.split([count for _, _, count in self.groups])
                parts = []
                for (name, _, count), module, chunk in zip(
                    self.groups, cast(nn.ModuleList, self.activations[layer]), chunks, strict=True
                ):
                    half_major = name == "householder"
                    parts.append(_from_channels(module(_to_channels(chunk, half_major)), count, half_major))
                h = torch.cat(parts)
        return h

    def extract(self, index: int) -> nn.Sequential:
        """Network ``index`` alone, as BjorckLinear layers and width-10 activation modules."""
        group = next(g for g, (_, first, count) in enumerate(self.groups) if first <= index < first + count)
        name, first, count = self.groups[group]
        layers: list[nn.Module] = []
        for layer in range(DEPTH):
            out_features, in_features = self.raw_weights[layer].shape[1:]
            linear = BjorckLinear(in_features, out_features, bjorck_iters=self.bjorck_iters)
            with torch.no_grad():
                linear.raw_weight.copy_(self.raw_weights[layer][index])
                cast(Tensor, linear.bias).copy_(self.biases[layer][index])
            layers.append(linear)
            if layer < DEPTH - 1:
                big = cast(nn.ModuleList, self.activations[layer])[group]
                small = make_activation(name, WIDTH, **activation_kwargs(name))
                own = dict(small.named_parameters())
                with torch.no_grad():  # every activation parameter is per channel (or pair)
                    for pname, value in big.named_parameters():
                        own[pname].copy_(value.chunk(count)[index - first])
                layers.append(small)
        return nn.Sequential(*layers).eval()


def _param_groups(model: ParallelNetworks) -> list[dict]:
    groups: dict[str, list[nn.Parameter]] = {key: [] for key in LEARNING_RATES}
    for name, p in model.named_parameters():
        if name.startswith(("raw_weights", "biases")):
            groups["linear"].append(p)
        elif name.endswith("coefficients"):
            groups["spline_coefficients"].append(p)
        elif name.endswith("scaling"):
            groups["spline_scaling"].append(p)
        else:
            groups["other"].append(p)
    return [{"params": ps, "lr": LEARNING_RATES[key]} for key, ps in groups.items() if ps]


def train(model: ParallelNetworks, x: Tensor, y: Tensor, steps: int, progress: bool) -> Tensor:
    """Full-batch Adam, cosine-decayed lr; returns the final per-network training MSE (M,)."""
    optimizer = torch.optim.Adam(_param_groups(model))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    model.train()
    for _ in tqdm(range(steps), desc="fitting", disable=not progress):
        optimizer.zero_grad(set_to_none=True)
        per_network = (model(x) - y).square().mean(dim=(1, 2))  # (M,)
        per_network.sum().backward()
        optimizer.step()
        schedule.step()
    with torch.no_grad():
        return (model(x) - y).square().mean(dim=(1, 2))


# --- measurements ----------------------------------------------------------------------------


def _evaluate(net: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x).unsqueeze(1)).squeeze(1).numpy()


def measured_lipschitz(net: nn.Module, seed: int = 0) -> float:
    """Largest secant slope of a scalar network (float64 copy) on [-1.5, 1.5].

    Max over consecutive points of a fine grid (= max over all pairs of that grid) and over
    random pairs. Only evaluates the network: independent of how it is constrained.
    """
    net = copy.deepcopy(net).double().eval()
    a = LIPSCHITZ_INTERVAL
    grid = np.linspace(-a, a, LIPSCHITZ_GRID)
    values = _evaluate(net, grid)
    ratio = float(np.max(np.abs(np.diff(values)) / np.diff(grid)))
    rng = np.random.default_rng(seed)
    px, py = rng.uniform(-a, a, LIPSCHITZ_PAIRS), rng.uniform(-a, a, LIPSCHITZ_PAIRS)
    keep = np.abs(px - py) > 1e-9
    px, py = px[keep], py[keep]
    pairs = np.abs(_evaluate(net, px) - _evaluate(net, py)) / np.abs(px - py)
    return max(ratio, float(pairs.max()))


