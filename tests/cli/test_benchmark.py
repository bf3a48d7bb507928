"""``lipden benchmark``: what ``--json`` prints."""

import json

from tests.cli.helpers import run_cli


def test_benchmark_json_prints_only_one_object_listing_its_files(tmp_path):
    result = run_cli("benchmark", "report", "--output", str(tmp_path), "--json", "--quiet")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["benchmark"] == "report" and record["files"] == [str(tmp_path / "README.md")]
    assert (tmp_path / "README.md").is_file()
