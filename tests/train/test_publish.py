"""Publishing a run: weights and card land together, measured, checksummed and loadable."""

import json

import pytest

from lipden.models.checkpoint import load_denoiser_file, sha256_of
from lipden.train import publish as publishing
from lipden.train.loop import TrainConfig, train
from tests.helpers import write_smooth_images


def test_publish_writes_a_loadable_model_and_its_measured_card(tmp_path, monkeypatch):
    folders = write_smooth_images(tmp_path, {"train": 3, "val": 2, "test": 2})
    run = tmp_path / "run"
    train(TrainConfig(output=str(run), train_dir=str(folders["train"]), val_dir=str(folders["val"]), channels=4,
                      depth=3, batch_size=4, patch_size=16, steps=2, validate_every=1), progress=False)
    weights = tmp_path / "weights"
    weights.mkdir()
    monkeypatch.setattr(publishing, "weights_dir", lambda: weights)
    card = publishing.publish(run, "tiny-sigma15", test_dir=folders["test"])
    target = weights / "tiny-sigma15.safetensors"
    assert json.loads(target.with_suffix(".json").read_text()) == card
    assert card["sha256"] == sha256_of(target) and card["name"] == "tiny-sigma15"
    assert card["bsd68_psnr"] > 0 and card["certified_lipschitz_40x40"] <= 1 + 1e-3
    model, _ = load_denoiser_file(target)
    assert model.config.channels == 4
    assert sorted(p.name for p in weights.iterdir()) == ["tiny-sigma15.json", "tiny-sigma15.safetensors"]
    with pytest.raises(FileExistsError):
        publishing.publish(run, "tiny-sigma15", test_dir=folders["test"])
    assert publishing.publish(run, "tiny-sigma15", test_dir=folders["test"], force=True)["sha256"] == card["sha256"]
