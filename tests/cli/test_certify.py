"""``lipden certify``: the bounds it reports."""

import json

from tests.cli.helpers import run_cli


def test_certify_json_reports_consistent_bounds():
    result = run_cli("certify", "--preset", "cpu", "--size", "16", "--points", "1",
                     "--power-iterations", "3", "--ascent-steps", "3", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert 0 < report["lipschitz_lower"] <= report["lipschitz_upper"] <= 1 + 1e-4
    assert report["certified_1_lipschitz"] is True
