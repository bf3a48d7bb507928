"""The results pages are assembled from the committed result files, never retyped."""

from benchmarks.report import SUMMARY_END, SUMMARY_START, summary

from .conftest import ROOT


def test_readme_results_summary_is_built_from_the_committed_results():
    text = (ROOT / "README.md").read_text()
    block = text.split(SUMMARY_START, 1)[1].split(SUMMARY_END, 1)[0]
    assert block.strip() == summary(ROOT / "results").strip(), "run: python cli.py benchmark report"


def test_summary_of_a_quick_run_has_denoising_and_reconstruction_tables(quick_benchmarks):
    text = summary(quick_benchmarks)
    assert "Denoising, BSD68" in text and "QUICK subset" in text
    assert "| deblur-gaussian1.6-noise0.01 | PnP-FBS, spline prior |" in text
    assert "| mri-random-x4-cf0.08-noise0.002 |" in text
    assert "![reconstructions](results/" in text
