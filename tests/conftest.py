import sys

import pytest
import torch

from tests.helpers import DATA, ROOT

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=_devices())
def device(request) -> str:
    """Each device the tests can run on: the CPU, and a CUDA GPU where there is one. Tests that
    compare a GPU against the CPU stay in test_cuda.py."""
    return request.param


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


@pytest.fixture(scope="session")
def quick_benchmarks(tmp_path_factory):
    """Output folder of one ``python cli.py benchmark all --quick`` run, shared by the tests."""
    if not all((DATA / name).is_dir() for name in ("bsd68", "set12", "mri_colin27")):
        pytest.skip("the quick benchmarks need ../shared/data (bsd68, set12, mri_colin27)")
    from benchmarks import run_benchmark

    folder = tmp_path_factory.mktemp("quick-benchmarks")
    assert run_benchmark("all", quick=True, output=str(folder)) == 0
    return folder


@pytest.fixture(scope="session")
def native_kernel_built():
    """The C++ spline kernel, built here (it must build where a C++ compiler and ninja exist)."""
    import shutil

    from lipden.nn._native import build_error, native_kernels

    if shutil.which("c++") is None or shutil.which("ninja") is None:
        pytest.skip("no C++ compiler or ninja: the native spline kernel cannot be built here")
    assert native_kernels() is not None, build_error()
