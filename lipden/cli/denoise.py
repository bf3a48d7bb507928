"""``lipden denoise``: denoise image files (or an embedded default) with a shipped model.

Batches (a folder, or several inputs) are resumable: every output is written atomically
(complete or absent), an interrupt (Ctrl-C, SIGTERM) keeps the finished ones, and a rerun
skips the outputs that exist (``--force`` redoes them). Images above ``AUTO_TILE_PIXELS``
are denoised tile by tile (:mod:`lipden.models.tiling`): the same result in bounded memory.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lipden.cli._common import (
    UserError,
    add_command_parser,
    add_run_options,
    check_device,
    check_tile,
    check_writable_folder,
    same_file,
    tile_for,
)

if TYPE_CHECKING:
    import torch

    from lipden.models.denoiser import LipschitzDenoiser

EXAMPLES = """examples:
  python cli.py denoise                                   # embedded image, noise 15/255 added
  python cli.py denoise photo.png -o clean.png --sigma 25
  python cli.py denoise scans/ -o out/ --model relu-sigma15 --json
  python cli.py denoise clean.png --add-noise 15 --seed 1 -o restored.png
  python cli.py denoise huge.tif -o clean.tif --tile 512    # bounded memory, same result
  python cli.py denoise scans/ -o out/    # rerun after Ctrl-C / SIGTERM: finished outputs are skipped
