"""docs/cli.md, the CLI reference generated from the parsers, is in sync with them."""

from lipden.cli import reference
from lipden.cli.reference import cli_document, cli_reference, replace_block
from tests.helpers import ROOT


def test_readme_cli_reference_matches_the_help_texts():
    text = (ROOT / "docs" / "cli.md").read_text()
    assert replace_block(text, cli_reference()) == text, "run: python -m lipden.cli.reference"
    assert cli_document() == text, "run: python -m lipden.cli.reference"


def test_the_reference_page_links_to_the_cli_reference_instead_of_holding_it():
    text = (ROOT / "docs" / "reference.md").read_text()
    assert "(cli.md)" in text
    assert reference.START not in text and reference.END not in text


def test_the_regenerating_command_writes_and_checks_the_file(tmp_path, capsys):
    path = tmp_path / "cli.md"
    assert reference.main([str(path), "--check"]) == 1  # missing
    assert "out of date" in capsys.readouterr().err
    assert reference.main([str(path)]) == 0
    assert path.read_text() == cli_document()
    assert reference.main([str(path), "--check"]) == 0
    path.write_text(path.read_text().replace("--max-iter", "--max-iterations"))
    assert reference.main([str(path), "--check"]) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["cli.md"]  # no temporary file left
