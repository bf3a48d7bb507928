"""Bad input to ``lipden reconstruct``: images too small for the problem, bad values and names."""

import json

import numpy as np
import pytest
from PIL import Image

from tests.cli.helpers import (
    FAST,
    assert_one_line_error,
    cli,
)


def test_tiny_images_for_reconstruction_give_clear_errors(tmp_path, capsys):
    for size in [(1, 1), (2, 2), (1, 40)]:
        path = tmp_path / f"small {size[0]}x{size[1]}.png"
        Image.fromarray(np.zeros(size, np.uint8)).save(path)
        assert_one_line_error(cli(capsys, "reconstruct", "deblur", path, *FAST), "does not fit")
        assert_one_line_error(cli(capsys, "reconstruct", "mri", path, *FAST), "too small|exceeds")
    # a 1x1 kernel fits a 1x1 image: handled, SSIM is not defined there
    code, out, err = cli(capsys, "reconstruct", "deblur", tmp_path / "small 1x1.png", "--kernel", "uniform",
                         "--kernel-size", "1", "--json", *FAST)
    assert code == 0, err
    assert json.loads(out)["ssim"] is None


@pytest.mark.parametrize(
    "args, message",
    [
        (["deblur", "--noise", "nan"], "--noise"),
        (["deblur", "--noise", "2"], "--noise"),
        (["deblur", "--blur-sigma", "0"], "blur.sigma"),
        (["deblur", "--blur-sigma", "inf"], "--blur-sigma"),
        (["deblur", "--blur-sigma", "1e4"], "does not fit the 32x32 image"),
        (["deblur", "--kernel", "uniform", "--kernel-size", "0"], "kernel size"),
        (["deblur", "--kernel", "motion", "--kernel-size", "100001"], "does not fit the 32x32 image"),
        (["mri", "--acceleration", "-2"], "acceleration"),
        (["mri", "--acceleration", "100000"], "acceleration 100000 exceeds the 32 k-space lines"),
        (["mri", "--center-fraction", "0"], "center_fraction"),
        (["mri", "--center-fraction", "nan"], "center_fraction"),
        (["deblur", "--step", "nan"], "finite"),
        (["deblur", "--strength", "0"], "no convergence guarantee"),
        (["deblur", "--method", "red", "--weight", "-1"], "weight"),
        (["deblur", "--tol", "nan"], "--tol"),
        (["deblur", "--device", "no-such-device"], "not a device"),
        (["deblur", "--kernel", "gaussian-ish"], "invalid choice: 'gaussian-ish'"),
        (["mri", "--mask", "spiral"], "invalid choice: 'spiral'"),
        (["deblur", "--method", "admm-pnp"], "invalid choice: 'admm-pnp'"),
        (["ct"], "invalid choice: 'ct'"),
        (["mri", "--acceleration", "2.5"], "invalid int value"),
    ],
)
def test_reconstruct_bad_values_and_names(args, message, capsys, small_truth):
    assert_one_line_error(cli(capsys, "reconstruct", args[0], small_truth, *args[1:], *FAST), message)

