"""The learned spline activations of the shipped spline denoisers (figure + per-layer stats).

For each model (``spline-sigma15``; in full mode also ``spline-sigma5`` and ``spline-sigma25``)
and each of its :class:`lipden.LinearSpline` layers (one learned function per channel):

- second-order total variation per channel, TV2 = sum of |slope jumps| (``learned_functions``);
  per layer mean / median / max TV2 and the largest |slope| (at most 1: 1-Lipschitz);
- the shape of each channel's function on its knot range ``[-a, a]`` (input units): its
  largest distance to the chord through the end knots and to the nearest ``+-|x| + c``,
  divided by a; the fraction of channels that are nearly linear or |x|-like (distance
  <= 0.05 a) and monotone (all slopes of one sign, up to 1e-3);
- where the Set12 images are available: the inputs each layer receives on the first Set12
  image with Gaussian noise at the model's sigma, as the fraction inside the knot range
  ``[-x_range / alpha, x_range / alpha]`` (outside it the spline is linear).

The figure shows, per layer, six channels at the 0, 20, ..., 100 % quantiles of that
layer's TV2 (lowest to highest), over the knot range plus 25 % on each side (the linear
extension dashed), with |x| in grey for reference.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import Tensor, nn

from lipden import LinearSpline, list_denoisers, load_denoiser
from lipden.train.config import DEFAULT_DATA

from .common import machine, save_figure, write_results

MODELS = ("spline-sigma15", "spline-sigma5", "spline-sigma25")
CHANNELS_SHOWN = 6
SHAPE_TOLERANCE = 0.05
MONOTONE_TOLERANCE = 1e-3
MARGIN = 0.25
SET12 = DEFAULT_DATA / "set12"


def spline_layers(model: nn.Module) -> list[LinearSpline]:
    return [m for m in model.modules() if isinstance(m, LinearSpline)]


def shape_deviations(spline: LinearSpline) -> tuple[Tensor, Tensor]:
    """Per channel, relative to the knot-range half-width a (input units), on the knots:

    - from linear: largest distance to the chord through the two end knots, / a;
    - from |x|: ``min over s = +-1`` of half the spread of ``f(t) - s |t|``, / a (the
      distance to the nearest ``s |x| + constant``).
    Both are 0 for an exact match; |x| is at distance 1 from linear.
    """
    f = spline.learned_functions()
    t, v = f.knots, f.values  # (C, K)
    a = t[:, -1:]
    chord = v[:, :1] + (v[:, -1:] - v[:, :1]) * (t - t[:, :1]) / (t[:, -1:] - t[:, :1])
    from_linear = (v - chord).abs().amax(dim=1) / a[:, 0]
    spreads = []
    for sign in (1.0, -1.0):
        d = v - sign * t.abs()
        spreads.append((d.amax(dim=1) - d.amin(dim=1)) / 2)
    from_abs = torch.minimum(*spreads) / a[:, 0]
    return from_linear, from_abs


def layer_stats(spline: LinearSpline) -> dict:
    """TV2 and shape statistics of one spline layer's per-channel functions."""
    f = spline.learned_functions()
    tv2, slopes = f.tv2, f.slopes
    from_linear, from_abs = shape_deviations(spline)
    monotone = (slopes >= -MONOTONE_TOLERANCE).all(dim=1) | (slopes <= MONOTONE_TOLERANCE).all(dim=1)
    half_width = spline.x_range / spline.alpha().detach()
    return {
        "channels": int(tv2.numel()),
        "tv2_mean": float(tv2.mean()),
        "tv2_median": float(tv2.median()),
        "tv2_max": float(tv2.max()),
        "tv2_total": float(tv2.sum()),
        "max_abs_slope": float(slopes.abs().max()),
        "deviation_from_linear_median": float(from_linear.median()),
        "deviation_from_abs_median": float(from_abs.median()),
        "fraction_nearly_linear": float((from_linear <= SHAPE_TOLERANCE).float().mean()),
        "fraction_abs_like": float((from_abs <= SHAPE_TOLERANCE).float().mean()),
        "fraction_monotone": float(monotone.float().mean()),
        "knot_range_half_width_median": float(half_width.median()),
    }


