"""1-D fitting of 1-Lipschitz targets with small 1-Lipschitz networks (paper's 1-D experiment).

Three targets on [-1, 1], all 1-Lipschitz:

- ``pwl_slopes_pm1``: random piecewise-linear function, 10 pieces, slopes alternating +-1;
- ``pwl_slopes_pm1_0``: random piecewise-linear function, 10 pieces, slopes in {-1, 0, 1};
- ``cosine``: ``cos(7 pi x) / (7 pi)``.

Each is fitted by fully connected networks 1 -> 10 -> 10 -> 10 -> 1 of
:class:`lipden.BjorckLinear` layers with one activation type between them (learned linear
spline with slopes clipped to [-1, 1], ReLU, |x|, GroupSort, HouseHolder), from several
initialisation seeds. The initial linear weights depend on the seed only, so every activation
and target starts from the same weights. Training: full-batch Adam on 1000 uniform random
points, cosine-decayed learning rate, no regularisation.

Measured, per (target, activation): median and best test MSE over the seeds on a uniform
grid of 10001 points of [-1, 1], and for every trained network the largest secant slope
``|f(x) - f(y)| / |x - y|`` over consecutive points of a 100001-point grid of [-1.5, 1.5]
and over 20000 random pairs there, in float64. For a scalar function the largest secant
slope over all pairs of grid points is attained by consecutive points, so the grid part is
the maximum over all pairs of that grid. This measurement only evaluates the network: it
does not use the constraint code. The certified bound (product of the layer certificates,
``lipden.lipschitz_upper_bound``) is recorded beside it.

For speed the networks of one run are trained together: the weights of all networks are
stacked and orthonormalised by one batched Björck call, and each activation type is one
module over the channels of all its networks (the activations act per channel, per pair of
channels or, for HouseHolder, per pair in a channel order chosen to keep pairs inside one
network). The losses are summed and Adam is element-wise, so each network follows exactly
the updates it would get alone. After training each network is extracted into a plain
``nn.Sequential`` of ``BjorckLinear`` and width-10 activation modules, checked to compute
the same function, and only the extracted networks are evaluated.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lipden import lipschitz_upper_bound

from .common import machine, save_figure, write_results
from .fitting_networks import (
    ACTIVATIONS,
    DEPTH,
    LEARNING_RATES,
    LIPSCHITZ_GRID,
    LIPSCHITZ_INTERVAL,
    LIPSCHITZ_PAIRS,
    LIPSCHITZ_TOLERANCE,
    PIECES,
    SPLINE_KWARGS,
    TEST_POINTS,
    TRAIN_POINTS,
    WIDTH,
    ParallelNetworks,
    _evaluate,
    measured_lipschitz,
    train,
)

__all__ = ["ACTIVATIONS", "ParallelNetworks", "make_targets", "run"]

# --- targets -------------------------------------------------------------------------------


def random_piecewise_linear(
    pieces: int, slopes: tuple[float, ...], seed: int
) -> Callable[[np.ndarray], np.ndarray]:
    """A random continuous piecewise-linear function on [-1, 1] with slopes from ``slopes``.

    Piece widths are Dirichlet(5) distributed (no vanishing pieces); consecutive pieces have
    different slopes, so there are exactly ``pieces - 1`` kinks. Values are centred on 0.
    """
    rng = np.random.default_rng(seed)
    widths = rng.dirichlet(np.full(pieces, 5.0)) * 2.0
    breaks = np.concatenate([[-1.0], -1.0 + np.cumsum(widths)])
    breaks[-1] = 1.0
    chosen = [float(rng.choice(slopes))]
    for _ in range(pieces - 1):
        chosen.append(float(rng.choice([s for s in slopes if s != chosen[-1]])))
    values = np.concatenate([[0.0], np.cumsum(np.array(chosen) * widths)])
    values -= 0.5 * (values.max() + values.min())

    def target(x: np.ndarray) -> np.ndarray:
        return np.interp(x, breaks, values)

    return target


def cosine_target(x: np.ndarray) -> np.ndarray:
    """cos(7 pi x) / (7 pi): 1-Lipschitz, slope +-1 at its steepest."""
    return np.cos(7 * np.pi * x) / (7 * np.pi)


def make_targets() -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    return {
        "pwl_slopes_pm1": random_piecewise_linear(PIECES, (-1.0, 1.0), seed=1),
        "pwl_slopes_pm1_0": random_piecewise_linear(PIECES, (-1.0, 0.0, 1.0), seed=2),
        "cosine": cosine_target,
    }


TARGET_DESCRIPTIONS = {
    "pwl_slopes_pm1": f"random piecewise-linear, {PIECES} pieces, slopes alternating +-1 (seed 1)",
    "pwl_slopes_pm1_0": f"random piecewise-linear, {PIECES} pieces, slopes in {{-1, 0, 1}} (seed 2)",
    "cosine": "cos(7 pi x) / (7 pi)",
}


# --- benchmark -------------------------------------------------------------------------------


def _plot(path: Path, targets: dict, fits: dict[str, dict[str, np.ndarray]], grid: np.ndarray, title: str) -> None:
    """Top row: target and best-seed fit per activation; bottom row: |error| (log scale)."""
    from matplotlib.figure import Figure  # Agg canvas, no global pyplot state

    fig = Figure(figsize=(5 * len(targets), 7.5), layout="constrained")
    axes = fig.subplots(2, len(targets), sharex=True, squeeze=False)
    for column, (name, target) in enumerate(targets.items()):
        top, bottom = axes[0, column], axes[1, column]
        truth = target(grid)
        top.plot(grid, truth, color="black", linewidth=3, alpha=0.3, label="target")
        for activation in ACTIVATIONS:
            fit = fits[name][activation]
            top.plot(grid, fit, linewidth=1, label=activation)
            bottom.semilogy(grid, np.abs(fit - truth) + 1e-12, linewidth=0.8, label=activation)
        top.set_title(name)
        bottom.set_xlabel("x")
        bottom.set_ylim(1e-7, 1)
    axes[0, 0].set_ylabel("f(x)")
    axes[1, 0].set_ylabel("|fit - target| (best seed)")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title)
    curves = {name: {activation: fits[name][activation].tolist() for activation in ACTIVATIONS} for name in targets}
    save_figure(fig, path, {"figure": "fitting", "title": title, "fits": curves}, dpi=90)


def _evaluate_all(model: ParallelNetworks, specs: list, target_of: list, targets: dict,
                  x_test: np.ndarray, train_mse) -> tuple[list[dict[str, Any]], dict, float]:
    """Each network evaluated alone (float64 copy), after checking the extraction; the runs and
    the best-seed fit per (target, activation)."""
    model.eval()
    with torch.no_grad():
        parallel_test = model(torch.from_numpy(x_test).float().unsqueeze(1)).squeeze(1).numpy()
    runs: list[dict[str, Any]] = []
    fits: dict[str, dict[str, tuple[float, np.ndarray]]] = {t: {} for t in targets}
    extraction_error = 0.0
    for index, ((activation, seed), target) in enumerate(zip(specs, target_of, strict=True)):
        net = model.extract(index)
        extraction_error = max(
            extraction_error,
            float(np.max(np.abs(_evaluate(net, x_test.astype(np.float32)) - parallel_test[index]))),
        )
        net64 = copy.deepcopy(net).double()
        prediction = _evaluate(net64, x_test)
        ratio = measured_lipschitz(net, seed=index)
        runs.append({
            "target": target,
            "activation": activation,
            "seed": seed,
            "train_mse": float(train_mse[index]),
            "test_mse": float(np.mean((prediction - targets[target](x_test)) ** 2)),
            "lipschitz_measured": ratio,
            "lipschitz_certified_bound": lipschitz_upper_bound(net, (1, 1)),
            "one_lipschitz": ratio <= 1 + LIPSCHITZ_TOLERANCE,
        })
        best_fit = fits[target].get(activation)
        if best_fit is None or runs[-1]["test_mse"] < best_fit[0]:
            fits[target][activation] = (runs[-1]["test_mse"], prediction)
    if extraction_error > 1e-4:
        raise RuntimeError(f"extracted networks differ from the trained ones by {extraction_error:.2e}")
    return runs, fits, extraction_error


def _summarise(runs: list[dict], targets: dict) -> dict[str, dict[str, dict]]:
    """Per (target, activation): median and best test MSE over the seeds, Lipschitz checks."""
    summary: dict[str, dict[str, dict]] = {t: {} for t in targets}
    for target in targets:
        for activation in ACTIVATIONS:
            group = [r for r in runs if r["target"] == target and r["activation"] == activation]
            best = min(group, key=lambda r: r["test_mse"])
            summary[target][activation] = {
                "median_test_mse": statistics.median(r["test_mse"] for r in group),
                "best_test_mse": best["test_mse"],
                "best_seed": best["seed"],
                "max_lipschitz_measured": max(r["lipschitz_measured"] for r in group),
                "all_one_lipschitz": all(r["one_lipschitz"] for r in group),
            }
    return summary


def _markdown(results: dict, targets: dict, quick: bool) -> str:
    summary, runs, all_certified = results["summary"], results["runs"], results["all_one_lipschitz"]
    seeds, steps = results["config"]["seeds"], results["config"]["steps"]
    figure_name, wall, train_time = results["figure"], results["wall_time_s"], results["train_time_s"]
    m = results["machine"]
    lines = [
        f"# 1-D fitting benchmark{' (QUICK: 2 seeds, 200 steps)' if quick else ''}",
        "",
        f"Networks 1 -> {WIDTH} -> {WIDTH} -> {WIDTH} -> 1 of BjorckLinear layers, "
        f"{steps} full-batch Adam steps on {TRAIN_POINTS} points, {seeds} seeds. "
        f"Spline: {SPLINE_KWARGS['num_knots']} knots on [-{SPLINE_KWARGS['x_range']}, "
        f"{SPLINE_KWARGS['x_range']}], slopes clipped to [-1, 1], init {SPLINE_KWARGS['init']}.",
        "",
        f"Test MSE on {TEST_POINTS} grid points of [-1, 1]: median over seeds (best seed).",
        "",
        "| activation | " + " | ".join(targets) + " |",
        "|---|" + "---|" * len(targets),
    ]
    for activation in ACTIVATIONS:
        cells = [
            f"{summary[t][activation]['median_test_mse']:.2e} ({summary[t][activation]['best_test_mse']:.2e})"
            for t in targets
        ]
        lines.append(f"| {activation} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Targets: " + "; ".join(f"`{t}`: {d}" for t, d in TARGET_DESCRIPTIONS.items()) + ".",
        "",
        f"1-Lipschitz check (largest secant slope, float64, {LIPSCHITZ_GRID} grid points and "
        f"{LIPSCHITZ_PAIRS} random pairs on [-{LIPSCHITZ_INTERVAL}, {LIPSCHITZ_INTERVAL}]): "
        f"max {results['max_lipschitz_measured']:.6f} over {len(runs)} networks; "
        f"all <= 1 + {LIPSCHITZ_TOLERANCE:g}: {'yes' if all_certified else 'NO'}.",
        "",
        f"Figure: `{figure_name}`. Wall time {wall:.0f} s ({train_time:.0f} s training) on "
        f"{m['cpu']}, torch {m['torch']} with {m['torch_threads']} thread(s).",
        "",
    ]
    return "\n".join(lines)


def run(quick: bool = False, output: str = "results") -> dict:
    """Fit the three targets with every activation; write fitting.json/.md/.png.

    Quick mode (2 seeds, 200 steps) writes ``fitting-quick.*`` so that it never replaces
    the full results (5 seeds, 3000 steps).
    """
    start = time.perf_counter()
    seeds = 2 if quick else 5
    steps = 200 if quick else 3000
    name = "fitting-quick" if quick else "fitting"
    targets = make_targets()

    rng = np.random.default_rng(0)
    x_train = np.sort(rng.uniform(-1.0, 1.0, TRAIN_POINTS))
    x_test = np.linspace(-1.0, 1.0, TEST_POINTS)
    specs = [(a, s) for a in ACTIVATIONS for _ in targets for s in range(seeds)]
    target_of = [t for _ in ACTIVATIONS for t in targets for _ in range(seeds)]
    x = torch.from_numpy(x_train).float().unsqueeze(1)
    y = torch.stack([torch.from_numpy(targets[t](x_train)).float() for t in target_of]).unsqueeze(1)

    model = ParallelNetworks(specs)
    train_mse = train(model, x, y, steps, progress=not quick)
    train_time = time.perf_counter() - start

    runs, fits, extraction_error = _evaluate_all(model, specs, target_of, targets, x_test, train_mse)
    summary = _summarise(runs, targets)
    all_certified = all(r["one_lipschitz"] for r in runs)
    figure = Path(output) / f"{name}.png"
    figure.parent.mkdir(parents=True, exist_ok=True)
    label = "QUICK: " if quick else ""
    _plot(
        figure, targets, {t: {a: fits[t][a][1] for a in ACTIVATIONS} for t in targets}, x_test,
        f"{label}1-Lipschitz networks {WIDTH}x{DEPTH}, best of {seeds} seeds, {steps} Adam steps",
    )
    wall = time.perf_counter() - start

    results: dict[str, Any] = {
        "quick": quick,
        "machine": machine(),
        "config": {
            "width": WIDTH, "depth_linear_layers": DEPTH, "activations": list(ACTIVATIONS),
            "spline": SPLINE_KWARGS, "learning_rates": LEARNING_RATES, "schedule": "cosine annealing to 0",
            "optimizer": "Adam, full batch", "steps": steps, "seeds": seeds, "train_points": TRAIN_POINTS,
            "test_points": TEST_POINTS,
            "lipschitz_check": {"interval": [-LIPSCHITZ_INTERVAL, LIPSCHITZ_INTERVAL], "grid_points": LIPSCHITZ_GRID,
                                "random_pairs": LIPSCHITZ_PAIRS, "tolerance": LIPSCHITZ_TOLERANCE,
                                "precision": "float64"},
        },
        "targets": TARGET_DESCRIPTIONS,
        "summary": summary,
        "runs": runs,
        "all_one_lipschitz": all_certified,
        "max_lipschitz_measured": max(r["lipschitz_measured"] for r in runs),
        "extraction_max_abs_diff": extraction_error,
        "train_time_s": train_time,
        "wall_time_s": wall,
        "figure": figure.name,
    }

    markdown = _markdown(results, targets, quick)
    print(markdown)
    write_results(output, name, results, markdown)
    return results
