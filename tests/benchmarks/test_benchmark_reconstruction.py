"""The deblur / MRI benchmark: cached per-row results, resumable, figures, subsets."""

import json
import os

import pytest
import torch

from benchmarks import reconstruction
from tests.helpers import DATA

pytestmark = pytest.mark.skipif(not (DATA / "mri_colin27").is_dir(), reason="needs ../shared/data")


@pytest.mark.slow
def test_quick_mri_rows_are_cached_and_summarised(quick_benchmarks):
    tmp_path = quick_benchmarks
    results = json.loads((tmp_path / "mri-quick.json").read_text())
    rows = results["problems"]["mri-random-x4-cf0.08-noise0.002"]
    assert set(rows) == set(reconstruction.QUICK_ROWS)
    fbs = rows["fbs-spline"]
    assert fbs["psnr"] > rows["baseline"]["psnr"] + 2.5  # 60 plain iterations of the stored setup: not converged
    assert fbs["monotone_all"] is True and fbs["guarantee"] is True
    assert len(fbs["curves_image0"]["psnr"]) == len(fbs["curves_image0"]["relative_residual"]) >= 1
    cached = tmp_path / "runs" / "mri-quick" / "mri-random-x4-cf0.08-noise0.002" / "fbs-spline.json"
    stamp = cached.stat().st_mtime_ns
    again = reconstruction.run("mri", quick=True, output=str(tmp_path), rows=["fbs-spline"])  # no recompute
    assert cached.stat().st_mtime_ns == stamp  # resumed from the cache, not recomputed
    assert again["problems"]["mri-random-x4-cf0.08-noise0.002"]["fbs-spline"]["psnr"] == fbs["psnr"]
    summary = json.loads((tmp_path / "mri-quick.json").read_text())
    assert summary["quick"] is True and "machine" in summary
    markdown = (tmp_path / "mri-quick.md").read_text()
    assert "QUICK" in markdown and "PnP-FBS, spline prior" in markdown
    threads = torch.get_num_threads()  # each row records the thread count its time was measured with
    assert fbs["torch_threads"] == threads
    fbs_line = next(line for line in markdown.splitlines() if line.startswith("| PnP-FBS, spline prior |"))
    assert f"({threads} thread" in fbs_line
    expected = sum(r["seconds_per_image"] * len(r["per_image"]["psnr"]) for r in rows.values())
    assert summary["solve_seconds_all_rows"] == pytest.approx(expected) and expected > 0
    assert "Solve time of every row above" in markdown
    assert not list((tmp_path / "runs").rglob("*.partial.*"))  # progress files go once a row is complete
    for figure in ("mri-quick-mri-random-x4-cf0.08-noise0.002.png", "mri-quick-mri-random-x4-cf0.08-noise0.002-curves.png"):
        assert (tmp_path / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("options, message", [({"rows": ["nope"]}, "unknown rows"), ({"stride": 0}, "stride")])
def test_bad_options_are_refused(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        reconstruction.run("mri", quick=True, output=str(tmp_path), **options)


@pytest.mark.slow
def test_quick_deblur_and_report(quick_benchmarks):
    results = json.loads((quick_benchmarks / "deblur-quick.json").read_text())
    rows = results["problems"]["deblur-gaussian1.6-noise0.01"]
    assert rows["fbs-spline"]["psnr"] > rows["baseline"]["psnr"] and rows["fbs-spline"]["monotone_all"]
    report = (quick_benchmarks / "README.md").read_text()
    for stem in ("denoise", "mri", "deblur", "fitting", "activations", "speed", "layers", "large"):
        assert f"python cli.py benchmark {stem} --quick" in report and f"`{stem}-quick.md`" in report


@pytest.mark.slow
def test_quick_large_images(quick_benchmarks):
    results = json.loads((quick_benchmarks / "large-quick.json").read_text())
    assert [row["side"] for row in results["rows"]] == [256, 512]
    for row in results["rows"]:
        for mode in ("tiled_512", "default", "one_pass"):
            assert row[f"denoise_{mode}"]["seconds"] > 0 and row[f"pnp_fbs_{mode}"]["seconds_per_iteration"] > 0
    one_pass, tiled = results["rows"][-1]["denoise_one_pass"], results["rows"][-1]["denoise_tiled_512"]
    assert one_pass["peak_increase_mb"] > tiled["peak_increase_mb"]  # 512x512 at 32 channels: > 32 MB per activation


@pytest.mark.slow
def test_a_subset_is_taken_from_the_full_run_without_solving(quick_benchmarks, tmp_path):
    full = {"label": "x", "psnr": 0.0, "ssim": 0.0, "iterations_mean": 0.0, "converged_all": False,
            "per_image": {"psnr": [30.0, 10.0, 32.0, 10.0], "ssim": [0.8, 0.1, 0.9, 0.1],
                          "iterations": [100, None, 300, None], "converged": [True, False, True, False]}}
    subset = reconstruction._subset_of(full, 2, "somewhere")
    assert subset["psnr"] == 31.0 and subset["ssim"] == pytest.approx(0.85)
    assert subset["iterations_mean"] == 200.0 and subset["converged_all"] is True
    assert subset["per_image"]["psnr"] == [30.0, 32.0] and "somewhere" in subset["parameters_source"]
    # through run(): the quick full run's rows are reused (its single test image is the subset)
    import shutil

    shutil.copytree(quick_benchmarks / "runs" / "mri-quick", tmp_path / "runs" / "mri-quick")
    results = reconstruction.run("mri", quick=True, output=str(tmp_path), rows=["baseline", "fbs-spline"], stride=2)
    rows = results["problems"]["mri-random-x4-cf0.08-noise0.002"]
    original = json.loads((quick_benchmarks / "mri-quick.json").read_text())["problems"]["mri-random-x4-cf0.08-noise0.002"]
    assert rows["fbs-spline"]["psnr"] == original["fbs-spline"]["psnr"]
    assert "mri-quick" in rows["fbs-spline"]["parameters_source"]
    assert (tmp_path / "mri-stride2-quick.md").is_file()
    # a full row recomputed after its subset row was taken is taken again; --force re-takes it too
    problem = "mri-random-x4-cf0.08-noise0.002"
    full_row = tmp_path / "runs" / "mri-quick" / problem / "fbs-spline.json"
    subset_row = tmp_path / "runs" / "mri-stride2-quick" / problem / "fbs-spline.json"
    recomputed = json.loads(full_row.read_text())
    recomputed["per_image"]["psnr"] = [12.5]
    full_row.write_text(json.dumps(recomputed))
    later = subset_row.stat().st_mtime_ns + 10**9
    os.utime(full_row, ns=(later, later))
    again = reconstruction.run("mri", quick=True, output=str(tmp_path), rows=["fbs-spline"], stride=2)
    assert again["problems"][problem]["fbs-spline"]["psnr"] == 12.5
    recomputed["per_image"]["psnr"] = [13.5]
    full_row.write_text(json.dumps(recomputed))
    os.utime(full_row, ns=(0, 0))  # older than the subset row: kept, unless forced
    kept = reconstruction.run("mri", quick=True, output=str(tmp_path), rows=["fbs-spline"], stride=2)
    assert kept["problems"][problem]["fbs-spline"]["psnr"] == 12.5
    forced = reconstruction.run("mri", quick=True, output=str(tmp_path), rows=["fbs-spline"], stride=2, force=True)
    assert forced["problems"][problem]["fbs-spline"]["psnr"] == 13.5  # taken again, not solved


@pytest.mark.slow
def test_box_row_solves_within_the_theorem(tmp_path):
    row = reconstruction.ROWS["fbs-spline-box"]
    assert row.defaults_key() == "pnp-fbs:box" and row.fixed() == {"lower": 0.0, "upper": 1.0}
    results = reconstruction.run("mri", quick=True, output=str(tmp_path), rows=["baseline", "fbs-spline-box"])
    rows = results["problems"]["mri-random-x4-cf0.08-noise0.002"]
    boxed = rows["fbs-spline-box"]
    assert (boxed["parameters"]["lower"], boxed["parameters"]["upper"]) == (0.0, 1.0)
    assert boxed["guarantee"] is True and boxed["monotone_all"] is True
    assert boxed["psnr"] > rows["baseline"]["psnr"] + 3
    assert "box [0, 1]" in (tmp_path / "mri-quick.md").read_text()


def test_a_stored_iteration_cap_raises_the_common_one_outside_quick_runs():
    from problems import problem_from_name

    problem = problem_from_name("mri-random-x4-cf0.08-noise0.002")
    box, uncapped = reconstruction.ROWS["fbs-spline-box"], reconstruction.ROWS["drs-spline"]
    assert problem.default_iteration_cap("pnp-drs") is None
    stored = problem.default_iteration_cap("pnp-fbs:box")
    assert stored is not None and stored > 1000
    assert reconstruction._iteration_cap(problem, box, 1000, quick=False) == stored
    assert reconstruction._iteration_cap(problem, box, 60, quick=True) == 60
    assert reconstruction._iteration_cap(problem, uncapped, 1000, quick=False) == 1000


def _three_small_images() -> list[torch.Tensor]:
    from problems import default_image

    image = default_image("natural", 32)
    return [image, image.flip(-1), image.flip(-2)]


def test_a_row_solved_in_chunks_resumes_after_an_interruption(tmp_path, monkeypatch):
    """Per-image results do not depend on the batching; an interrupted row resumes after its
    last saved batch and solves only what is left (also with another batch size); progress of
    another setup is not reused."""
    from problems import problem_from_name

    problem = problem_from_name("deblur-gaussian1.6-noise0.01")
    row = reconstruction.ROWS["fbs-spline"]
    parameters = {"model": "spline-sigma15", "step": 1.99, "relaxation": 1.0, "strength": 0.15}
    images = _three_small_images()
    whole, whole_first = reconstruction._solve_row(problem, row, parameters, images, 40, 1e-4, "cpu", chunk=0)

    checkpoint = tmp_path / "fbs-spline.partial.json"
    key = {"row": "fbs-spline", "parameters": parameters}
    original = reconstruction.reconstruct
    calls = []

    def interrupted_after_one_batch(*args, **kwargs):
        calls.append(args[0].shape[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(reconstruction, "reconstruct", interrupted_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        reconstruction._solve_row(problem, row, parameters, images, 40, 1e-4, "cpu", chunk=2,
                                  checkpoint=checkpoint, key=key)
    saved = json.loads(checkpoint.read_text())
    assert calls == [2, 1] and saved["per_image"]["psnr"][2] is None
    assert saved["per_image"]["psnr"][:2] == pytest.approx(whole["per_image"]["psnr"][:2], abs=1e-4)
    assert checkpoint.with_suffix(".png").is_file()  # image 0's result, for the figure

    calls.clear()
    monkeypatch.setattr(reconstruction, "reconstruct", lambda *a, **k: calls.append(a[0].shape[0]) or original(*a, **k))
    resumed, first = reconstruction._solve_row(problem, row, parameters, images, 40, 1e-4, "cpu", chunk=3,
                                               checkpoint=checkpoint, key=key)
    assert calls == [1]  # only the unsolved image, though the new batch holds all three
    for name in ("psnr", "ssim"):
        assert resumed["per_image"][name] == pytest.approx(whole["per_image"][name], abs=1e-4)
    assert resumed["per_image"]["iterations"] == whole["per_image"]["iterations"]
    assert resumed["curves_image0"]["psnr"] == pytest.approx(whole["curves_image0"]["psnr"], abs=1e-3)
    assert len(resumed["runs"]) == 2 and resumed["torch_threads"] == torch.get_num_threads()
    assert resumed["monotone_all"] == whole["monotone_all"]
    assert first.shape == whole_first.shape and (first - whole_first).abs().max() <= 1 / 255  # read back from PNG

    calls.clear()  # another setup: the saved progress is not reused
    reconstruction._solve_row(problem, row, parameters, images, 40, 1e-4, "cpu", chunk=2, checkpoint=checkpoint,
                              key=key | {"max_iter": 41})
    assert calls == [2, 1]


def test_a_negative_chunk_is_refused(tmp_path):
    with pytest.raises(ValueError, match="chunk"):
        reconstruction.run("mri", quick=True, output=str(tmp_path), chunk=-1)


@pytest.mark.slow  # over 10 s: runs in CI's slow step
def test_tv_rows_do_not_depend_on_batching_and_a_subset_sees_the_full_runs_noise():
    """TV stops each image on its own, so its per-image results are the same in any batch; a
    subset solved directly with its images' seeds in the full test set reproduces them."""
    from problems import problem_from_name

    problem = problem_from_name("deblur-gaussian1.6-noise0.01")
    row, parameters = reconstruction.ROWS["tv"], {"weight": 0.01}
    images = _three_small_images()
    together, _ = reconstruction._solve_row(problem, row, parameters, images, 300, 1e-4, "cpu", chunk=0)
    alone, _ = reconstruction._solve_row(problem, row, parameters, images, 300, 1e-4, "cpu", chunk=1)
    assert len(set(together["per_image"]["iterations"])) > 1  # the images stop at different iterations
    assert alone["per_image"] == together["per_image"]
    subset, _ = reconstruction._solve_row(problem, row, parameters, images[::2], 300, 1e-4, "cpu", seeds=[0, 2])
    for name in ("psnr", "ssim", "iterations"):
        assert subset["per_image"][name] == together["per_image"][name][::2]


def _cached_row(model: str, sha: str) -> dict:
    return {"label": "PnP-FBS, spline prior", "guarantee": True, "psnr": 30.0, "ssim": 0.9, "iterations_mean": 3,
            "converged_all": True, "monotone_all": True, "max_residual_increase": 0.0, "seconds_per_image": 1.0,
            "parameters": {"model": model, "strength": 0.1}, "weights_sha256": sha}


def test_a_cached_row_of_a_reshipped_prior_is_solved_again(tmp_path, monkeypatch):
    from lipden import denoiser_card

    problem = "mri-random-x4-cf0.08-noise0.002"
    folder = tmp_path / "runs" / "mri-quick" / problem
    folder.mkdir(parents=True)
    current = denoiser_card("spline-sigma15")["sha256"]
    (folder / "fbs-spline.json").write_text(json.dumps(_cached_row("spline-sigma15", "0" * 64)))
    (folder / "drs-spline.json").write_text(json.dumps(_cached_row("spline-sigma15", current)))
    solved: list[str] = []
    monkeypatch.setattr(reconstruction, "_solve_and_cache", lambda _problem, _name, row_id, *rest: solved.append(row_id))
    monkeypatch.setattr(reconstruction, "_rebuild", lambda *args: None)
    reconstruction.run("mri", quick=True, output=str(tmp_path), problems=[problem], rows=["fbs-spline", "drs-spline"])
    assert solved == ["fbs-spline"]  # the row of today's weights stays cached
    # a subset is taken from a full row of today's prior, and solved when the full row is of earlier weights
    taken: list[str] = []
    monkeypatch.setattr(reconstruction, "_take_subset", lambda full, target, stride, label: taken.append(full.stem))
    solved.clear()
    reconstruction.run("mri", quick=True, output=str(tmp_path), problems=[problem], rows=["fbs-spline", "drs-spline"],
                       stride=2)
    assert taken == ["drs-spline"] and solved == ["fbs-spline"]


def test_tables_mark_rows_computed_with_earlier_weights(tmp_path):
    from benchmarks.common import reshipped_prior
    from benchmarks.reconstruction_figures import table
    from benchmarks.report import headline
    from lipden import denoiser_card

    current = denoiser_card("spline-sigma15")["sha256"]
    old, today = _cached_row("spline-sigma15", "0" * 64), _cached_row("spline-sigma15", current)
    assert reshipped_prior(old) == "spline-sigma15" and reshipped_prior(today) is None
    assert reshipped_prior({"parameters": {"weight": 0.01}}) is None  # TV: no prior
    assert reshipped_prior(_cached_row("no-such-model", current)) == "no-such-model"
    assert "EARLIER WEIGHTS of spline-sigma15" in table("p", {"fbs-spline": old}, 1000)[-1]
    assert "EARLIER" not in table("p", {"fbs-spline": today}, 1000)[-1]
    retuned_before = {**today, "tuned_weights_sha256": "0" * 64}  # solved today, with parameters of the old prior
    assert "TUNED FOR EARLIER WEIGHTS of spline-sigma15" in table("p", {"fbs-spline": retuned_before}, 1000)[-1]
    assert reshipped_prior({"parameters": 36449, "weights_sha256": "0" * 64}) is None  # a denoise row's count
    baseline = {**today, "parameters": {}, "psnr": 20.0}
    for row, marked in ((old, True), (retuned_before, True), (today, False)):
        summary = {"test_set": "t", "problems": {"p": {"fbs-spline": row, "tv": baseline, "baseline": baseline}}}
        (tmp_path / "mri.json").write_text(json.dumps(summary))
        text = headline(tmp_path)
        assert ("30.00 †" in text and "† computed with, or tuned for, the earlier weights" in text) == marked
        assert marked or "†" not in text
