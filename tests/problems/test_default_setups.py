"""Defaults a new user meets: tuned solves that converge with no options, the denoiser picked by
noise level, and a command line whose help does not import torch."""

import json
import subprocess
import sys

import pytest

import lipden
import problems as P
from lipden.cli import main
from lipden.metrics import psnr
from problems.tuned import DEFAULT_ACCELERATE, DEFAULT_MAX_ITER, TUNED_DEFAULTS_FILE, tuned_setup
from tests.helpers import ROOT

TUNED_PROBLEMS = sorted(json.loads(TUNED_DEFAULTS_FILE.read_text()))


def test_every_standard_problem_has_a_tuned_setup():
    assert set(P.STANDARD_PROBLEMS) <= set(TUNED_PROBLEMS)


@pytest.mark.parametrize("name", TUNED_PROBLEMS)
def test_default_solve_of_each_tuned_problem_converges_on_a_small_image(name):
    problem = P.problem_from_name(name)
    setup = problem.tuned_setup()
    assert setup.key in ("pnp-fbs", "pnp-fbs:box") and setup.accelerate >= 1
    x = P.default_image(problem.kind, 64)
    y = problem.measure(x, seed=0)
    result = lipden.reconstruct(y, problem.physics(x.shape), lipden.load_denoiser(setup.model), x_true=x,
                                **setup.reconstruct_kwargs())
    assert result.guaranteed and result.monotone
    assert result.converged, f"{name}: stopped at the cap {setup.max_iter}"
    assert result.iterations < setup.max_iter // 2
    assert psnr(result.x, x) > psnr(problem.baseline(y, x.shape), x) + 0.1  # x8 on 64x64: 8 lines


def test_tuned_setup_prefers_the_variant_with_the_higher_tuning_psnr(tmp_path):
    table = tmp_path / "tuned.json"
    entry = {"parameters": {"model": "spline-sigma5", "step": 1.0, "strength": 0.1}, "accelerate": 3}
    table.write_text(json.dumps({"p": {
        "pnp-fbs": {**entry, "tuning_psnr": 30.0},
        "pnp-fbs:box": {**entry, "parameters": {**entry["parameters"], "lower": 0.0, "upper": 1.0},
                        "tuning_psnr": 31.0, "max_iter": 2000},
        "pnp-fbs:relu": {**entry, "tuning_psnr": 40.0},  # another prior: never the default
    }}))
    best = tuned_setup("p", "pnp-fbs", path=table)
    assert best.key == "pnp-fbs:box" and best.box and best.max_iter == 2000 and best.model == "spline-sigma5"
    assert best.reconstruct_kwargs() == {"method": "pnp-fbs", "accelerate": 3, "max_iter": 2000, "step": 1.0,
                                         "strength": 0.1, "lower": 0.0, "upper": 1.0}
    plain = tuned_setup("p", "pnp-fbs", box=False, path=table)
    assert plain.key == "pnp-fbs" and not plain.box and plain.max_iter == DEFAULT_MAX_ITER
    nothing = tuned_setup("q", "red", path=table)
    assert nothing.key is None and nothing.parameters == {} and nothing.accelerate == DEFAULT_ACCELERATE
    # a box asked for where only the plain setup is stored: that setup, constrained to [0, 1]
    table.write_text(json.dumps({"p": {"pnp-fbs": {**entry, "parameters": {**entry["parameters"],
                                                                             "relaxation": 1.8}}}}))
    boxed = tuned_setup("p", "pnp-fbs", box=True, path=table)
    assert boxed.key == "pnp-fbs" and boxed.model == "spline-sigma5" and boxed.accelerate == 3
    assert boxed.parameters == {"step": 1.0, "strength": 0.1, "lower": 0.0, "upper": 1.0}  # no over-relaxation


