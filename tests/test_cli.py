import json
import subprocess
import sys

from .conftest import ROOT


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