def input_coverage(model: nn.Module, image: Tensor, sigma: float) -> list[dict]:
    """Per spline layer: fraction of its inputs inside the knot range, on one noisy image."""
    splines = spline_layers(model)
    seen: dict[int, Tensor] = {}
    hooks = [
        s.register_forward_pre_hook(lambda module, args, i=i: seen.__setitem__(i, args[0].detach()))
        for i, s in enumerate(splines)
    ]
    try:
        generator = torch.Generator().manual_seed(0)
        noisy = image + sigma * torch.randn(image.shape, generator=generator)
        with torch.no_grad():
            model(noisy[None, None])
    finally:
        for hook in hooks:
            hook.remove()
    coverage = []
    for i, s in enumerate(splines):
        x = seen[i].transpose(0, 1).reshape(s.num_activations, -1)  # (C, pixels)
        half_width = (s.x_range / s.alpha().detach()).unsqueeze(1)
        coverage.append({
            "fraction_inside_knot_range": float((x.abs() <= half_width).float().mean()),
            "input_abs_p99": float(x.abs().flatten().quantile(0.99)),
        })
    return coverage


def _channels_to_show(tv2: Tensor, count: int) -> list[int]:
    order = tv2.argsort().tolist()
    return [order[round(q * (len(order) - 1) / (count - 1))] for q in range(count)]


