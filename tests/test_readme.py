"""The README's and the guarantees page's Python examples run as written, and the README's
generated model table is current."""

import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT

PAGES = [ROOT / "README.md", ROOT / "docs" / "guarantees.md"]


def python_blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


EXAMPLES = [(path.relative_to(ROOT).as_posix(), i, code)
            for path in PAGES for i, code in enumerate(python_blocks(path))]


@pytest.mark.parametrize("page, index, code", EXAMPLES, ids=[f"{p}-{i}" for p, i, _ in EXAMPLES])
def test_example_runs(page, index, code):
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{page}, example {index + 1}:\n{done.stderr[-3000:]}"


def test_readme_has_examples_for_what_users_do():
    code = "\n".join(python_blocks(ROOT / "README.md"))
    for call in ("load_denoiser(", "reconstruct(", "deepinv.physics", "lipschitz_certificate(", "train("):
        assert call in code


def test_readme_is_short_and_its_model_table_current():
    from lipden.cli.reference import readme_with_zoo

    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    assert readme_with_zoo(text) == text, "run: python -m lipden.cli.reference"


def test_readme_headline_results_are_built_from_the_committed_results():
    from benchmarks.report import HEADLINE_END, HEADLINE_START, headline

    text = (ROOT / "README.md").read_text()
    block = text.split(HEADLINE_START, 1)[1].split(HEADLINE_END, 1)[0]
    assert block.strip() == headline(ROOT / "results").strip(), "run: python cli.py benchmark report"
    assert "| denoising, sigma 15 (BSD68) |" in block and "mri-random-x8" in block
