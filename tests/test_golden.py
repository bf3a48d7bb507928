"""Today's outputs, pinned (``tests/golden_outputs.py``): a refactor must reproduce them. An entry
whose model was reshipped (another sha256) is skipped; refresh with ``python -m tests.golden_outputs``."""

import math

import pytest
import torch

import lipden

from .golden_outputs import compute, load


@pytest.fixture(scope="module")
def golden_and_now():
    stored, records = load()
    now, now_records = compute()
    return stored, records, now, now_records


def test_every_shipped_model_and_solver_is_pinned(golden_and_now):
    _, records, _, now_records = golden_and_now
    assert {k for k in now_records if k.startswith("denoise.")} == {f"denoise.{n}" for n in lipden.list_denoisers()}
    assert {k for k in records if k.startswith("reconstruct.")} == {k for k in now_records if k.startswith("reconstruct.")}
    assert len([k for k in records if k.startswith("reconstruct.")]) == 5


def test_outputs_and_certificates_match_the_pinned_ones(golden_and_now):
    stored, records, now, now_records = golden_and_now
    unchanged = [key for key, record in records.items()  # a reshipped (or removed) model's entry no longer applies
                 if key in now_records and record["sha256"] == now_records[key]["sha256"]]
    assert {k for k in records if k.startswith("reconstruct.")} <= set(unchanged)  # frozen priors: always compared
    for key in unchanged:
        torch.testing.assert_close(now[key], stored[key], rtol=0, atol=2e-5, msg=key)
        record = records[key]
        if "certified_40x40" in record:
            assert math.isclose(now_records[key]["certified_40x40"], record["certified_40x40"], rel_tol=1e-9), key
        if "iterations" in record:
            assert now_records[key]["iterations"] == record["iterations"], key
