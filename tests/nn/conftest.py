"""Fixtures of the layer tests."""

import pytest


@pytest.fixture(scope="module")
def native_backend():
    """The C++ kernel, built here (it must build where a C++ compiler and ninja exist)."""
    import shutil

    from lipden.nn._native import build_error, native_kernels

    if shutil.which("c++") is None or shutil.which("ninja") is None:
        pytest.skip("no C++ compiler or ninja: the native spline kernel cannot be built here")
    assert native_kernels() is not None, build_error()
    from lipden.nn.splines import set_spline_backend

    set_spline_backend("native")
    yield
    set_spline_backend("eager")
