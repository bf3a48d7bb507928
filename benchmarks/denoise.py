"""Gaussian denoising on BSD68 (issue 5): shipped denoisers vs classical baselines.

Measured, with the standard protocol of ``../shared/data/README.md`` (noise of standard
deviation sigma/255 drawn with seed 0 per image in sorted order, metrics on the output
clipped to [0, 1]; the protocol functions of :mod:`lipden.train.loop` that
:func:`lipden.train.publish.evaluate_folder` uses for the model cards):

- PSNR (dB, data range 1) and SSIM (scikit-image, Gaussian 11x11 window of std 1.5, data
  range 1, as Wang et al. 2004) averaged over the 68 BSD68 images at sigma 5, 15, 25;
- rows: every shipped denoiser at its own training sigma (unconstrained ``conv="free"``
  models are labelled "no guarantee"), deepinv's TV and wavelet denoisers with their one
  parameter tuned on set12 (a log grid per sigma, never on BSD68), BM3D when the optional
  ``bm3d`` package is installed, and the noisy input;
- the certified Lipschitz bound of our models, their parameter count, and the time per
  megapixel of every method (median of interleaved runs on one image, eval mode, no grad).

Published numbers of other methods are listed apart: they are not measured here.
Quick mode: the first 4 BSD68 images at sigma 15, tuning on 2 set12 images, one timing run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import deepinv
import numpy as np
import torch
from torch import Tensor

from lipden.certify.bounds import CertificationError, lipschitz_upper_bound
from lipden.io import list_images, load_grayscale
from lipden.metrics import psnr, ssim
from lipden.models.pretrained import denoiser_card, list_denoisers, load_denoiser
from lipden.nn.splines import get_spline_backend
from lipden.train.config import DEFAULT_DATA
from lipden.train.data import noisy_versions
from lipden.train.publish import evaluate_folder

from .common import interleaved_medians, machine, save_figure, write_results
from .denoise_markdown import FIGURE_IMAGE, FIGURE_SIGMA, SIGMAS, _fmt, _markdown

QUICK_SIGMAS = (15,)
QUICK_IMAGES = 4
QUICK_TUNING_IMAGES = 2
# Log grids of the single parameter, in multiples of sigma (on the [0, 1] scale).
TV_FACTORS = tuple(0.35 * 2 ** (k / 2) for k in range(4))  # 0.35 ... 0.99
WAVELET_FACTORS = tuple(0.5 * 2 ** (k / 2) for k in range(6))  # 0.5 ... 2.83
FIGURE_CROP = (slice(80, 208), slice(120, 248))  # 128 x 128
FIGURE_ROWS = {"spline-sigma15": "1-Lip. spline", "relu-sigma15": "1-Lip. ReLU", "TV (deepinv TVDenoiser)": "TV"}
PUBLISHED = [  # BSD68 PSNR (dB) at sigma 5 / 15 / 25, from the papers: not measured here
    ("BM3D", {15: 31.07, 25: 28.57}, "Dabov et al. 2007, as reported by Zhang et al. 2017 (DnCNN)"),
    ("DnCNN", {15: 31.73, 25: 29.23}, "Zhang et al. 2017 (unconstrained, no Lipschitz guarantee)"),
    ("CRR-NN", {5: 36.96, 15: 30.55, 25: 28.10}, "Goujon et al. 2023 (1-Lipschitz convex ridge regularizer)"),
]

PROTOCOL = ("AWGN sigma/255 on [0,1] images, torch.manual_seed(0) per image in sorted order; "
            "PSNR (data range 1) and SSIM (skimage, gaussian window 1.5, data range 1) of the clipped output")
#: what a row keeps from the last run when its reuse_key (weights sha256, or method and grid) is unchanged
REUSED_FIELDS = ("psnr", "ssim", "per_image_psnr", "tuned", "lipschitz_bound", "lipschitz_bound_size")

Denoise = Callable[[Tensor], Tensor]  # (1, 1, H, W) noisy -> (1, 1, H, W) estimate


def _with_parameter(apply: Callable[[Tensor, float], Tensor], value: float) -> Denoise:
    return lambda y: apply(y, value)


def _data_folders() -> tuple[Path, Path]:
    bsd68, set12 = DEFAULT_DATA / "bsd68", DEFAULT_DATA / "set12"
    for folder in (bsd68, set12):
        if not folder.is_dir():
            raise ValueError(
                f"the denoise benchmark needs the BSD68 and Set12 images of ../shared/data; "
                f"{folder} not found"
            )
    return bsd68, set12


def _previous_rows(output: str, quick: bool, files: list[Path]) -> dict[tuple[str, int], dict]:
    """The rows of this table's last run on the same images, by (name, sigma), for reuse."""
    path = Path(output) / f"denoise{'-quick' if quick else ''}.json"
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if previous.get("images") != [p.name for p in files] or previous.get("protocol") != PROTOCOL:
        return {}
    return {(row["name"], row["sigma"]): row for row in previous.get("rows", []) if row.get("reuse_key")}


