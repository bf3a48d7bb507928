"""Helpers shared by the tests (plain functions; the fixtures live in conftest.py)."""

import pathlib

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def full_operator(f, input_shape, dtype=torch.float64, device="cpu"):
    """Dense matrix of an affine map, from its impulse responses (bias removed), on the CPU."""
    n = 1
    for s in input_shape:
        n *= s
    with torch.no_grad():
        eye = torch.eye(n, dtype=dtype, device=device).view(n, *input_shape)
        offset = f(torch.zeros(1, *input_shape, dtype=dtype, device=device))
        columns = f(eye) - offset
    return columns.reshape(n, -1).T.cpu()


def write_tiny_model(folder: pathlib.Path) -> pathlib.Path:
    """A small random certified denoiser file with its sha256 card: fast to load and run."""
    import json

    import lipden
    from lipden.models.checkpoint import save_denoiser, sha256_of

    torch.manual_seed(0)
    model = lipden.LipschitzDenoiser(lipden.DenoiserConfig(channels=4, depth=3, sigma=15 / 255))
    path = folder / "tiny.safetensors"
    save_denoiser(model, path)
    (folder / "tiny.json").write_text(json.dumps({"sha256": sha256_of(path)}))
    return path


def write_smooth_images(root: pathlib.Path, counts: dict[str, int]) -> dict[str, pathlib.Path]:
    """Folders ``root/<split>`` of smooth random 48x56 8-bit PNGs (integrated noise): training data
    for tests, so they run without ../shared/data."""
    import numpy as np
    from skimage import io

    rng = np.random.default_rng(0)
    folders = {}
    for split, count in counts.items():
        folder = folders[split] = root / split
        folder.mkdir()
        for i in range(count):
            smooth = np.cumsum(np.cumsum(rng.normal(size=(48, 56)), 0), 1)
            smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
            io.imsave(folder / f"{i:02d}.png", (smooth * 255).astype(np.uint8), check_contrast=False)
    return folders
