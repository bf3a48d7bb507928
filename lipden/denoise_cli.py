"""``python cli.py denoise``: denoise image files (or an embedded default) with a shipped model."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from .imageio import READABLE, read_image, write_image
from .pretrained import list_denoisers, load_denoiser
from .training import psnr


def _ssim(x: torch.Tensor, ref: torch.Tensor) -> float:
    from skimage.metrics import structural_similarity

    a = x.clamp(0, 1).numpy()
    b = ref.numpy()
    return float(np.mean([structural_similarity(a[c], b[c], data_range=1.0) for c in range(a.shape[0])]))


def _inputs(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in READABLE)
            if not found:
                raise FileNotFoundError(f"no images in folder {path}")
            files += found
        elif path.exists():
            files.append(path)
        else:
            raise FileNotFoundError(f"input not found: {path}")
    return files


def _output_for(source: Path, output: str | None, many: bool) -> Path:
    if output is None:
        return source.with_name(f"{source.stem}_denoised{source.suffix if source.suffix != '.jpg' else '.png'}")
    target = Path(output)
    if many or target.is_dir():
        if not target.is_dir():
            raise FileNotFoundError(f"output folder does not exist: {target}")
        return target / f"{source.stem}_denoised{source.suffix}"
    return target


def run_denoise(args: argparse.Namespace) -> int:
    records = []
    if not args.inputs:
        from skimage import data

        clean = torch.from_numpy(data.camera().astype(np.float32) / 255)[None]
        sources: list[tuple[str, torch.Tensor, int, Path | None]] = [("skimage.data.camera", clean, 8, None)]
        add_noise = args.add_noise if args.add_noise is not None else args.sigma
    else:
        files = _inputs(args.inputs)
        sources = []
        for path in files:
            image, info = read_image(path)
            sources.append((str(path), image, info.bits, path))
        add_noise = args.add_noise
    sigma_name = f"spline-sigma{args.sigma:g}"
    model_name = args.model or sigma_name
    if args.model is None and sigma_name not in list_denoisers():
        shipped = ", ".join(n for n in list_denoisers() if n.startswith("spline")) or "none"
        raise ValueError(f"no shipped spline model for --sigma {args.sigma:g}; shipped: {shipped}")
    model = load_denoiser(model_name, device=args.device)
    generator_seed = args.seed
    reference = None
    if args.reference:
        reference, _ = read_image(args.reference)
    many = len(sources) > 1
    for index, (label, image, bits, path) in enumerate(sources):
        target = None
        if path is not None or args.output:
            target = _output_for(path or Path("camera.png"), args.output, many)
            if path is not None and target.resolve() == path.resolve():
                raise ValueError(f"output would overwrite the input {path}")
            if target.exists() and not args.force:
                raise FileExistsError(f"output exists: {target} (use --force to overwrite)")
        ref = None
        noisy = image
        if add_noise is not None:
            if not add_noise > 0:
                raise ValueError(f"--add-noise must be > 0 (0-255 scale), got {add_noise}")
            generator = torch.Generator().manual_seed(generator_seed + index)
            noisy = image + add_noise / 255 * torch.randn(image.shape, generator=generator)
            ref = image
        elif reference is not None:
            if reference.shape != image.shape:
                raise ValueError(f"--reference has shape {tuple(reference.shape)}, input {tuple(image.shape)}")
            ref = reference
        start = time.perf_counter()
        with torch.no_grad():
            out = model(noisy[None].to(args.device), sigma=args.sigma / 255)[0].cpu()
        seconds = time.perf_counter() - start
        if target is not None:
            write_image(target, out.clamp(0, 1), bits=bits if bits in (8, 16) else 8, force=args.force)
        record = {
            "input": label,
            "output": str(target) if target else None,
            "model": model_name,
            "psnr_noisy": psnr(noisy, ref) if ref is not None else None,
            "psnr": psnr(out, ref) if ref is not None else None,
            "ssim": _ssim(out, ref) if ref is not None else None,
            "seconds": seconds,
        }
        records.append(record)
        if args.json:
            print(json.dumps(record))
        else:
            line = f"{label}: denoised with {model_name} in {seconds:.2f} s"
            if ref is not None:
                line += f"; PSNR {record['psnr_noisy']:.2f} dB -> {record['psnr']:.2f} dB, SSIM {record['ssim']:.3f}"
            if target is not None:
                line += f"; wrote {target}"
            print(line)
    return 0
