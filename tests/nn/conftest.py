"""Fixtures of the layer tests."""

import pytest


@pytest.fixture(scope="module")
def native_backend(native_kernel_built):
    """The native spline backend selected for the module's tests (eager again after them)."""
    from lipden.nn.splines import set_spline_backend

    set_spline_backend("native")
    yield
    set_spline_backend("eager")
