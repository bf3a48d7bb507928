"""The Markdown page of the denoising benchmark (``denoise[-quick].md``), from its results."""

from __future__ import annotations

import math
from pathlib import Path

SIGMAS = (5, 15, 25)
FIGURE_SIGMA = 15
FIGURE_IMAGE = 0  # index in sorted BSD68 order


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _markdown(results: dict, quick: bool) -> str:
    m = results["machine"]
    n = len(results["images"])
    h, w = results["timing_image_shape"]
    lines = [
        f"# Denoising on BSD68{' (QUICK: first 4 images, sigma 15 only)' if quick else ''}",
        "",
        f"{n} BSD68 images; {results['protocol']}. Classical parameters tuned on "
        f"{results['tuning_images']} Set12 images only. Machine: {m['cpu']}, {m['cores']} cores, "
        f"torch {m['torch']} with {m['torch_threads']} threads; time per megapixel on one {h}x{w} image "
        "(median of interleaved runs, eval mode, no grad"
        + (f", {results['spline_kernel']} spline kernel" if results.get("spline_kernel", "eager") != "eager" else "")
        + ").",
        "",
    ]
    for sigma in results["sigmas"]:
        lines += [
            f"## sigma = {sigma}",
            "",
            "| method | guarantee | PSNR (dB) | SSIM | certified Lip. bound | parameters | s / megapixel | note |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in (r for r in results["rows"] if r["sigma"] == sigma):
            bound = row["lipschitz_bound"]
            bound_text = "-" if bound is None else f"{bound:.6f}"
            if row.get("guarantee") == "no guarantee":
                bound_text = f"none (layer product {bound:.3g})" if bound is not None else "none"
            note = row["note"]
            if row.get("tuned"):
                tuned = row["tuned"]
                note += f"; tuned value {tuned['value']:.4g}" + (" (AT GRID EDGE)" if tuned["at_grid_edge"] else "")
            lines.append(
                f"| {row['name']} | {row.get('guarantee', '-')} | {_fmt(row['psnr'])} | {_fmt(row['ssim'], 4)} | "
                f"{bound_text} | {row['parameters'] if row['parameters'] is not None else '-'} | "
                f"{_fmt(row.get('seconds_per_megapixel'), 3)} | {note.strip('; ')} |"
            )
        lines.append("")
    sizes = {tuple(r["lipschitz_bound_size"]) for r in results["rows"] if r.get("lipschitz_bound_size")}
    for a, b in sorted(sizes):
        lines.append(
            "Certified bounds: the model cards' certificate at 40x40 (quick mode)." if (a, b) == (40, 40) else
            f"Certified bounds: `lipschitz_upper_bound` at {a}x{b} (above 96x96 pixels this is the "
            "size-independent bound, valid for every image size)."
        )
    if results["skipped_models"]:
        lines.append(f"Not in this run: {', '.join(results['skipped_models'])}.")
    if results["figure"]:
        lines.append(
            f"Figure `{Path(results['figure']).name}`: 128x128 crop of {results['images'][FIGURE_IMAGE]} at "
            f"sigma {FIGURE_SIGMA}; PSNRs in the titles are of the whole image."
        )
    for check in results["protocol_checks"]:
        lines.append(
            f"Protocol check, {check['model']}: {check['reference']} {check['reference_psnr']:.4f} dB vs "
            f"{check['benchmark_psnr']:.4f} dB here ({'agrees' if check['agree'] else 'DISAGREES'})."
        )
    lines += [
        "",
        "## Published results (not measured here)",
        "",
        "| method | sigma 5 | sigma 15 | sigma 25 | source |",
        "|---|---|---|---|---|",
    ]
    for entry in results["published_not_measured"]:
        values = entry["bsd68_psnr"]
        lines.append(
            f"| {entry['method']} | " + " | ".join(_fmt(values.get(s)) for s in SIGMAS) + f" | {entry['source']} |"
        )
    lines += ["", f"Wall time: {results['wall_seconds']:.0f} s.", ""]
    return "\n".join(lines)