def _reused(previous: dict[tuple[str, int], dict], row: dict) -> dict | None:
    """The earlier measurement of ``row`` when its inputs (``reuse_key``) are unchanged."""
    earlier = previous.get((row["name"], row["sigma"]))
    if earlier is None or earlier.get("reuse_key") != row["reuse_key"]:
        return None
    return {key: earlier[key] for key in REUSED_FIELDS if key in earlier}


@torch.no_grad()
def score_denoiser(denoise: Denoise, clean: list[Tensor], noisy: list[Tensor]) -> dict:
    """Mean PSNR / SSIM over the images, per-image PSNR and the first output (for the figure)."""
    psnrs: list[float] = []
    ssims: list[float] = []
    first = None
    for x, y in zip(clean, noisy, strict=True):
        out = denoise(y[None, None])[0, 0]
        first = out if first is None else first
        psnrs.append(psnr(out, x))
        similarity = ssim(out, x, window="gaussian")
        assert similarity is not None  # test images are far above 3 pixels a side
        ssims.append(similarity)
    return {
        "psnr": sum(psnrs) / len(psnrs), "ssim": sum(ssims) / len(ssims),
        "per_image_psnr": [round(p, 4) for p in psnrs], "first_output": first,
    }


@torch.no_grad()
def _tune(
    apply: Callable[[Tensor, float], Tensor], grid: list[float], clean: list[Tensor], noisy: list[Tensor]
) -> dict:
    """Pick the grid value with the best mean PSNR on the tuning images (set12)."""
    scores = []
    for value in grid:
        values = [psnr(apply(y[None, None], value)[0, 0], x) for x, y in zip(clean, noisy, strict=True)]
        scores.append(sum(values) / len(values))
    best = max(range(len(grid)), key=scores.__getitem__)
    return {
        "value": grid[best], "grid": grid, "set12_psnr": [round(s, 4) for s in scores],
        "at_grid_edge": best in (0, len(grid) - 1),
    }


