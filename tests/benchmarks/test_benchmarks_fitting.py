"""The 1-D fitting and learned-activation benchmarks: their pieces, and their quick-mode outputs."""

import json

import numpy as np
import pytest
import torch

from benchmarks.fitting import ACTIVATIONS, ParallelNetworks, make_targets

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    from matplotlib.image import imread

    image = imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) > 100


def test_targets_are_one_lipschitz():
    x = np.linspace(-1, 1, 100001)
    for name, target in make_targets().items():
        slopes = np.abs(np.diff(target(x)) / np.diff(x))
        assert slopes.max() <= 1 + 1e-9, name
        if name == "pwl_slopes_pm1":  # slope +-1 everywhere (except next to the kinks)
            assert np.median(slopes) == pytest.approx(1.0)


def test_parallel_networks_match_their_extracted_networks():
    """The batched training model computes exactly each extracted BjorckLinear network."""
    specs = [(a, s) for a in ACTIVATIONS for s in range(2)]
    model = ParallelNetworks(specs)
    with torch.no_grad():  # move every parameter off its (often symmetric) initial value
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.linspace(-1.5, 1.5, 301).unsqueeze(1)
    with torch.no_grad():
        together = model(x).squeeze(1)
        for index in range(len(specs)):
            alone = model.extract(index)(x).squeeze(1)
            torch.testing.assert_close(alone, together[index], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_fitting_quick(quick_benchmarks):
    tmp_path = quick_benchmarks
    results = json.loads((tmp_path / "fitting-quick.json").read_text())
    markdown = (tmp_path / "fitting-quick.md").read_text()
    assert "QUICK" in markdown
    assert results["quick"] is True
    for key in ("machine", "config", "targets", "summary", "runs", "all_one_lipschitz", "wall_time_s"):
        assert key in results
    targets = list(results["targets"])
    assert set(results["summary"]) == set(targets)
    assert len(results["runs"]) == len(targets) * len(ACTIVATIONS) * results["config"]["seeds"]
    for target in targets:
        for activation in ACTIVATIONS:
            summary = results["summary"][target][activation]
            assert 0 < summary["best_test_mse"] <= summary["median_test_mse"] < 1
            assert f"{summary['median_test_mse']:.2e}" in markdown
    # every network 1-Lipschitz, from the measured secant slopes (not the constraint code)
    tolerance = results["config"]["lipschitz_check"]["tolerance"]
    for run in results["runs"]:
        assert 0 < run["lipschitz_measured"] <= 1 + tolerance
        assert run["one_lipschitz"]
        assert run["lipschitz_measured"] <= run["lipschitz_certified_bound"] + 1e-5
    assert results["all_one_lipschitz"]
    assert results["extraction_max_abs_diff"] < 1e-4
    assert_png(tmp_path / results["figure"])
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.slow
def test_activations_quick(quick_benchmarks):
    tmp_path = quick_benchmarks
    results = json.loads((tmp_path / "activations-quick.json").read_text())
    assert "QUICK" in (tmp_path / "activations-quick.md").read_text()
    assert list(results["models"]) == ["spline-sigma15"]
    model = results["models"]["spline-sigma15"]
    assert len(model["layers"]) == 7  # depth-8 network: 7 spline layers
    for layer in model["layers"]:
        assert layer["max_abs_slope"] <= 1 + 1e-5  # float32 re-integration of clipped slopes
        assert 0 <= layer["tv2_median"] <= layer["tv2_max"]
        assert layer["tv2_mean"] <= layer["tv2_max"]
        for key in ("fraction_nearly_linear", "fraction_abs_like", "fraction_monotone"):
            assert 0 <= layer[key] <= 1
    assert_png(tmp_path / model["figure"])
    assert not list(tmp_path.glob("*.tmp"))
