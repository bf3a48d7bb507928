"""A regular (non-editable) install gives a working ``lipden`` command with the shipped weights.

The project is copied to a temporary folder and installed from there into a fresh virtual
environment that sees the running environment's packages through a ``.pth`` file (torch & co.
are reused, nothing is downloaded). The install runs the running environment's own pip and
setuptools (``--no-build-isolation``), never the base interpreter's, so it checks the tools a
fresh install of the project resolves. The build leaves no ``build/`` or ``*.egg-info`` in the
checkout, and the new environment's install must shadow any editable install of the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from tests.helpers import ROOT

FALLBACK_PACKAGES = ["lipden", "problems", "weights"]  # [tool.setuptools] packages
BUILD_JUNK = ("build", "dist", "lipden.egg-info")


def _packages() -> list[str]:
    if sys.version_info < (3, 11):  # no tomllib
        return FALLBACK_PACKAGES
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = config["tool"]["setuptools"]["packages"]
    return sorted({name.split(".")[0] for name in packages})  # a subpackage travels with its top


def _copy_project(target: Path) -> None:
    target.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, target / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in _packages():
        shutil.copytree(ROOT / package, target / package, ignore=ignore)


def _see_running_environment(env_dir: Path) -> Path:
    """Make the running environment's packages (pip, setuptools, torch, ...) importable in the
    virtual environment at ``env_dir``, after its own; returns its python."""
    python = env_dir / "bin" / "python"
    inner = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           capture_output=True, text=True, check=True).stdout.strip()
    running = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (Path(inner) / "_running_environment.pth").write_text("\n".join(running) + "\n")
    return python


def _run(args: list[str | Path], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


@pytest.mark.slow
def test_regular_install_runs_the_console_command_with_shipped_weights(tmp_path):
    junk_before = {name for name in BUILD_JUNK if (ROOT / name).exists()}
    source, env_dir, work = tmp_path / "src", tmp_path / "venv", tmp_path / "work"
    _copy_project(source)
    work.mkdir()
    # pip and setuptools come from the running environment: no ensurepip, no network
    venv.create(env_dir, system_site_packages=False, with_pip=False, symlinks=True)
    python = _see_running_environment(env_dir)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "LIPDEN_DATA")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"

    install = _run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", source], work, env)
    assert install.returncode == 0, install.stdout + install.stderr

    probe = _run([python, "-c", (
        "import json, lipden, lipden.models.pretrained as p, lipden.train.config as t, sys; "
        "print(json.dumps({'lipden': lipden.__file__, 'weights': str(p.weights_dir()), "
        "'shipped': p.list_denoisers(), 'prefix': sys.prefix, 'data': str(t.DEFAULT_DATA)}))"
    )], work, env)
    assert probe.returncode == 0, probe.stderr
    where = json.loads(probe.stdout)
    site_packages = Path(where["lipden"]).resolve().parents[1]
    assert site_packages.name == "site-packages", where
    assert Path(where["prefix"]).resolve() == env_dir.resolve(), where
    assert site_packages.is_relative_to(env_dir.resolve()), f"not the venv's install: {where}"
    assert not site_packages.is_relative_to(ROOT.resolve()), where
    assert Path(where["weights"]).resolve() == site_packages / "weights", where
    assert "spline-sigma15" in where["shipped"], where
    # the dev sets are looked for beside the working directory, not inside site-packages
    assert Path(where["data"]) == (work.parent / "shared" / "data").resolve(), where

    script = env_dir / "bin" / "lipden"
    assert script.is_file(), "the console script was not installed"
    helped = _run([script, "--help"], work, env)
    assert helped.returncode == 0, helped.stderr
    assert "denoise" in helped.stdout and "reconstruct" in helped.stdout

    denoised = _run([script, "denoise", "--json"], work, env)  # embedded image, noise 15/255 added
    assert denoised.returncode == 0, denoised.stderr
    report = json.loads(denoised.stdout.strip().splitlines()[-1])
    assert report["model"] == "spline-sigma15"
    assert report["psnr"] > report["psnr_noisy"] + 3, report
    assert list(work.iterdir()) == [], "denoise without -o must not write files"

    assert {name for name in BUILD_JUNK if (ROOT / name).exists()} == junk_before, "build junk in the checkout"