def _classical_methods() -> dict[str, tuple[Callable[[Tensor, float], Tensor] | None, tuple[float, ...], str]]:
    """name -> (apply(noisy, parameter) or None when unavailable, grid factors, note)."""
    methods: dict = {}
    tv = deepinv.models.TVDenoiser()  # deepinv 0.5: models.TVDenoiser (not optim)

    def tv_apply(y: Tensor, ths: float) -> Tensor:
        tv.restart = True  # no warm start from the previous image: each call is independent
        return tv(y, ths)

    methods["TV (deepinv TVDenoiser)"] = (
        tv_apply, TV_FACTORS, f"prox of TV, Chambolle-Pock, n_it_max={tv.n_it_max}, crit={tv.crit}",
    )
    try:
        wavelet = deepinv.models.WaveletDenoiser()  # db8, 3 levels, soft thresholding
        wavelet(torch.zeros(1, 1, 32, 32), 0.1)  # its backend (ptwt) is imported on first use
        methods["wavelet (deepinv WaveletDenoiser)"] = (
            lambda y, ths: wavelet(y, ths), WAVELET_FACTORS, "db8, 3 levels, soft thresholding",
        )
    except (ImportError, RuntimeError):
        methods["wavelet (deepinv WaveletDenoiser)"] = (
            None, WAVELET_FACTORS, "skipped: optional ptwt package (deepinv's wavelet backend) not installed",
        )
    try:
        import bm3d

        def bm3d_apply(y: Tensor, sigma: float) -> Tensor:
            out = bm3d.bm3d(y[0, 0].double().numpy(), sigma_psd=sigma)
            return torch.from_numpy(np.ascontiguousarray(out)).float()[None, None]

        methods["BM3D"] = (bm3d_apply, (1.0,), "bm3d package, sigma_psd = true sigma (not tuned)")
    except ImportError:
        methods["BM3D"] = (None, (1.0,), "skipped: optional bm3d package not installed")
    return methods


