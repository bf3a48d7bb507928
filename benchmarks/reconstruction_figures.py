"""Tables and figures of the deblur / MRI benchmark, rebuilt from the cached rows under ``runs/``.

Each row stores image 0's reconstruction beside its JSON as ``ROW.jpg`` (8-bit grey JPEG,
quality 80): it is only drawn, about 2x smaller, in the figure, whose titles take the PSNR from
the JSON; a row's PNG of an older format is read as well. A labelled subset (``--stride``) whose rows give the
full run's image-0 results links the full run's figures instead of drawing copies of them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from torch import Tensor

from lipden.io import atomic_write

from .common import WRITTEN, device_name, save_figure, stale_prior_note, table_cell

#: quality of the stored image-0 reconstructions (JPEG)
IMAGE_QUALITY = 80
IMAGE_SUFFIXES = (".jpg", ".png")  # the current format first, then the one rows were written in before


def write_row_image(path: Path, image: Tensor) -> None:
    """Image 0's reconstruction ((1, H, W) in [0, 1]) as an 8-bit grey JPEG, atomically."""
    from PIL import Image

    levels = np.round(image.detach().cpu().clamp(0, 1)[0].numpy() * 255).astype(np.uint8)
    atomic_write(path, lambda tmp: Image.fromarray(levels).save(
        tmp, format="JPEG", quality=IMAGE_QUALITY, optimize=True))
    WRITTEN.append(path)


def row_image(folder: Path, row_id: str) -> Path | None:
    """The stored image-0 reconstruction of a row, None if there is none."""
    for suffix in IMAGE_SUFFIXES:
        path = folder / f"{row_id}{suffix}"
        if path.is_file():
            return path
    return None


def _read_levels(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=np.float64) / 255.0


def seconds_cell(row: dict) -> str:
    """Seconds per image, with the device when it was not the CPU (rows without one ran on CPU),
    else with the row's own torch thread count when it was recorded (rows of one table may
    come from runs with different thread counts, the machine line names only the last run's),
    and the spline kernel of a prior's row when it was not the eager one."""
    device = row.get("device", "cpu")
    if not device.startswith("cpu"):
        return f"{row['seconds_per_image']:.1f} ({device})"
    threads, kernel = row.get("torch_threads"), row.get("spline_kernel", "eager")
    notes = ([] if threads is None else [f"{threads} thread{'s' if threads > 1 else ''}"]) + (
        [] if kernel == "eager" or row.get("family") is None else [f"{kernel} spline kernel"])
    return f"{row['seconds_per_image']:.1f}" + (f" ({', '.join(notes)})" if notes else "")


def header(kind: str, quick: bool, stride: int, results: dict, device: str) -> list[str]:
    """Title and protocol paragraph of the summary page."""
    subset_note = f" (SUBSET: every {stride}-th test image)" if stride > 1 else ""
    return [f"# {kind} reconstruction benchmark{' (QUICK: subsets, fewer iterations)' if quick else ''}{subset_note}",
            "", f"Test images: {results['test_set']}; parameters tuned on {results['tuning_set']} (see each row's source); "
            f"stop at relative residual {results['tol']:g} or {results['max_iter']} iterations (unless a row states its own cap); rows computed now on {device_name(device)}, others as their s/image column says (CPU when it names no GPU, with the row's torch thread count when recorded). Machine: {results['machine']}.",
            "PSNR / SSIM are means over the test images (estimates clipped to [0, 1]); iterations: mean first "
            "iteration at which the image's relative residual reached the tolerance (each image stops there); "
            "residual non-increasing: no increase beyond float round-off (2e-6 of the iterate's norm), the "
            "largest relative increase r_{k+1}/r_k - 1 is shown beside it.", ""]


def table(name: str, cached: dict, max_iter: int) -> list[str]:
    """The table of one problem: a line per cached row."""
    lines = [f"## {name}", "", "| method | PSNR (dB) | SSIM | iterations | converged | residual non-increasing "
             "| max relative residual increase | s/image | prior and parameters |", "|---|---|---|---|---|---|---|---|---|"]
    for row in cached.values():
        its = "-" if row["iterations_mean"] is None else f"{row['iterations_mean']:.0f}"
        inc = "-" if row["max_residual_increase"] is None else f"{row['max_residual_increase']:.1e}"
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row["parameters"].items())
        if row.get("max_iter", max_iter) != max_iter:
            params += f" (cap {row['max_iter']} iterations)"
        if row.get("accelerate"):
            params += f" (Anderson memory {row['accelerate']}: iterations count passes)"
        if (stale := stale_prior_note(row)) is not None:
            params += f" ({stale})"
        mono = "-" if row["monotone_all"] is None else str(row["monotone_all"])
        lines.append(f"| {table_cell(row['label'])} | {row['psnr']:.2f} | {row['ssim']:.4f} | {its} | {row['converged_all']} "
                     f"| {mono} | {inc} | {seconds_cell(row)} | {params} |")
    return lines


