"""``lipden reconstruct`` (and ``tune``'s one-line errors): JSON records, outputs, one-line errors."""

import json

import pytest
from skimage import io

import problems as P
from lipden.cli import main
from lipden.optim.base import averagedness

FAST = ["--max-iter", "30", "--tol", "1e-3", "--quiet"]


@pytest.mark.parametrize("problem, extra", [("deblur", ["--kernel", "uniform"]), ("mri", ["--acceleration", "8"])])
def test_reconstruct_json_record_and_output(problem, extra, truth_png, tmp_path, capsys):
    out, plot = tmp_path / "rec.png", tmp_path / "fig.png"
    code = main(["reconstruct", problem, str(truth_png), "-o", str(out), "--plot", str(plot), "--json", *FAST, *extra])
    assert code == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("problem", "method", "model", "psnr_baseline", "psnr", "ssim", "iterations", "converged",
                "max_residual_increase", "seconds"):
        assert key in record
    assert P.problem_from_name(record["problem"]).name == record["problem"]
    assert record["psnr"] > record["psnr_baseline"]
    assert out.is_file() and plot.is_file()
    assert io.imread(out).shape == (48, 48)
    # refuses to overwrite without --force, leaves the file alone
    before = out.read_bytes()
    assert main(["reconstruct", problem, str(truth_png), "-o", str(out), *FAST, *extra]) == 2
    assert out.read_bytes() == before
    assert "exists" in capsys.readouterr().err


def test_reconstruct_native_spline_kernel_gives_the_same_reconstruction(native_kernel_built, truth_png, tmp_path,
                                                                        capsys):
    from lipden.nn.splines import get_spline_backend

    records, images = {}, {}
    for kernel in ("eager", "native"):
        out = tmp_path / f"{kernel}.png"
        assert main(["reconstruct", "mri", str(truth_png), "-o", str(out), "--json", "--spline-kernel", kernel,
                     *FAST]) == 0
        records[kernel] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        images[kernel] = out.read_bytes()
        assert get_spline_backend() == "eager"  # the command restores the kernel it found
    assert records["native"]["psnr"] == records["eager"]["psnr"]
    assert records["native"]["iterations"] == records["eager"]["iterations"]
    assert images["native"] == images["eager"]


def test_reconstruct_box_bounds_keep_the_guarantee(capsys):
    """MRI x4's stored relaxation (1.8) is beyond 1/alpha' once projected: it is capped, not refused."""
    assert main(["reconstruct", "mri", "--lower", "0", "--upper", "1", "--json", *FAST]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    params = record["parameters"]
    assert (params["lower"], params["upper"]) == (0.0, 1.0) and record["guaranteed"]
    L = P.problem_from_name(record["problem"]).lipschitz_sq((1, 1, 256, 256))
    assert params["relaxation"] < 1 / averagedness("pnp-fbs", {**params, "relaxation": 1.0}, L)
    assert main(["reconstruct", "deblur", "--method", "pnp-drs", "--lower", "0", *FAST]) == 2
    assert "--lower / --upper apply to pnp-fbs and red" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["reconstruct", "mri", "missing.png"], "not found|No such file"),
        (["reconstruct", "deblur", "--noise", "-1"], "--noise"),
        (["reconstruct", "mri", "--acceleration", "0"], "acceleration"),
        (["reconstruct", "deblur", "--step", "5"], "no convergence guarantee.*pass --no-guarantee"),
        (["reconstruct", "deblur", "--model", "nope"], "unknown denoiser"),
        (["reconstruct", "deblur", "--max-iter", "0"], "--max-iter"),
        (["reconstruct", "mri", "--accelerate", "-2"], "--accelerate"),
        (["tune", "mri-random-x4-cf0.08-noise0.002", "--accelerate", "-1"], "--accelerate"),
        (["tune", "deblur-bad-name"], "cannot parse"),
        (["tune", "deblur-gaussian1.6-noise0.01", "--grid", "foo=1,2"], "no parameter 'foo' to search"),
        (["tune", "deblur-gaussian1.6-noise0.01", "--grid", "strength=a"], "--grid takes NAME=V1,V2"),
        (["tune", "deblur-gaussian1.6-noise0.01", "--set", "strength=1,2"], "--set takes NAME=VALUE"),
        (["tune", "deblur-gaussian1.6-noise0.01", "--set", "bar=1"], "no parameter 'bar' to fix"),
        (["tune", "deblur-gaussian1.6-noise0.01", "--grid", "strength=0.1", "--set", "strength=0.2"],
         "both searched and fixed"),
        (["tune", "deblur-gaussian1.6-noise0.01", "--limit", "2", "--indices", "0"], "not both"),
        (["tune", "mri-random-x4-cf0.08-noise0.002", "--indices", "0", "9"], "slices 00-07 only"),
        (["tune", "deblur-gaussian1.6-noise0.01", "--extend", "-1"], "--extend"),
        (["tune", "deblur-gaussian1.6-noise0.01", "--indices", "0", "2", "0"], "repeats an image"),
        (["tune", "deblur-gaussian1.6-noise0.01", "--box", "--set", "lower=0.1"], "either --box or --set"),
        (["tune", "deblur-gaussian1.6-noise0.01", "--models", "free-sigma15", "--grid", "strength=0.1",
          "--indices", "0"], "no certified Lipschitz bound.*pass --no-guarantee"),
    ],
)
def test_reconstruct_bad_input_is_one_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    import re

    assert re.search(message, err)


def test_reconstruct_accelerate_reaches_the_tolerance_plain_steps_miss(truth_png, capsys):
    """MRI x4 at strength 0.05 with the box: the plain iteration needs > 1500 steps on this image
    (measured: relative residual 1.4e-5 after 1500); ``--accelerate 3`` converges within 300."""
    args = ["reconstruct", "mri", str(truth_png), "--json", "--quiet", "--max-iter", "300", "--tol", "1e-5",
            "--strength", "0.05", "--lower", "0", "--upper", "1", "--accelerate", "3"]
    assert main(args) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["converged"] and record["monotone_residual"] and record["guaranteed"]
    assert record["accelerate"] == 3 and record["iterations"] <= record["evaluations"] <= 300
    assert record["psnr"] > record["psnr_baseline"] + 3


def test_reconstruct_refuses_to_overwrite_its_input(truth_png, capsys):
    assert main(["reconstruct", "deblur", str(truth_png), "-o", str(truth_png), "--force", *FAST]) == 2
    assert "overwrite the input" in capsys.readouterr().err