"""

#: Added to "out of memory" by :func:`lipden.cli.main`.
OUT_OF_MEMORY_HINT = "; try --tile 256"
#: Noise level (0-255 scale) assumed when neither --sigma nor --add-noise gives one.
DEFAULT_SIGMA = 15.0
#: JPEG inputs give PNG outputs (a lossy re-encoding would add artefacts back).
_LOSSY = (".jpg", ".jpeg")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``denoise`` parser and its options."""
    parser = add_command_parser(subparsers, "denoise", "denoise images with a shipped 1-Lipschitz denoiser",
                                EXAMPLES)
    parser.add_argument("inputs", nargs="*", metavar="INPUT", help="image files or folders (PNG/JPEG/TIFF/NPY)")
    parser.add_argument("-o", "--output", help="output file, or folder for several inputs")
    parser.add_argument("--sigma", type=float,
                        help="noise level of the inputs, 0-255 scale (default: --add-noise, else 15); without "
                             "--model it picks the shipped spline model closest to it")
    parser.add_argument("--model", help="shipped model name (e.g. relu-sigma15) or a .safetensors path")
    parser.add_argument("--add-noise", type=float, metavar="SIGMA",
                        help="add Gaussian noise (0-255 scale) first; without --model or --sigma the shipped "
                             "spline model closest to SIGMA denoises it")
    parser.add_argument("--seed", type=int, default=0, help="seed of the added noise")
    parser.add_argument("--reference", help="clean image to report PSNR/SSIM against")
    parser.add_argument(
        "--tile", type=int, metavar="N",
        help="denoise in N x N tiles with exact context (same result, activations bounded by about "
             "3 x channels x (N + 16)^2 x 4 bytes per colour channel: 0.21 GB at N=512 for the 64-channel "
             "models); default: 512 above 1024 x 1024 pixels; 0: never tile",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar (shown for several inputs)")
    add_run_options(parser, "one JSON object per image")


def _inputs(paths: list[str]) -> list[tuple[Path, bool]]:
    """(file, found in a folder) for each input; folders give their visible image files."""
    from lipden.io import READABLE

    files: list[tuple[Path, bool]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.suffix.lower() in READABLE and not p.name.startswith(".") and p.is_file())
            if not found:
                raise FileNotFoundError(f"no images in folder {path} (readable: {', '.join(READABLE)})")
            files += [(p, True) for p in found]
        elif path.exists():
            files.append((path, False))
        else:
            raise FileNotFoundError(f"input not found: {path}")
    return files


def _derived_name(source: Path) -> str:
    suffix = ".png" if source.suffix.lower() in _LOSSY else source.suffix
    return f"{source.stem}_denoised{suffix}"


@dataclass
class _Job:
    label: str
    source: Path | None  # None: the embedded image
    target: Path | None  # None: no output file
    derived: bool  # target named by us (batch mode: skipped when it exists) or by the user


def _check_output_type(path: Path) -> None:
    from lipden.io import READABLE

    if path.suffix.lower() not in READABLE:
        raise ValueError(f"{path}: unsupported output type {path.suffix!r} (use {', '.join(READABLE)})")


def _plan(args: argparse.Namespace) -> list[_Job]:
    """Inputs and outputs, checked before any work: collisions, folders, suffixes."""
    output = Path(args.output) if args.output else None
    if not args.inputs:
        if output is not None:
            if output.is_dir():
                output = output / "camera_denoised.png"
            _check_output_type(output)
            check_writable_folder(output.parent)
        return [_Job("skimage.data.camera", None, output, False)]
    found = _inputs(args.inputs)
    to_folder = output is not None and (output.is_dir() or len(found) > 1)
    if output is not None and to_folder and not output.is_dir():
        raise FileNotFoundError(f"several inputs need -o to name an existing folder; {output} is not one")
    jobs = []
    for path, _ in found:
        if output is None:
            jobs.append(_Job(str(path), path, path.with_name(_derived_name(path)), True))
        elif to_folder:
            jobs.append(_Job(str(path), path, output / _derived_name(path), True))
        else:
            jobs.append(_Job(str(path), path, output, False))
    # Files of a folder that are outputs of another input are earlier results: not inputs.
    targets = {job.target.resolve() for job in jobs if job.target is not None}
    jobs = [job for job, (path, in_folder) in zip(jobs, found, strict=True)
            if not (in_folder and path.resolve() in targets)]
    _check_collisions(jobs)
    for folder in {job.target.parent for job in jobs if job.target is not None}:
        check_writable_folder(folder)
    return jobs


def _check_collisions(jobs: list[_Job]) -> None:
    """Refuse an output type that cannot be written, an output that is an input, two inputs to one output."""
    seen: dict[Path, str] = {}
    sources = [job.source for job in jobs if job.source is not None]
    for job in jobs:
        assert job.target is not None and job.source is not None
        _check_output_type(job.target)
        for source in sources:
            if same_file(job.target, source):
                raise ValueError(f"output {job.target} would overwrite the input {source}")
        key = job.target.resolve()
        if key in seen:
            raise ValueError(f"{seen[key]} and {job.label} would both be written to {job.target}")
        seen[key] = job.label


def closest_spline_model(sigma: float) -> str:
    """The shipped ``spline-sigma<N>`` model whose N is closest to ``sigma`` (0-255 scale;
    a tie goes to the lower N, the gentler denoiser)."""
    from lipden.models.pretrained import list_denoisers

    levels = {}
    for name in list_denoisers():
        match = re.fullmatch(r"spline-sigma(\d+(?:\.\d+)?)", name)
        if match:
            levels[name] = float(match[1])
    if not levels:
        raise ValueError("no shipped spline model; give --model NAME_OR_PATH")
    return min(levels, key=lambda name: (abs(levels[name] - sigma), levels[name]))


def check(args: argparse.Namespace) -> None:
    """Refuse a noise level off the 0-255 scale."""
    if args.sigma is not None and not 0 < args.sigma < 255:
        raise UserError(f"--sigma is on the 0-255 scale and must be in (0, 255), got {args.sigma:g}")


@dataclass
class _Settings:
    """What every image of a batch shares."""

    model: LipschitzDenoiser
    model_name: str
    device: torch.device
    add_noise: float | None  # 0-255 scale
    reference: torch.Tensor | None
    sigma: float | None  # the model's training noise level on [0, 1], passed to it
    written: list[Path]


def run(args: argparse.Namespace) -> int:
    """Denoise every input (or the embedded camera image with noise added) and report PSNR/SSIM where a
    clean image is known; outputs that exist are skipped in a batch, refused for a named output."""
    check(args)
    device = check_device(args.device)
    add_noise = args.add_noise
    # the embedded demo adds noise: at --sigma, else at the level --model was trained for, else 15
    noise_from_model = not args.inputs and add_noise is None and args.sigma is None and args.model is not None
    if not args.inputs and add_noise is None and not noise_from_model:
        add_noise = DEFAULT_SIGMA if args.sigma is None else args.sigma
    if add_noise is not None and not 0 < add_noise < 255:
        raise ValueError(f"--add-noise is on the 0-255 scale and must be in (0, 255), got {add_noise:g}")
    check_tile(args.tile)
    jobs = _plan(args)
    noise_level = args.sigma if args.sigma is not None else add_noise  # 0-255, None: unknown
    model_name = args.model or closest_spline_model(DEFAULT_SIGMA if noise_level is None else noise_level)
    if args.model is None:
        told = "" if noise_level is None else f", the shipped spline model closest to sigma {noise_level:g}"
        print(f"lipden denoise: using {model_name}{told}", file=sys.stderr)
    pending = _pending(args, jobs)
    if not pending:
        return 0
    from lipden.io import read_image
    from lipden.models.pretrained import load_denoiser

    reference = read_image(args.reference)[0] if args.reference else None
    model = load_denoiser(model_name, device=device)
    trained = model.config.sigma  # on [0, 1]; None: not trained for one noise level
    if noise_from_model:
        add_noise = noise_level = DEFAULT_SIGMA if trained is None else round(trained * 255, 6)
    if noise_level is not None and trained is not None and not math.isclose(noise_level, trained * 255, rel_tol=0.02):
        print(f"lipden denoise: note: {model_name} was trained for noise sigma {trained * 255:.3g}, the inputs' "
              f"is {noise_level:g} (the denoiser is not noise-level conditioned)", file=sys.stderr)
    settings = _Settings(model, model_name, device, add_noise, reference, trained, [])
    _denoise_all(args, pending, settings, skipped=len(jobs) - len(pending))
    return 0


def _pending(args: argparse.Namespace, jobs: list[_Job]) -> list[tuple[int, _Job]]:
    """(position in the batch: seeds its added noise, job) of the jobs to do; reports the skipped ones."""
    pending: list[tuple[int, _Job]] = []
    for position, job in enumerate(jobs):
        if job.target is not None and job.target.exists() and not args.force:
            if not job.derived:
                raise FileExistsError(f"output exists: {job.target} (use --force to overwrite)")
            _report(args, {"input": job.label, "output": str(job.target), "skipped": True},
                    f"{job.label}: skipped, {job.target} exists (--force to redo)")
            continue
        pending.append((position, job))
    return pending


def _denoise_all(args: argparse.Namespace, pending: list[tuple[int, _Job]], settings: _Settings,
                 skipped: int) -> None:
    """Denoise the pending jobs in turn; an interrupt says how many outputs are complete."""
    from tqdm.auto import tqdm

    quiet = args.quiet or len(pending) < 2
    try:
        # the bar is shown only on a terminal (disable=None), never in logs or pipes
        for position, job in tqdm(pending, desc="denoise", unit="image", disable=True if quiet else None,
                                  leave=False, file=sys.stderr):
            _denoise_one(args, job, position, settings)
    except KeyboardInterrupt as interrupt:
        if len(pending) > 1 or skipped:
            raise type(interrupt)(
                f"{len(settings.written)} of {len(pending)} outputs written"
                + (f" ({skipped} existed)" if skipped else "")
                + "; finished outputs are complete, rerun to do the rest"
            ) from None
        raise


def _report(args: argparse.Namespace, record: dict, line: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(json.dumps(record) if args.json else line, file=sys.stdout)  # above the progress bar
    sys.stdout.flush()


def _load(job: _Job) -> tuple[torch.Tensor, int]:
    """The (C, H, W) image of a job and its bit depth (the embedded camera image without a source)."""
    import numpy as np
    import torch

    from lipden.io import read_image

    if job.source is None:
        from skimage import data

        return torch.from_numpy(data.camera().astype(np.float32) / 255)[None], 8
    image, info = read_image(job.source)
    return image, info.bits


def _denoise_one(args: argparse.Namespace, job: _Job, index: int, settings: _Settings) -> None:
    import torch

    from lipden.io import deferred_signals, write_image
    from lipden.metrics import psnr, ssim

    image, bits = _load(job)
    ref = None
    noisy = image
    if settings.add_noise is not None:
        generator = torch.Generator().manual_seed(args.seed + index)
        noisy = image + settings.add_noise / 255 * torch.randn(image.shape, generator=generator)
        ref = image
    elif settings.reference is not None:
        if settings.reference.shape != image.shape:
            raise ValueError(f"--reference has shape {tuple(settings.reference.shape)}, "
                             f"{job.label} {tuple(image.shape)}")
        ref = settings.reference
    used_tile = tile_for(args.tile, image.shape)
    start = time.perf_counter()
    with torch.no_grad():
        if used_tile is None:
            out = settings.model(noisy[None].to(settings.device), sigma=settings.sigma)[0].cpu()
        else:
            from lipden.models.tiling import denoise_tiled

            out = denoise_tiled(settings.model, noisy[None], settings.sigma, tile=used_tile,
                                device=settings.device)[0].cpu()
    seconds = time.perf_counter() - start
    if job.target is not None:
        with deferred_signals():  # an interrupt during the write is counted after it
            write_image(job.target, out.clamp(0, 1), bits=bits, force=args.force)
            settings.written.append(job.target)
    similarity = ssim(out, ref) if ref is not None else None
    record = {
        "input": job.label,
        "output": str(job.target) if job.target else None,
        "model": settings.model_name,
        "psnr_noisy": psnr(noisy, ref) if ref is not None else None,
        "psnr": psnr(out, ref) if ref is not None else None,
        "ssim": similarity,
        "seconds": seconds,
        "tile": used_tile,
        "skipped": False,
    }
    _report(args, record, _summary_line(record, job))


def _summary_line(record: dict, job: _Job) -> str:
    line = f"{job.label}: denoised with {record['model']} in {record['seconds']:.2f} s"
    if record["tile"] is not None:
        line += f" ({record['tile']}x{record['tile']} tiles)"
    if record["psnr"] is not None:
        line += f"; PSNR {record['psnr_noisy']:.2f} dB -> {record['psnr']:.2f} dB"
        line += f", SSIM {record['ssim']:.3f}" if record["ssim"] is not None else \
            ", SSIM n/a (image under 3 pixels a side)"
    if job.target is not None:
        line += f"; wrote {job.target}"
    return line
