"""``python cli.py denoise``: denoise image files (or an embedded default) with a shipped model.

Batches (a folder, or several inputs) are resumable: every output is written atomically
(complete or absent), an interrupt (Ctrl-C, SIGTERM) keeps the finished ones, and a rerun
skips the outputs that exist (``--force`` redoes them). Images above ``AUTO_TILE_PIXELS``
are denoised tile by tile (:mod:`lipden.models.tiling`): the same result in bounded memory.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from lipden.io import READABLE, deferred_signals, read_image, write_image
from lipden.metrics import psnr, ssim
from lipden.models.pretrained import list_denoisers, load_denoiser

#: Images with more pixels than this are tiled unless ``--tile`` says otherwise.
AUTO_TILE_PIXELS = 1024 * 1024
#: Tile size used for such images: activations of about 0.1 GB for the shipped models.
AUTO_TILE = 512
#: JPEG inputs give PNG outputs (a lossy re-encoding would add artefacts back).
_LOSSY = (".jpg", ".jpeg")


def check_device(name: str) -> torch.device:
    """``torch.device(name)`` if it exists on this machine, else a ``ValueError`` saying why."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {name!r} is not a device name (cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name}: only cpu, cuda and mps are supported")
    return device


def check_writable_folder(folder: Path) -> None:
    """A ``FileNotFoundError`` / ``PermissionError`` unless outputs can be created in ``folder``."""
    if not folder.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"output folder is not writable: {folder}")


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name the same file (through links, case-insensitive file systems, ...)."""
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _inputs(paths: list[str]) -> list[tuple[Path, bool]]:
    """(file, found in a folder) for each input; folders give their visible image files."""
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


def _plan(args: argparse.Namespace) -> list[_Job]:
    """Inputs and outputs, checked before any work: collisions, folders, suffixes."""
    output = Path(args.output) if args.output else None
    if not args.inputs:
        if output is not None:
            if output.is_dir():
                output = output / "camera_denoised.png"
            if output.suffix.lower() not in READABLE:
                raise ValueError(f"{output}: unsupported output type {output.suffix!r} (use {', '.join(READABLE)})")
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
    seen: dict[Path, str] = {}
    sources = [job.source for job in jobs if job.source is not None]
    for job in jobs:
        assert job.target is not None and job.source is not None
        if job.target.suffix.lower() not in READABLE:
            raise ValueError(f"{job.target}: unsupported output type {job.target.suffix!r} (use {', '.join(READABLE)})")
        for source in sources:
            if same_file(job.target, source):
                raise ValueError(f"output {job.target} would overwrite the input {source}")
        key = job.target.resolve()
        if key in seen:
            raise ValueError(f"{seen[key]} and {job.label} would both be written to {job.target}")
        seen[key] = job.label
    for folder in {job.target.parent for job in jobs if job.target is not None}:
        check_writable_folder(folder)
    return jobs


def tile_for(tile: int | None, shape: torch.Size) -> int | None:
    """The tile size to use: ``tile`` (0: never), else 512 above 1024 x 1024 pixels."""
    if tile == 0:
        return None
    if tile is not None:
        return tile
    return AUTO_TILE if shape[-2] * shape[-1] > AUTO_TILE_PIXELS else None


#: Noise level (0-255 scale) assumed when neither --sigma nor --add-noise gives one.
DEFAULT_SIGMA = 15.0


def closest_spline_model(sigma: float) -> str:
    """The shipped ``spline-sigma<N>`` model whose N is closest to ``sigma`` (0-255 scale;
    a tie goes to the lower N, the gentler denoiser)."""
    levels = {}
    for name in list_denoisers():
        match = re.fullmatch(r"spline-sigma(\d+(?:\.\d+)?)", name)
        if match:
            levels[name] = float(match[1])
    if not levels:
        raise ValueError("no shipped spline model; give --model NAME_OR_PATH")
    return min(levels, key=lambda name: (abs(levels[name] - sigma), levels[name]))


def run_denoise(args: argparse.Namespace) -> int:
    device = check_device(args.device)
    add_noise = args.add_noise
    # the embedded demo adds noise: at --sigma, else at the level --model was trained for, else 15
    noise_from_model = not args.inputs and add_noise is None and args.sigma is None and args.model is not None
    if not args.inputs and add_noise is None and not noise_from_model:
        add_noise = DEFAULT_SIGMA if args.sigma is None else args.sigma
    if add_noise is not None and not 0 < add_noise < 255:
        raise ValueError(f"--add-noise is on the 0-255 scale and must be in (0, 255), got {add_noise:g}")
    tile = getattr(args, "tile", None)
    if tile is not None and tile < 0:
        raise ValueError(f"--tile must be >= 1 (or 0: never tile), got {tile}")
    jobs = _plan(args)
    noise_level = args.sigma if args.sigma is not None else add_noise  # 0-255, None: unknown
    model_name = args.model or closest_spline_model(DEFAULT_SIGMA if noise_level is None else noise_level)
    if args.model is None:
        told = "" if noise_level is None else f", the shipped spline model closest to sigma {noise_level:g}"
        print(f"lipden denoise: using {model_name}{told}", file=sys.stderr)
    pending: list[tuple[int, _Job]] = []  # (position in the batch: seeds its added noise, job)
    for position, job in enumerate(jobs):
        if job.target is not None and job.target.exists() and not args.force:
            if not job.derived:
                raise FileExistsError(f"output exists: {job.target} (use --force to overwrite)")
            _report(args, {"input": job.label, "output": str(job.target), "skipped": True},
                    f"{job.label}: skipped, {job.target} exists (--force to redo)")
            continue
        pending.append((position, job))
    if not pending:
        return 0
    reference = None
    if args.reference:
        reference, _ = read_image(args.reference)
    model = load_denoiser(model_name, device=device)
    trained = model.config.sigma  # on [0, 1]; None: not trained for one noise level
    if noise_from_model:
        add_noise = noise_level = DEFAULT_SIGMA if trained is None else round(trained * 255, 6)
    if noise_level is not None and trained is not None and not math.isclose(noise_level, trained * 255, rel_tol=0.02):
        print(f"lipden denoise: note: {model_name} was trained for noise sigma {trained * 255:.3g}, the inputs' "
              f"is {noise_level:g} (the denoiser is not noise-level conditioned)", file=sys.stderr)
    written: list[Path] = []
    quiet = getattr(args, "quiet", False) or len(pending) < 2
    try:
        # the bar is shown only on a terminal (disable=None), never in logs or pipes
        for position, job in tqdm(pending, desc="denoise", unit="image", disable=True if quiet else None,
                                  leave=False, file=sys.stderr):
            _denoise_one(args, job, position, model, model_name, device, add_noise, reference, tile, written,
                         trained)
    except KeyboardInterrupt as interrupt:
        skipped = len(jobs) - len(pending)
        if len(pending) > 1 or skipped:
            raise type(interrupt)(
                f"{len(written)} of {len(pending)} outputs written"
                + (f" ({skipped} existed)" if skipped else "")
                + "; finished outputs are complete, rerun to do the rest"
            ) from None
        raise
    return 0


def _report(args: argparse.Namespace, record: dict, line: str) -> None:
    tqdm.write(json.dumps(record) if args.json else line, file=sys.stdout)  # above the progress bar
    sys.stdout.flush()


def _denoise_one(args, job: _Job, index: int, model, model_name: str, device: torch.device,
                 add_noise: float | None, reference: torch.Tensor | None, tile: int | None,
                 written: list[Path], sigma: float | None) -> None:
    if job.source is None:
        from skimage import data

        image, bits = torch.from_numpy(data.camera().astype(np.float32) / 255)[None], 8
    else:
        image, info = read_image(job.source)
        bits = info.bits
    ref = None
    noisy = image
    if add_noise is not None:
        generator = torch.Generator().manual_seed(args.seed + index)
        noisy = image + add_noise / 255 * torch.randn(image.shape, generator=generator)
        ref = image
    elif reference is not None:
        if reference.shape != image.shape:
            raise ValueError(f"--reference has shape {tuple(reference.shape)}, {job.label} {tuple(image.shape)}")
        ref = reference
    used_tile = tile_for(tile, image.shape)
    start = time.perf_counter()
    with torch.no_grad():
        if used_tile is None:
            out = model(noisy[None].to(device), sigma=sigma)[0].cpu()
        else:
            from lipden.models.tiling import denoise_tiled

            out = denoise_tiled(model, noisy[None], sigma, tile=used_tile, device=device)[0].cpu()
    seconds = time.perf_counter() - start
    if job.target is not None:
        with deferred_signals():  # an interrupt during the write is counted after it
            write_image(job.target, out.clamp(0, 1), bits=bits, force=args.force)
            written.append(job.target)
    similarity = ssim(out, ref) if ref is not None else None
    record = {
        "input": job.label,
        "output": str(job.target) if job.target else None,
        "model": model_name,
        "psnr_noisy": psnr(noisy, ref) if ref is not None else None,
        "psnr": psnr(out, ref) if ref is not None else None,
        "ssim": similarity,
        "seconds": seconds,
        "tile": used_tile,
        "skipped": False,
    }
    line = f"{job.label}: denoised with {model_name} in {seconds:.2f} s"
    if used_tile is not None:
        line += f" ({used_tile}x{used_tile} tiles)"
    if ref is not None:
        line += f"; PSNR {record['psnr_noisy']:.2f} dB -> {record['psnr']:.2f} dB"
        line += f", SSIM {similarity:.3f}" if similarity is not None else ", SSIM n/a (image under 3 pixels a side)"
    if job.target is not None:
        line += f"; wrote {job.target}"
    _report(args, record, line)
