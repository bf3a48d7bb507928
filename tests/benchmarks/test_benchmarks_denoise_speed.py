"""Quick modes of the denoise and speed benchmarks: files, keys, sane numbers (no timing thresholds)."""

from __future__ import annotations

import json
import math

import pytest

from lipden import list_denoisers


def _positive_finite(value: float) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_denoise_quick(quick_benchmarks):
    assert "spline-sigma15" in list_denoisers()
    tmp_path = quick_benchmarks
    results = json.loads((tmp_path / "denoise-quick.json").read_text())
    for suffix in ("json", "md", "png"):
        assert (tmp_path / f"denoise-quick.{suffix}").stat().st_size > 0
    assert json.loads((tmp_path / "denoise-quick.json").read_text())["sigmas"] == [15]
    assert {"machine", "rows", "protocol_checks", "published_not_measured"} <= set(results)
    assert all(check["agree"] for check in results["protocol_checks"])

    rows = {row["name"]: row for row in results["rows"]}
    assert {"noisy input", "spline-sigma15", "TV (deepinv TVDenoiser)", "BM3D"} <= set(rows)
    measured = [row for row in results["rows"] if row["psnr"] is not None]
    for row in measured:
        assert math.isfinite(row["psnr"]) and math.isfinite(row["ssim"]), row["name"]
    assert rows["spline-sigma15"]["psnr"] > rows["noisy input"]["psnr"] + 5
    assert rows["spline-sigma15"]["lipschitz_bound"] <= 1.001
    assert rows["spline-sigma15"]["parameters"] > 0
    assert all(row["psnr"] is not None or row["note"].startswith("skipped") for row in results["rows"])
    markdown = (tmp_path / "denoise-quick.md").read_text()
    assert "not measured here" in markdown


@pytest.mark.slow
def test_denoise_quick_reuses_only_rows_whose_inputs_are_unchanged(quick_benchmarks, tmp_path):
    import benchmarks.denoise as denoise

    first = json.loads((quick_benchmarks / "denoise-quick.json").read_text())
    changed = next(row for row in first["rows"] if row["name"] == "spline-sigma15")
    changed["reuse_key"] = {"weights_sha256": "0" * 64}  # as if the model had been reshipped since
    (tmp_path / "denoise-quick.json").write_text(json.dumps(first))
    again = denoise.run(quick=True, output=str(tmp_path))
    before = {(row["name"], row["sigma"]): row for row in first["rows"]}
    measured = {f"{row['name']} @ {row['sigma']}" for row in again["rows"] if row["psnr"] is not None}
    assert "spline-sigma15 @ 15" not in again["reused_rows"] and "noisy input @ 15" not in again["reused_rows"]
    assert set(again["reused_rows"]) == measured - {"spline-sigma15 @ 15", "noisy input @ 15"}
    for row in again["rows"]:  # same weights and data: the re-measured row agrees too
        assert row["psnr"] == pytest.approx(before[row["name"], row["sigma"]]["psnr"], abs=1e-4), row["name"]
    assert all(row["seconds_per_megapixel"] for row in again["rows"] if row["kind"] != "input" and row["psnr"])
    assert denoise.run(quick=True, output=str(tmp_path), force=True)["reused_rows"] == []


def test_denoise_requires_data(monkeypatch, tmp_path):
    import benchmarks.denoise as denoise

    monkeypatch.setattr(denoise, "DEFAULT_DATA", tmp_path / "missing")
    with pytest.raises(ValueError, match="shared/data|not found"):
        denoise.run(quick=True, output=str(tmp_path))


@pytest.mark.slow
def test_speed_quick(quick_benchmarks):
    from benchmarks.speed import PROBLEMS

    tmp_path = quick_benchmarks
    results = json.loads((tmp_path / "speed-quick.json").read_text())
    for suffix in ("json", "md"):
        assert (tmp_path / f"speed-quick.{suffix}").stat().st_size > 0
    assert results["machine"]["torch_threads"] >= 1
    ratios = [
        results["activation"]["ratio_spline_over_relu"],
        results["eval"]["ratio_lipschitz_over_plain"],
        results["training_step"]["ratio_constrained_over_free"],
        *results["eval"]["megapixels_per_second"].values(),
    ]
    assert set(results["pnp"]) == set(PROBLEMS)
    for pnp in results["pnp"].values():
        ratios += [*pnp["iterations_per_second"].values(), 1 + pnp["loop_overhead"]]
    allocator = results["allocator"]
    ratios += [v for v in allocator["seconds"].values() if v is not None]
    passes = results["cpu_passes"]["shapes"]
    assert set(passes) == {"4x1x192x192", "1x1x384x384"}
    ratios += [t for v in passes.values() for t in (*v["seconds"].values(), v["speedup"])]
    assert all(_positive_finite(float(r)) for r in ratios), ratios
    text = (tmp_path / "speed-quick.md").read_text()
    assert "(f) Allocator" in text and "(g) Bounded CPU passes" in text
    calls = results["training_step"]["operator_calls"]  # the constrained step does more than the plain one
    assert 0 < calls["free"] < calls["ortho"]


@pytest.mark.slow
def test_training_quick(quick_benchmarks):
    results = json.loads((quick_benchmarks / "training-quick.json").read_text())
    rows = {(row["conv"], row["bf16"]): row for row in results["rows"]}
    assert {conv for conv, _ in rows} == {"ortho", "free", "plain"}
    assert ("ortho", False) in rows and ("plain", False) in rows
    for row in rows.values():
        assert _positive_finite(row["seconds_per_step"]) and _positive_finite(row["patches_per_second"])
        assert row["kernel_seconds_per_step"] is None  # no GPU kernels on the CPU
    calls = {conv: row["operator_calls"] for (conv, _), row in rows.items()}
    assert 0 < calls["plain"] < calls["free"] < calls["ortho"]
    text = (quick_benchmarks / "training-quick.md").read_text()
    assert "| cpu | 32 | 8 | 1-Lipschitz (BCOP) + splines | no | eager | no |" in text and "plain Conv2d + ReLU" in text
    from lipden.nn.splines import native_kernel_available

    if native_kernel_available():  # the trainer's CPU kernel is timed too, fused with bf16 convolutions
        native = [row for row in results["rows"] if row["spline_kernel"].startswith("native")]
        assert len(native) == 1 and native[0]["conv"] == "ortho"
        kernel = "native, fused chain" if native[0]["bf16"] else "native"
        assert native[0]["spline_kernel"] == kernel and f" | {kernel} | no | " in text
    from lipden.nn.precision import cpu_has_fast_bf16

    if cpu_has_fast_bf16():  # activation + conv blocks as the CPU trainer runs them
        seconds = results["blocks"]["seconds"]
        assert {"relu", "relu, channels-last", "spline, unfused float32"} <= set(seconds)
        assert all(_positive_finite(value) for value in seconds.values())
        assert "| spline, unfused float32 |" in text
