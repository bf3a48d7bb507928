"""The results pages are assembled from the committed result files, never retyped."""

import json
import re

import pytest

from benchmarks.common import table_cell
from benchmarks.report import SUMMARY_END, SUMMARY_START, run, summary, time_of_the_run
from tests.helpers import ROOT


def test_readme_results_summary_is_built_from_the_committed_results():
    text = (ROOT / "docs" / "reference.md").read_text()
    block = text.split(SUMMARY_START, 1)[1].split(SUMMARY_END, 1)[0]
    assert block.strip() == summary(ROOT / "results").strip(), "run: python cli.py benchmark report"


@pytest.mark.slow
def test_summary_of_a_quick_run_has_denoising_and_reconstruction_tables(quick_benchmarks):
    text = summary(quick_benchmarks)
    assert "Denoising, BSD68" in text and "QUICK subset" in text
    # a quick row solved with stored parameters tuned for a reshipped prior says so beside its label
    assert re.search(r"\| deblur-gaussian1\.6-noise0\.01 \| PnP-FBS, spline prior"
                     r"( \(parameters TUNED FOR EARLIER WEIGHTS of spline-sigma\d+: to be re-tuned\))? \|", text)
    assert "| mri-random-x4-cf0.08-noise0.002 |" in text
    assert "![reconstructions](../results/" in text
    page = (quick_benchmarks / "README.md").read_text()
    assert "## Time of the quick run" in page and "not recorded" not in page  # every benchmark records its time


def test_the_time_of_the_full_run_sums_what_each_result_records(tmp_path):
    records = {"denoise": {"wall_seconds": 100.0}, "mri": {"solve_seconds_all_rows": 3600.0},
               "fitting": {"wall_time_s": 50.0}, "layers": {},
               "mri-stride4": {"solve_seconds_all_rows": 900.0}}  # a subset: taken from the full rows
    for stem, record in records.items():
        (tmp_path / f"{stem}.json").write_text(json.dumps(record))
        (tmp_path / f"{stem}.md").write_text(f"# {stem}\n")
    run(output=str(tmp_path))
    page = (tmp_path / "README.md").read_text()
    section = page.split("## Time of the full run", 1)[1]
    assert "| mri | 3600 s (1.00 h) | solve time of its rows" in section
    assert "| layers | not recorded | - |" in section
    assert "mri-stride4" not in section
    assert "Sum: 3750 s (1.04 h); layers record no time" in section
    assert time_of_the_run(tmp_path, quick=True) == []  # no quick results there


def _cells(line: str) -> int:
    """Cells of a Markdown table line (an escaped ``\\|`` stays inside its cell)."""
    return len(re.split(r"(?<!\\)\|", line.strip().strip("|")))


def test_every_committed_markdown_table_has_as_many_cells_per_row_as_its_header():
    pages = [ROOT / "README.md", ROOT / "docs" / "reference.md", *sorted((ROOT / "results").glob("*.md"))]
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
