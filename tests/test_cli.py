import json
import subprocess
import sys

from tests.helpers import ROOT


def run_cli(*args):
    return subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True, cwd=ROOT, timeout=600
    )


def test_certify_json_reports_consistent_bounds():
    result = run_cli("certify", "--preset", "cpu", "--size", "16", "--points", "1",
                     "--power-iterations", "3", "--ascent-steps", "3", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert 0 < report["lipschitz_lower"] <= report["lipschitz_upper"] <= 1 + 1e-4
    assert report["certified_1_lipschitz"] is True


def test_bad_arguments_give_one_line_errors():
    for args in (["certify", "--size", "0"], ["certify", "--size", "3", "4", "5"]):
        result = run_cli(*args)
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    result = run_cli("certify", "--activation", "swish")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_help_lists_commands_and_examples():
    result = run_cli("certify", "--help")
    assert result.returncode == 0 and "examples:" in result.stdout


def test_every_command_has_help_with_examples():
    from lipden.cli import build_parser, subcommands

    for name, parser in subcommands(build_parser()).items():
        text = parser.format_help()
        assert "examples:" in text, name
        undocumented = [a.dest for a in parser._actions if not a.help and a.dest != "help"]
        assert not undocumented, (name, undocumented)


def test_readme_cli_reference_matches_the_help_texts():
    from lipden.cli.reference import cli_reference, replace_block

    text = (ROOT / "docs" / "reference.md").read_text()
    assert replace_block(text, cli_reference()) == text, "run: python -m lipden.cli.reference README.md"


def test_benchmark_json_prints_only_one_object_listing_its_files(tmp_path):
    result = run_cli("benchmark", "report", "--output", str(tmp_path), "--json", "--quiet")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["benchmark"] == "report" and record["files"] == [str(tmp_path / "README.md")]
    assert (tmp_path / "README.md").is_file()
