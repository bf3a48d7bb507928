"""The results pages are assembled from the committed result files, never retyped."""

import re

from benchmarks.common import table_cell
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


def _cells(line: str) -> int:
    """Cells of a Markdown table line (an escaped ``\\|`` stays inside its cell)."""
    return len(re.split(r"(?<!\\)\|", line.strip().strip("|")))


def test_every_committed_markdown_table_has_as_many_cells_per_row_as_its_header():
    pages = [ROOT / "README.md", *sorted((ROOT / "results").glob("*.md"))]
    for page in pages:
        header = None
        for number, line in enumerate(page.read_text().splitlines(), 1):
            if not line.startswith("|"):
                header = None
            elif header is None:
                header = _cells(line)
            else:
                assert _cells(line) == header, f"{page.name}:{number}: {line[:80]}"


def test_a_label_with_a_bar_stays_in_its_cell():
    assert table_cell("PnP-FBS, |x| prior") == "PnP-FBS, \\|x\\| prior"
    assert _cells(f"| {table_cell('a |x| b')} | 1 |") == 2
