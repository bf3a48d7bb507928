"""``import lipden`` offers exactly its documented names, each from its defining module."""

import importlib

import lipden


def test_every_public_name_imports_from_the_module_the_registry_names():
    assert sorted(lipden.__all__) == sorted(lipden._EXPORTS)
    for name, module in lipden._EXPORTS.items():
        value = getattr(lipden, name)
        assert getattr(importlib.import_module(f"lipden.{module}"), name) is value
        assert getattr(value, "__module__", f"lipden.{module}") == f"lipden.{module}", name  # no re-export


def test_the_version_comes_from_the_package_metadata():
    from importlib.metadata import version

    assert lipden.__version__ == version("lipden")


def test_a_shipped_denoiser_satisfies_the_certified_denoiser_protocol():
    model = lipden.load_denoiser("spline-sigma15")
    assert isinstance(model, lipden.ConstrainedDenoiser) and isinstance(model, lipden.LipschitzCertified)
    assert not isinstance(object(), lipden.LipschitzCertified)