def plot_model(path: Path, name: str, splines: list[LinearSpline], title_note: str = "") -> None:
    """Rows: spline layers; columns: channels at TV2 quantiles; each titled with its TV2."""
    from matplotlib.figure import Figure  # Agg canvas, no global pyplot state

    rows, cols = len(splines), CHANNELS_SHOWN
    fig = Figure(figsize=(2.3 * cols, 1.9 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    plotted: list = []
    for row, spline in enumerate(splines):
        f = spline.learned_functions()
        half_width = spline.x_range / spline.alpha().detach()
        for col, channel in enumerate(_channels_to_show(f.tv2, cols)):
            a = float(half_width[channel])
            x = torch.linspace(-(1 + MARGIN) * a, (1 + MARGIN) * a, 401)
            inputs = torch.zeros(x.numel(), spline.num_activations)
            inputs[:, channel] = x
            with torch.no_grad():
                y = spline(inputs)[:, channel]
            inside = x.abs() <= a
            ax = axes[row, col]
            ax.plot(x, x.abs(), color="0.8", linewidth=1)
            ax.plot(x[inside], y[inside], color="C0", linewidth=1.3)
            for side in (x < -a, x > a):
                ax.plot(x[side], y[side], color="C0", linewidth=1, linestyle="--")
            ax.set_title(f"layer {row + 1} ch {channel}: TV2 {float(f.tv2[channel]):.2f}", fontsize=8)
            plotted.append([row, channel, a, y.tolist()])
            ax.tick_params(labelsize=6)
    fig.suptitle(
        f"{title_note}{name}: learned splines, channels at TV2 quantiles 0-100 % per layer "
        "(grey: |x|, dashed: linear extension)",
        fontsize=10,
    )
    save_figure(fig, path, {"figure": "activations", "title": f"{title_note}{name}", "curves": plotted}, dpi=80)


def _model_entry(name: str, folder: Path, suffix: str, image: Tensor | None, quick: bool) -> dict:
    """One model's per-layer statistics (with the input coverage on ``image``) and its figure."""
    model = load_denoiser(name)
    splines = spline_layers(model)
    layers = [layer_stats(s) for s in splines]
    if image is not None:
        sigma = model.config.sigma
        if sigma is None:
            raise ValueError(f"{name} records no training noise level")
        for stats, coverage in zip(layers, input_coverage(model, image, sigma), strict=True):
            stats.update(coverage)
    figure = folder / f"activations-{name}{suffix}.png"
    plot_model(figure, name, splines, "QUICK: " if quick else "")
    first = splines[0]
    return {"spline": {"num_knots": first.num_knots, "x_range": first.x_range, "init": first.init},
            "layers": layers, "figure": figure.name}


def run(quick: bool = False, output: str = "results") -> dict:
    """Plot and summarise the learned splines; quick mode: spline-sigma15 only, ``-quick`` files."""
    from lipden.io import list_images, load_grayscale

    started = time.perf_counter()
    shipped = set(list_denoisers())
    names = [n for n in (MODELS[:1] if quick else MODELS) if n in shipped]
    if not names:
        raise RuntimeError(f"none of {', '.join(MODELS)} is shipped")
    suffix = "-quick" if quick else ""
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    image = None
    if SET12.is_dir():
        image = load_grayscale(list_images(SET12)[0])
        if quick:
            image = image[:128, :128]

    models = {name: _model_entry(name, folder, suffix, image, quick) for name in names}

    results = {
        "quick": quick,
        "machine": machine(),
        "thresholds": {
            "shape_deviation": SHAPE_TOLERANCE,
            "monotone_slope_tolerance": MONOTONE_TOLERANCE,
        },
        "coverage_image": str(list_images(SET12)[0].name) if image is not None else None,
        "models": models,
        "wall_seconds": time.perf_counter() - started,
    }

    lines = [f"# Learned spline activations{' (QUICK: spline-sigma15 only, 128x128 crop)' if quick else ''}", ""]
    lines += [
        "Per layer: TV2 = sum of |slope jumps| per channel. Deviation from linear / from |x|: "
        "largest distance on the knots to the chord through the end knots / to the nearest "
        "+-|x| + constant, relative to the knot-range half-width a (|x| is at 1 from linear); "
        f"nearly linear / |x|-like: deviation <= {SHAPE_TOLERANCE}; monotone: slopes of one sign.",
        "",
    ]
    if image is not None:
        lines += [
            f"Inside range: fraction of the layer's inputs within the knot range on Set12 "
            f"`{results['coverage_image']}` + Gaussian noise at the model's sigma (seed 0).",
            "",
        ]
    for name, info in models.items():
        spline = info["spline"]
        lines += [
            f"## {name}",
            "",
            f"{spline['num_knots']} knots on [-{spline['x_range']}, {spline['x_range']}] "
            f"(before the learned scaling), init {spline['init']}. Figure: `{info['figure']}`.",
            "",
            "| layer | channels | TV2 mean | TV2 median | TV2 max | max abs slope | median dev. "
            "from \\|x\\| | nearly linear | \\|x\\|-like | monotone | a (median) | inside range |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for index, s in enumerate(info["layers"], start=1):
            inside = f"{100 * s['fraction_inside_knot_range']:.1f}%" if "fraction_inside_knot_range" in s else "n/a"
            lines.append(
                f"| {index} | {s['channels']} | {s['tv2_mean']:.3f} | {s['tv2_median']:.3f} | "
                f"{s['tv2_max']:.3f} | {s['max_abs_slope']:.4f} | {s['deviation_from_abs_median']:.3f} | "
                f"{100 * s['fraction_nearly_linear']:.0f}% | "
                f"{100 * s['fraction_abs_like']:.0f}% | {100 * s['fraction_monotone']:.0f}% | "
                f"{s['knot_range_half_width_median']:.3f} | {inside} |"
            )
        lines.append("")
    lines += [f"Wall time: {results['wall_seconds']:.0f} s.", ""]
    markdown = "\n".join(lines)
    print(markdown)
    write_results(output, f"activations{suffix}", results, markdown)
    return results
