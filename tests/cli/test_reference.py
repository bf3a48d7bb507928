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
    no_readme = ["--readme", str(tmp_path / "absent.md")]  # the checkout's README is not touched
    assert reference.main([str(path), "--check", *no_readme]) == 1  # missing
    assert "out of date" in capsys.readouterr().err
    assert reference.main([str(path), *no_readme]) == 0
    assert path.read_text() == cli_document()
    assert reference.main([str(path), "--check", *no_readme]) == 0
    path.write_text(path.read_text().replace("--max-iter", "--max-iterations"))
    assert reference.main([str(path), "--check", *no_readme]) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["cli.md"]  # no temporary file left


def test_the_regenerating_command_rewrites_a_stale_model_table(tmp_path, capsys):
    cli_md = tmp_path / "cli.md"
    cli_md.write_text(cli_document())
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{reference.ZOO_START}\n| stale |\n{reference.ZOO_END}\n\nafter\n")
    assert reference.main([str(cli_md), "--readme", str(readme), "--check"]) == 1
    assert "model table is out of date" in capsys.readouterr().err
    assert reference.main([str(cli_md), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "| stale |" not in text and "| `spline-sigma15` | spline | 15 |" in text and text.endswith("after\n")
    assert reference.main([str(cli_md), "--readme", str(readme), "--check"]) == 0


def test_the_model_table_says_how_much_of_a_warm_started_model_was_trained_at_another_noise_level(monkeypatch):
    from lipden.models import pretrained

    card = {"sigma_255": 25.0, "activation": "spline", "bsd68_psnr": 27.8, "certified_lipschitz_40x40": 1.00002,
            "config": {"channels": 64, "depth": 8, "activation": "spline", "conv": "ortho"},
            "training": {"patches_seen": 1_408_000, "set12_val_psnr": 28.47,
                         "warm_start": {"source": "spline-sigma15", "patches_seen": 1_216_000, "sigma_255": 15.0}}}
    same_sigma = {**card, "training": {**card["training"], "warm_start": {"patches_seen": 900_000, "sigma_255": 25.0}}}
    cards = {"warm": card, "resumed": same_sigma}
    monkeypatch.setattr(pretrained, "list_denoisers", lambda: list(cards))
    monkeypatch.setattr(pretrained, "denoiser_card", cards.__getitem__)
    (_, _, warm, resumed) = reference.model_zoo().splitlines()
    assert "| 1.41M, of which 1.22M at sigma 15 |" in warm
    assert "| 1.41M |" in resumed