def _save_figure(path: Path, clean: Tensor, panels: list[tuple[str, Tensor]]) -> None:
    """Crops side by side (rewritten only when the crops or their titles change)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = FIGURE_CROP
    items = [("clean", clean)] + panels
    crops = [(title, image.clamp(0, 1)[rows, cols].numpy()) for title, image in items]
    fig, axes = plt.subplots(1, len(items), figsize=(2.6 * len(items), 3.0))
    for ax, (title, crop) in zip(np.atleast_1d(axes), crops, strict=True):
        ax.imshow(crop, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path, {"figure": "denoising crops", "panels": crops}, dpi=120)


def _load(quick: bool) -> dict:
    """Test (BSD68) and tuning (Set12) images, clean and noisy per sigma, and the timing crop."""
    bsd68, set12 = _data_folders()
    torch.manual_seed(0)
    sigmas = QUICK_SIGMAS if quick else SIGMAS
    files = list_images(bsd68)[: QUICK_IMAGES if quick else None]
    clean = [load_grayscale(p) for p in files]
    tune_clean = [load_grayscale(p) for p in list_images(set12)[: QUICK_TUNING_IMAGES if quick else None]]
    return {
        "bsd68": bsd68, "sigmas": sigmas, "files": files, "clean": clean,
        "noisy": {s: noisy_versions(clean, s / 255) for s in sigmas}, "tune_clean": tune_clean,
        "tune_noisy": {s: noisy_versions(tune_clean, s / 255) for s in sigmas},
        # Timing image: the first BSD68 image (481x321 or 321x481), a 256x256 crop in quick mode.
        "timing_crop": (slice(0, 256), slice(0, 256)) if quick else (slice(None), slice(None)),
    }


def _shipped_rows(data: dict, quick: bool, add_row: Callable, base: dict) -> tuple[list[str], list[dict]]:
    """Rows of every shipped denoiser at its own training sigma; the skipped models and the
    checks that this protocol agrees with the one that wrote the model cards."""
    skipped: list[str] = []
    protocol_checks: list[dict] = []
    clean, sigmas = data["clean"], data["sigmas"]
    cards = {name: denoiser_card(name) for name in list_denoisers()}
    for name in sorted(cards, key=lambda n: (cards[n]["activation"] != "spline", n)):
        card = cards[name]
        sigma = round(card["sigma_255"])
        if sigma not in sigmas:
            skipped.append(f"{name} (sigma {sigma} not in this run)")
            continue
        model: torch.nn.Module = load_denoiser(name)  # checked against its card's sha256
        free = card["config"].get("conv") == "free"
        row = {
            **base, "name": name, "kind": "ours", "sigma": sigma, "activation": card["activation"],
            "conv": card["config"].get("conv"), "guarantee": "no guarantee" if free else "1-Lipschitz",
            "parameters": sum(p.numel() for p in model.parameters()),
            "card_bsd68_psnr": card.get("bsd68_psnr"),
            "note": "unconstrained CNN (conv='free'): no Lipschitz guarantee" if free else "",
            "reuse_key": {"weights_sha256": card["sha256"]},
        }
        # Quick mode: the card's certificate (40x40); full mode: certified here at the BSD68
        # size (for images above 96x96 pixels, the size-independent bound), unless reused.
        bound_size: tuple[int, ...]
        if quick:
            bound_size, bound = (40, 40), card.get("certified_lipschitz_40x40")
        elif _reused(data["previous"], row) is None:
            bound_size = tuple(clean[0].shape)
            try:
                bound = lipschitz_upper_bound(model, (1, 1, *bound_size))
            except CertificationError:
                bound = None
        else:
            bound_size, bound = tuple(clean[0].shape), None  # both taken from the last run
        row.update(lipschitz_bound=bound, lipschitz_bound_size=list(bound_size))
        add_row(row, partial(model, sigma=sigma / 255), sigma)
        # The protocol must agree with lipden.train.publish.evaluate_folder, which wrote the cards:
        # full mode compares with the card, quick mode reruns it on the same images once.
        if not quick and row["card_bsd68_psnr"] is not None:
            reference = float(row["card_bsd68_psnr"])
        elif quick and not protocol_checks:
            reference = evaluate_folder(model, data["bsd68"], sigma / 255, limit=len(clean))
        else:
            continue
        agree = abs(reference - row["psnr"]) < 1e-3  # cards are rounded to 4 decimals
        protocol_checks.append({"model": name, "reference_psnr": reference, "benchmark_psnr": row["psnr"],
                                "reference": "evaluate_folder" if quick else "model card", "agree": agree})
        if not agree:
            print(f"  WARNING: protocol mismatch: {protocol_checks[-1]}", flush=True)
    return skipped, protocol_checks


def _classical_rows(data: dict, add_row: Callable, base: dict) -> None:
    """Classical baselines, one parameter tuned per sigma on set12."""
    for name, (apply_param, factors, note) in _classical_methods().items():
        for sigma in data["sigmas"]:
            row = {**base, "name": name, "kind": "classical", "sigma": sigma, "guarantee": "-", "note": note}
            if apply_param is None:
                add_row(row, None, sigma)
                continue
            grid = [round(f * sigma / 255, 6) for f in factors]
            row["reuse_key"] = {"note": note, "grid": grid, "tuning_images": len(data["tune_clean"])}
            earlier = _reused(data["previous"], row)
            if len(factors) > 1:
                row["tuned"] = earlier["tuned"] if earlier else _tune(apply_param, grid, data["tune_clean"],
                                                                       data["tune_noisy"][sigma])
                value = row["tuned"]["value"]
            else:
                value = sigma / 255
            add_row(row, _with_parameter(apply_param, value), sigma)


def _figure(data: dict, figure: dict[str, Tensor], path: Path) -> None:
    """Crops at sigma 15 of the first image: noisy, two of our models and TV."""
    clean, noisy_image = data["clean"][FIGURE_IMAGE], data["noisy"][FIGURE_SIGMA][FIGURE_IMAGE]
    panels = [(f"noisy sigma={FIGURE_SIGMA} ({psnr(noisy_image, clean):.2f} dB)", noisy_image)]
    for key, label in FIGURE_ROWS.items():
        if key in figure:
            panels.append((f"{label} ({psnr(figure[key], clean):.2f} dB)", figure[key]))
    _save_figure(path, clean, panels)


def run(quick: bool = False, output: str = "results", force: bool = False) -> dict:
    """Measure the table (see the module docstring); write denoise[-quick].{json,md,png}.

    A row whose inputs are unchanged since the last run on the same images (the weights'
    sha256 for a shipped model; the method, its grid and the tuning images for a classical
    one) keeps its PSNR, SSIM, tuning and bound from that run (``force``: measure all again);
    the noisy rows, the figure and the timings are always measured now."""
    started = time.perf_counter()
    data = _load(quick)
    data["previous"] = {} if force else _previous_rows(output, quick, data["files"])
    clean, noisy, sigmas, timing_crop = data["clean"], data["noisy"], data["sigmas"], data["timing_crop"]
    timing_pixels = clean[0][timing_crop].numel()
    rows: list[dict] = []
    timers: dict[str, Callable[[], object]] = {}
    figure: dict[str, Tensor] = {}

    def add_row(row: dict, denoise: Denoise | None, sigma: int) -> None:
        earlier = _reused(data["previous"], row) if "reuse_key" in row else None
        if denoise is not None and earlier is not None:
            row.update(earlier, reused=True)
            if sigma == FIGURE_SIGMA and row["name"] in FIGURE_ROWS:
                with torch.no_grad():
                    figure[row["name"]] = denoise(noisy[sigma][FIGURE_IMAGE][None, None])[0, 0]
        elif denoise is not None:
            scored = score_denoiser(denoise, clean, noisy[sigma])
            if sigma == FIGURE_SIGMA:
                figure[row["name"]] = scored.pop("first_output")
            scored.pop("first_output", None)
            row.update(scored)
        if denoise is not None:
            timing_input = noisy[sigma][0][timing_crop][None, None].contiguous()
            if row["kind"] != "input":
                timers[f"{row['name']} @ {sigma}"] = lambda: denoise(timing_input)
        rows.append(row)
        print(f"  {row['name']:<38} sigma {sigma:>2}: PSNR {_fmt(row.get('psnr'))} dB, "
              f"SSIM {_fmt(row.get('ssim'), 4)}  ({'as in the last run' if row.get('reused') else 'measured'}, "
              f"{time.perf_counter() - started:.0f} s)", flush=True)

    base = {"psnr": None, "ssim": None, "lipschitz_bound": None, "parameters": None, "tuned": None, "note": ""}
    for sigma in sigmas:
        add_row({**base, "name": "noisy input", "kind": "input", "sigma": sigma}, lambda y: y, sigma)
    skipped, protocol_checks = _shipped_rows(data, quick, add_row, base)
    _classical_rows(data, add_row, base)

    # Time per megapixel: one image, eval mode, no grad, runs interleaved across methods.
    print(f"  timing {len(timers)} methods ...", flush=True)
    with torch.no_grad():
        times = interleaved_medians(timers, repeats=1 if quick else 3, warmup=1)
    for row in rows:
        key = f"{row['name']} @ {row['sigma']}"
        row["seconds_per_megapixel"] = times[key] / (timing_pixels / 1e6) if key in times else None

    figure_path = Path(output) / f"denoise{'-quick' if quick else ''}.png" if FIGURE_SIGMA in sigmas else None
    if figure_path is not None:
        _figure(data, figure, figure_path)
    results = {
        "quick": quick, "machine": machine(), "images": [p.name for p in data["files"]], "sigmas": list(sigmas),
        "tuning_images": len(data["tune_clean"]), "protocol": PROTOCOL,
        "reused_rows": [f"{row['name']} @ {row['sigma']}" for row in rows if row.get("reused")],
        "spline_kernel": get_spline_backend(),
        "protocol_checks": protocol_checks, "timing_image_shape": list(clean[0][timing_crop].shape),
        "rows": rows, "skipped_models": skipped, "figure": str(figure_path) if figure_path else None,
        "published_not_measured": [{"method": m, "bsd68_psnr": v, "source": s} for m, v, s in PUBLISHED],
        "wall_seconds": time.perf_counter() - started,
    }
    markdown = _markdown(results, quick)
    print(markdown)
    write_results(output, "denoise" + ("-quick" if quick else ""), results, markdown)
    return results
