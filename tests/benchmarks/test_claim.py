"""``benchmark claim``: the equal-budget comparison of the activations, measured from its entries."""

import json
import shutil

import pytest

from benchmarks import claim
from lipden.train.comparison import keep_entry
from lipden.train.loop import TrainConfig, train
from tests.helpers import write_smooth_images


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Entries of tiny spline and ReLU runs (the same recipe and budget) and a test folder."""
    root = tmp_path_factory.mktemp("claim")
    folders = write_smooth_images(root, {"train": 2, "val": 1, "test": 2})
    entries = root / "entries"
    for activation in ("spline", "relu"):
        train(TrainConfig(output=str(root / activation), activation=activation, train_dir=str(folders["train"]),
                          val_dir=str(folders["val"]), channels=4, depth=3, batch_size=4, patch_size=16, steps=4,
                          validate_every=2), progress=False)
        keep_entry(root / activation, entries / f"{activation}-16.safetensors", 4)
    return {"root": root, "entries": entries, "test": folders["test"]}


def _run(setup, output, entries=None):
    return claim.run(output=str(output), entries=str(entries or setup["entries"]), test_dir=setup["test"])


def test_measured_entries_give_the_spline_lead_and_a_pending_claim(setup, tmp_path):
    results = _run(setup, tmp_path)
    spline, relu = results["rows"]
    assert (spline["activation"], relu["activation"]) == ("spline", "relu")
    assert spline["budget_patches"] == relu["budget_patches"] == 16 and spline["images"] == 2
    assert 0.99 < spline["lipschitz_bound"] <= 1.0001 and 0.99 < relu["lipschitz_bound"] <= 1.0001
    verdict = results["verdict"]
    assert verdict["status"].startswith("pending: no entry yet for |x|, GroupSort, HouseHolder")
    assert verdict["best_other"] == "relu"
    assert results["wall_seconds"] == pytest.approx(spline["seconds"] + relu["seconds"]) and relu["seconds"] > 0
    assert verdict["margin_db"] == pytest.approx(spline["psnr"] - relu["psnr"], abs=1e-3)
    markdown = (tmp_path / "claim.md").read_text()
    assert "| learned spline | spline |" in markdown and f"{spline['psnr'] - relu['psnr']:+.2f} |" in markdown


def test_unchanged_entries_are_not_measured_again(setup, tmp_path, monkeypatch):
    first = _run(setup, tmp_path)

    def measure(*args):
        raise AssertionError("measured again")

    monkeypatch.setattr(claim, "_measure", measure)
    assert _run(setup, tmp_path)["rows"] == first["rows"]


def test_the_claim_is_judged_once_all_five_entries_agree(setup, tmp_path):
    entries = tmp_path / "entries"
    shutil.copytree(setup["entries"], entries)
    for activation in ("absolute_value", "groupsort", "householder"):  # the ReLU weights, as other activations
        record = json.loads((entries / "relu-16.json").read_text())
        record["recipe"]["activation"] = activation
        (entries / f"{activation}-16.json").write_text(json.dumps(record))
        shutil.copy(entries / "relu-16.safetensors", entries / f"{activation}-16.safetensors")
    verdict = _run(setup, tmp_path / "out", entries)["verdict"]
    expected = "holds" if verdict["margin_db"] >= claim.MARGIN else "does not hold"
    assert verdict["status"] == expected and verdict["missing"] == []
    record = json.loads((entries / "groupsort-16.json").read_text())
    record["budget_patches"] = 32
    (entries / "groupsort-16.json").write_text(json.dumps(record))
    verdict = _run(setup, tmp_path / "out", entries)["verdict"]
    assert verdict["status"].startswith("not judged: the entries differ in budget_patches")


def test_an_entry_whose_weights_changed_is_refused(setup, tmp_path):
    entries = tmp_path / "entries"
    shutil.copytree(setup["entries"], entries)
    record = json.loads((entries / "relu-16.json").read_text())
    (entries / "relu-16.json").write_text(json.dumps({**record, "sha256": "0" * 64}))
    with pytest.raises(Exception, match="does not match the sha256"):
        _run(setup, tmp_path, entries)
