"""``lipden tune`` and the tuning it runs: grids, extension, stored entries, the benchmark's use of them."""

import json

import pytest

import problems as P
from lipden.cli import main
from lipden.optim.base import averagedness, conditions
from lipden.optim.tuning import tune


def test_tune_returns_parameters_that_reconstruct_accepts():
    problem = P.DeblurProblem("gaussian", noise=0.03)
    images = [P.default_image("natural", 32), P.default_image("mri", 32)]
    result = tune(problem, images, ["spline-sigma15"], "pnp-fbs", max_iter=8, tol=1e-3, progress=False)
    assert result.parameters["model"] == "spline-sigma15"
    converged = [t for t in result.trials if t["converged"]]
    assert result.psnr == max(t["psnr"] for t in converged or result.trials)
    assert len(result.trials) > 6  # coarse grid and refinement
    L = problem.lipschitz_sq(images[0].shape)
    for trial in result.trials:  # each FBS trial runs at 0.95 / alpha: over-relaxed, within the theorem
        alpha = averagedness("pnp-fbs", {**trial, "relaxation": 1.0}, L)
        assert trial["relaxation"] == pytest.approx(0.95 / alpha)
        assert conditions("pnp-fbs", trial, L, 1.0).holds
    assert max(t["relaxation"] for t in result.trials) > 1
    boxed = tune(problem, images[:1], ["spline-sigma15"], "pnp-fbs", max_iter=4, tol=1e-3, progress=False,
                 fixed={"lower": 0.0, "upper": 1.0})
    for trial in boxed.trials:  # the bounds are in every trial, unsearched; relaxation 0.95 / alpha'
        assert (trial["lower"], trial["upper"]) == (0.0, 1.0)
        alpha = averagedness("pnp-fbs", {**trial, "relaxation": 1.0}, L)
        assert trial["relaxation"] == pytest.approx(0.95 / alpha)
        assert conditions("pnp-fbs", trial, L, 1.0).holds
    tv = tune(problem, images, None, "tv", max_iter=8, tol=1e-3, progress=False)
    assert set(tv.parameters) == {"weight"}


def _fake_evaluation(score, converged=lambda s: True):
    """Stands in for the trial solves: a score and a convergence flag from the strength alone."""
    calls = []

    def evaluate(problem, images, method, parameters, **kwargs):
        calls.append(dict(parameters))
        return score(parameters["strength"]), converged(parameters["strength"])

    return evaluate, calls


def test_tune_grid_tries_the_grid_then_extends_past_an_edge_optimum(monkeypatch):
    import lipden.optim.tuning as T

    evaluate, calls = _fake_evaluation(lambda s: -((s - 0.55) ** 2))
    monkeypatch.setattr(T, "_evaluate", evaluate)
    problem, images = P.DeblurProblem("gaussian", noise=0.03), [P.default_image("natural", 16)]
    fixed = {"step": 1.99, "relaxation": 1.0}
    result = tune(problem, images, ["spline-sigma15", "relu-sigma15"], "pnp-fbs", progress=False,
                  grid={"strength": [0.07, 0.15, 0.3]}, fixed=fixed, extend=2)
    ratio = (0.3 / 0.07) ** 0.5
    for model in ("spline-sigma15", "relu-sigma15"):
        own = [c for c in calls if c["model"] == model]
        # 0.3 * ratio is tried; the next value (1.29) breaks FBS's theorem at relaxation 1, whose
        # limit (strength < 1) is tried instead, rounded down to 4 digits
        assert [c["strength"] for c in own] == pytest.approx([0.07, 0.15, 0.3, 0.3 * ratio, 0.9999], rel=1e-3)
        assert all(c["step"] == 1.99 and c["relaxation"] == 1.0 for c in own)  # given, not 0.95 / alpha
    assert result.parameters["strength"] == pytest.approx(0.3 * ratio, rel=1e-3)
    assert all(t["converged"] for t in result.trials)

    evaluate, calls = _fake_evaluation(lambda s: -s)
    monkeypatch.setattr(T, "_evaluate", evaluate)
    tune(problem, images, ["spline-sigma15"], "pnp-fbs", progress=False, grid={"strength": [0.07, 0.15, 0.3]},
         fixed=fixed, extend=2)
    assert [c["strength"] for c in calls] == pytest.approx([0.07, 0.15, 0.3, 0.07 / ratio, 0.07 / ratio**2],
                                                           rel=1e-3)
    evaluate, calls = _fake_evaluation(lambda s: -s)
    monkeypatch.setattr(T, "_evaluate", evaluate)
    tune(problem, images, ["spline-sigma15"], "pnp-fbs", progress=False, grid={"strength": [0.07, 0.15, 0.3]},
         fixed=fixed, extend=0)
    assert [c["strength"] for c in calls] == [0.07, 0.15, 0.3]