def test_cli_reconstruct_box_keeps_the_tuned_setup_and_refuses_a_solver_without_one(tmp_path, capsys):
    import numpy as np
    from skimage import io

    truth = tmp_path / "truth.png"
    io.imsave(truth, (P.default_image("natural", 48)[0, 0].numpy() * 255).astype(np.uint8), check_contrast=False)
    assert main(["reconstruct", "deblur", str(truth), "--box", "--quiet", "--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    setup = P.problem_from_name(record["problem"]).tuned_setup()
    assert record["tuned_entry"] == setup.key and record["model"] == setup.model
    assert record["parameters"]["strength"] == setup.parameters["strength"]
    assert (record["parameters"]["lower"], record["parameters"]["upper"]) == (0.0, 1.0) and record["converged"]
    assert main(["reconstruct", "deblur", str(truth), "--method", "pnp-drs", "--box"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--box applies to pnp-fbs and red" in err


@pytest.mark.parametrize("problem", ["mri", "deblur"])
def test_cli_reconstruct_without_options_uses_the_tuned_setup_and_converges(problem, tmp_path, capsys):
    import numpy as np
    from skimage import io

    kind = "mri" if problem == "mri" else "natural"
    truth = tmp_path / "truth.png"
    io.imsave(truth, (P.default_image(kind, 64)[0, 0].numpy() * 255).round().astype(np.uint8), check_contrast=False)
    assert main(["reconstruct", problem, str(truth), "--quiet", "--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    setup = P.problem_from_name(record["problem"]).tuned_setup()
    assert record["tuned_entry"] == setup.key and record["model"] == setup.model
    assert record["accelerate"] == setup.accelerate and record["max_iter"] == setup.max_iter
    assert record["converged"] and record["monotone_residual"]
    assert ("lower" in record["parameters"]) == setup.box


def test_cli_reconstruct_says_in_one_line_when_the_cap_stops_it(capsys, tmp_path):
    import numpy as np
    from skimage import io

    truth = tmp_path / "truth.png"
    io.imsave(truth, (P.default_image("natural", 48)[0, 0].numpy() * 255).astype(np.uint8), check_contrast=False)
    assert main(["reconstruct", "deblur", str(truth), "--quiet", "--max-iter", "3",
                            "--accelerate", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    advice = [line for line in lines if "iteration cap" in line]
    assert len(advice) == 1 and "--max-iter" in advice[0] and "--accelerate 3" in advice[0]
    assert "tuned setup" not in advice[0]  # it already ran the tuned setup


@pytest.mark.parametrize("options, expected", [
    (["--add-noise", "25"], "spline-sigma25"),
    (["--add-noise", "4"], "spline-sigma5"),
    (["--sigma", "24"], "spline-sigma25"),
    (["--add-noise", "25", "--sigma", "5"], "spline-sigma5"),
    ([], "spline-sigma15"),
    (["--model", "spline-sigma25"], "spline-sigma25"),
])
def test_denoise_picks_the_shipped_model_closest_to_the_noise_level(options, expected, capsys):
    assert main(["denoise", "--json", *options]) == 0
    captured = capsys.readouterr()
    record = json.loads(captured.out.strip().splitlines()[-1])
    assert record["model"] == expected
    if "--model" in options:  # the demo noise is the level the model was trained for: no mismatch note
        assert captured.err == "" and record["psnr"] > record["psnr_noisy"] + 5
    else:
        assert f"using {expected}" in captured.err


@pytest.mark.parametrize("command", [[], ["denoise"], ["reconstruct"], ["train"], ["tune"], ["benchmark"],
                                     ["certify"], ["publish"]])
def test_help_imports_no_torch(command):
    code = ("import sys, runpy; sys.argv = ['cli.py', *sys.argv[1:], '--help']\n"
            "try:\n    runpy.run_path('cli.py', run_name='__main__')\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "heavy = [m for m in ('torch', 'deepinv', 'numpy', 'skimage') if m in sys.modules]\n"
            "assert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", code, *command], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