def read_rows(run_dir: Path, row_ids) -> dict:
    """The cached rows of one problem, in benchmark order."""
    return {r: json.loads((run_dir / f"{r}.json").read_text()) for r in row_ids if (run_dir / f"{r}.json").is_file()}


def same_image0(rows: dict, full_rows: dict) -> bool:
    """Every row gives the full run's image-0 result (PSNR and curves): the full run's figures show it."""
    return bool(rows) and all(
        r in full_rows and full_rows[r]["per_image"]["psnr"][0] == row["per_image"]["psnr"][0]
        and full_rows[r].get("curves_image0") == row.get("curves_image0") for r, row in rows.items())


def figure_names(stem: str, problem_name: str, rows: dict) -> list[str]:
    """The figures a problem's rows give: the grid, and the curves when a row has them."""
    curves = any(row.get("curves_image0") for row in rows.values())
    return [f"{stem}-{problem_name}.png", *([f"{stem}-{problem_name}-curves.png"] if curves else [])]


def grid_data(problem_name: str, rows: dict, image_dirs: list[Path], truth: Tensor) -> dict:
    """Labels, image-0 PSNRs and images of the grid (rows without a stored image are left out)."""
    panels = [("ground truth", truth[0, 0].numpy(), None)]
    for row_id, row in rows.items():
        found = next((p for p in (row_image(d, row_id) for d in image_dirs) if p is not None), None)
        if found is not None:
            panels.append((row["label"], _read_levels(found), row["per_image"]["psnr"][0]))
    return {"figure": "reconstruction grid", "problem": problem_name, "panels": panels}


def figures(folder: Path, stem: str, problem_name: str, rows: dict, image_dirs: list[Path], truth: Tensor) -> list[str]:
    """A grid of image-0 reconstructions and the PSNR / residual curves; returns the file names.
    A figure whose numbers did not change is left as it is (see :func:`benchmarks.common.save_figure`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = grid_data(problem_name, rows, image_dirs, truth)
    panels = data["panels"]
    cols = min(4, len(panels))
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 3.4 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (label, image, score) in zip(axes.flat, panels, strict=False):
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
        ax.set_title(label if score is None else f"{label}\n{score:.2f} dB", fontsize=8)
    fig.suptitle(problem_name, fontsize=10)
    names = figure_names(stem, problem_name, rows)
    save_figure(fig, folder / names[0], data, dpi=110, bbox_inches="tight")
    curves = {rows[r]["label"]: rows[r]["curves_image0"] for r in rows if rows[r].get("curves_image0")}
    if curves:
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        for label, curve in curves.items():
            left.plot(range(1, len(curve["psnr"]) + 1), curve["psnr"], label=label)
            right.semilogy(range(1, len(curve["relative_residual"]) + 1), curve["relative_residual"], label=label)
        left.set(xlabel="iteration", ylabel="PSNR (dB)", title="PSNR, test image 0")
        right.set(xlabel="iteration", ylabel="||z_{k+1} - z_k|| / ||z_{k+1}||", title="fixed-point residual")
        left.legend(fontsize=7)
        save_figure(fig, folder / names[1], {"figure": "reconstruction curves", "curves": curves},
                    dpi=110, bbox_inches="tight")
    return names


def problem_figures(folder: Path, stem: str, full_stem: str, name: str, cached: dict, row_ids,
                    truth: Tensor) -> list[str]:
    """The figures shown under a problem's table: a subset links the full run's when they show
    the same image-0 results (its own copies are then removed), else its own are drawn."""
    run_dir, full_dir = folder / "runs" / stem / name, folder / "runs" / full_stem / name
    if stem != full_stem:
        full_rows = read_rows(full_dir, row_ids)
        linked = figure_names(full_stem, name, full_rows)
        if same_image0(cached, full_rows) and all((folder / f).is_file() for f in linked):
            for own in figure_names(stem, name, {"any": {"curves_image0": True}}):
                if (folder / own).is_file():
                    (folder / own).unlink()
            return linked
    return figures(folder, stem, name, cached, [run_dir, full_dir], truth)
