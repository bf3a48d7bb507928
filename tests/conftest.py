import pathlib
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def small_denoiser():
    """A random 1-Lipschitz spline denoiser (8 channels, 4 layers) for solver tests."""
    from lipden import DenoiserConfig, LipschitzDenoiser

    torch.manual_seed(0)
    return LipschitzDenoiser(DenoiserConfig(channels=8, depth=4, sigma=None)).eval()


@pytest.fixture(scope="module")
def mri_case():
    """(problem, x, y, physics) of a 32x32 MRI x4 problem (random mask)."""
    import problems as P

    problem = P.MRIProblem("random", 4)
    x = P.default_image("mri", 32)
    return problem, x, problem.measure(x, seed=0), problem.physics(x.shape)


def full_operator(f, input_shape, dtype=torch.float64):
    """Dense matrix of an affine map, from its impulse responses (bias removed)."""
    n = 1
    for s in input_shape:
        n *= s
    with torch.no_grad():
        eye = torch.eye(n, dtype=dtype).view(n, *input_shape)
        offset = f(torch.zeros(1, *input_shape, dtype=dtype))
        columns = f(eye) - offset
    return columns.reshape(n, -1).T


@pytest.fixture(scope="session")
def quick_benchmarks(tmp_path_factory):
    """Output folder of one ``python cli.py benchmark all --quick`` run, shared by the tests."""
    if not all((DATA / name).is_dir() for name in ("bsd68", "set12", "mri_colin27")):
        pytest.skip("the quick benchmarks need ../shared/data (bsd68, set12, mri_colin27)")
    from benchmarks import run_benchmark

    folder = tmp_path_factory.mktemp("quick-benchmarks")
    assert run_benchmark("all", quick=True, output=str(folder)) == 0
    return folder


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