def _store_many(path: str, worker: int, count: int, start) -> None:
    from lipden.optim.tuning import TuneResult, store_tuned
    start.wait()
    for k in range(count):
        store_tuned(TuneResult("problem", "tv", {"weight": worker + k / 100}, 20.0, [{}]), path,
                    note=f"worker {worker}", key=f"tv-{worker}-{k}")


@pytest.mark.slow  # over 10 s: runs in CI's slow step
def test_store_tuned_keeps_every_entry_when_processes_write_at_once(tmp_path):
    import multiprocessing

    path = str(tmp_path / "tuned.json")
    workers, count = 4, 100
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(workers)
    processes = [context.Process(target=_store_many, args=(path, w, count, start)) for w in range(workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    entries = json.loads((tmp_path / "tuned.json").read_text())["problem"]
    assert len(entries) == workers * count  # no read-modify-write lost another's entry
    assert entries["tv-3-99"]["parameters"] == {"weight": 3.99}


def test_tune_prefers_trials_that_converged(monkeypatch):
    import lipden.optim.tuning as T

    evaluate, _ = _fake_evaluation(lambda s: s, converged=lambda s: s < 0.2)
    monkeypatch.setattr(T, "_evaluate", evaluate)
    problem, images = P.DeblurProblem("gaussian", noise=0.03), [P.default_image("natural", 16)]
    result = tune(problem, images, ["spline-sigma15"], "pnp-fbs", progress=False,
                  grid={"strength": [0.07, 0.15, 0.3]}, fixed={"step": 1.99, "relaxation": 1.0}, extend=2)
    assert result.parameters["strength"] == 0.15 and len(result.trials) == 3
    evaluate, _ = _fake_evaluation(lambda s: s, converged=lambda s: False)  # none converged: the best of all
    monkeypatch.setattr(T, "_evaluate", evaluate)
    result = tune(problem, images, ["spline-sigma15"], "pnp-fbs", progress=False,
                  grid={"strength": [0.07, 0.15, 0.3]}, fixed={"step": 1.99, "relaxation": 1.0}, extend=0)
    assert result.parameters["strength"] == 0.3


def test_cli_tune_grid_write_stores_a_baseline_prior_under_its_own_key(truth_png, tmp_path, monkeypatch, capsys):
    """``--models relu-sigma15 --grid ... --write`` stores pnp-fbs:relu (the benchmark's ReLU row), never the
    spline's pnp-fbs; the note lists every trial; a second run records what it replaced."""
    table = tmp_path / "tuned.json"
    monkeypatch.setattr("problems.base.TUNED_DEFAULTS_FILE", table)
    name = "deblur-gaussian1.6-noise0.01"
    args = ["tune", name, "--images", str(truth_png.parent), "--indices", "0", "--models", "relu-sigma15",
            "--set", "step=1.99", "--set", "relaxation=1", "--extend", "0", "--tol", "0.05", "--write", "--quiet",
            "--json"]
    assert main([*args, "--grid", "strength=0.1,0.2"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    entries = json.loads(table.read_text())[name]
    assert set(entries) == {"pnp-fbs:relu"}
    entry = entries["pnp-fbs:relu"]
    assert entry["parameters"] == record["parameters"]
    assert {k: record["parameters"][k] for k in ("model", "step", "relaxation")} == {
        "model": "relu-sigma15", "step": 1.99, "relaxation": 1.0}
    assert [t["strength"] for t in record["trials"]] == [0.1, 0.2]
    assert "positions 0 (1 images)" in entry["tuned_on"]
    for trial in record["trials"]:
        assert f"relu-sigma15 strength {trial['strength']:g} -> {trial['psnr']:.3f}" in entry["tuned_on"]
    assert main([*args, "--grid", "strength=0.5"]) == 0
    entry = json.loads(table.read_text())[name]["pnp-fbs:relu"]
    assert entry["parameters"]["strength"] == 0.5
    assert "Replaces" in entry["tuned_on"] and json.dumps(record["parameters"], sort_keys=True) in entry["tuned_on"]
    assert main([*args, "--grid", "strength=0.5", "--indices", "3"]) == 2  # the folder has one image
    assert "no image at position 3" in capsys.readouterr().err


def test_cli_tune_box_write_records_the_trials_stop_rule(truth_png, tmp_path, monkeypatch, capsys):
    """``tune --box --write`` stores METHOD:box with its bounds, the stop rule, and a cap above 1000."""
    table = tmp_path / "tuned.json"
    monkeypatch.setattr("problems.base.TUNED_DEFAULTS_FILE", table)
    name = "mri-random-x8-cf0.04-noise0.002"
    code = main(["tune", name, "--images", str(truth_png.parent), "--box", "--write", "--json", "--quiet",
                 "--max-iter", "1200", "--tol", "0.05"])
    assert code == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    entry = json.loads(table.read_text())[name]["pnp-fbs:box"]
    assert (entry["parameters"]["lower"], entry["parameters"]["upper"]) == (0.0, 1.0)
    assert entry["parameters"] == record["parameters"] and entry["max_iter"] == 1200
    assert "max_iter 1200, tol 0.05" in entry["tuned_on"]
    problem = P.problem_from_name(name)
    assert problem.default_iteration_cap("pnp-fbs:box") == 1200
    assert main(["tune", name, "--method", "tv", "--box"]) == 2
    assert "--box applies to pnp-fbs and red" in capsys.readouterr().err


def test_cli_tune_accelerate_is_stored_and_used_by_the_benchmark(truth_png, tmp_path, monkeypatch, capsys):
    """``tune --accelerate M --write`` records M; the benchmark's test solves of that row use it."""
    import benchmarks.reconstruction as R

    table = tmp_path / "tuned.json"
    monkeypatch.setattr("problems.base.TUNED_DEFAULTS_FILE", table)
    name = "mri-random-x8-cf0.04-noise0.002"
    assert main(["tune", name, "--images", str(truth_png.parent), "--write", "--quiet", "--accelerate", "2",
                 "--tol", "0.05"]) == 0
    entry = json.loads(table.read_text())[name]["pnp-fbs"]
    assert entry["accelerate"] == 2 and "Anderson memory 2" in entry["tuned_on"]
    problem = P.problem_from_name(name)
    assert problem.default_acceleration("pnp-fbs") == 2 and problem.default_acceleration("tv") == 0
    seen = {}

    def fake_reconstruct(*args, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(R, "reconstruct", fake_reconstruct)
    with pytest.raises(RuntimeError, match="stop here"):
        R._solve_row(problem, R.ROWS["fbs-spline"], entry["parameters"], [P.default_image("mri", 32)], 10, 1e-3,
                     "cpu", accelerate=problem.default_acceleration("pnp-fbs"))
    assert seen["accelerate"] == 2


def test_benchmark_tunes_a_new_row_with_the_test_stop_rule(monkeypatch):
    """A row without stored parameters is tuned with the cap and tolerance its test solves use."""
    import benchmarks.reconstruction as R

    seen = {}

    def fake_tune(problem, images, models, method, **kwargs):
        seen.update(kwargs)
        from lipden.optim.tuning import TuneResult

        return TuneResult(problem.name, method, {"weight": 0.01}, 20.0, [{}])

    monkeypatch.setattr(R, "tune", fake_tune)
    problem = P.problem_from_name("deblur-gaussian2.5-noise0.02")  # not a benchmark problem: nothing stored
    assert problem.default_parameters("tv") == {}
    images = [P.default_image("natural", 32)]
    parameters, source = R._parameters(problem, R.ROWS["tv"], images, 1000, 1e-5, quick=False)
    assert (seen["max_iter"], seen["tol"]) == (1000, 1e-5)
    assert parameters == {"weight": 0.01} and "cap 1000 iterations, tol 1e-05" in source


def test_tune_grid_without_a_step_uses_reconstructs_default_step(monkeypatch):
    import lipden.optim.tuning as T
    from lipden.optim.base import default_parameters, fbs_fast_relaxation

    evaluate, calls = _fake_evaluation(lambda s: s)
    monkeypatch.setattr(T, "_evaluate", evaluate)
    problem, images = P.DeblurProblem("gaussian", noise=0.03), [P.default_image("natural", 16)]
    result = tune(problem, images, ["spline-sigma15"], "pnp-fbs", progress=False, grid={"strength": [0.1, 0.2]})
    L = problem.lipschitz_sq(images[0].shape)
    step = default_parameters("pnp-fbs", L)["step"]
    assert [c["relaxation"] for c in calls] == pytest.approx([fbs_fast_relaxation(step, s, L) for s in (0.1, 0.2)])
    assert "step" not in result.parameters  # reconstruct fills in the same default


def test_tune_extension_stops_at_the_methods_limit(monkeypatch):
    """PnP-DRS needs strength <= 1/2: an increasing score extends 0.4 to the limit 0.5, not past it."""
    import lipden.optim.tuning as T

    evaluate, calls = _fake_evaluation(lambda s: s)
    monkeypatch.setattr(T, "_evaluate", evaluate)
    problem, images = P.DeblurProblem("gaussian", noise=0.03), [P.default_image("natural", 16)]
    result = tune(problem, images, ["spline-sigma15"], "pnp-drs", progress=False,
                  grid={"strength": [0.1, 0.2, 0.4]}, fixed={"step": 1.0, "relaxation": 0.5}, extend=2)
    assert [c["strength"] for c in calls] == [0.1, 0.2, 0.4, 0.5] and result.parameters["strength"] == 0.5


def test_tune_best_ignores_a_nan_score():
    from lipden.optim.tuning import _best

    trials = [{"psnr": float("nan"), "converged": False}, {"psnr": 20.0, "converged": False}]
    assert _best(trials)["psnr"] == 20.0


def test_a_stored_entry_records_the_sha256_of_its_prior_shipped_or_a_file(tmp_path):
    from lipden import denoiser_card
    from lipden.models.checkpoint import sha256_of
    from lipden.optim.tuning import TuneResult, store_tuned

    path, weights = tmp_path / "tuned.json", tmp_path / "mine.safetensors"
    weights.write_bytes(b"weights")
    for model, expected in (("spline-sigma15", denoiser_card("spline-sigma15")["sha256"]),
                            (str(weights), sha256_of(weights))):
        store_tuned(TuneResult("p", "pnp-fbs", {"model": model, "strength": 0.1}, 20.0, [{}]), path, "note")
        assert json.loads(path.read_text())["p"]["pnp-fbs"]["weights_sha256"] == expected
    store_tuned(TuneResult("p", "tv", {"weight": 0.01}, 20.0, [{}]), path, "note")
    assert "weights_sha256" not in json.loads(path.read_text())["p"]["tv"]
