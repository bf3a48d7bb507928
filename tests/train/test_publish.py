"""Publishing a run: weights and card land together, measured, checksummed and loadable."""

import json

import pytest

from lipden.models.checkpoint import load_denoiser_file, save_denoiser, sha256_of
from lipden.train import publish as publishing
from lipden.train.loop import TrainConfig, train
from tests.helpers import write_smooth_images


def test_publish_writes_a_loadable_model_and_its_measured_card(tmp_path, monkeypatch):
    folders = write_smooth_images(tmp_path, {"train": 3, "val": 2, "test": 2})
    run = tmp_path / "run"
    train(TrainConfig(output=str(run), train_dir=str(folders["train"]), val_dir=str(folders["val"]), channels=4,
                      depth=3, batch_size=4, patch_size=16, steps=3, validate_every=1), progress=False)
    # the shipped weights are an earlier best than the run's last step
    best, info = load_denoiser_file(run / "best.safetensors")
    save_denoiser(best, run / "best.safetensors", {key: value for key, value in info.items() if key != "config"}
                  | {"step": 1})
    weights = tmp_path / "weights"
    weights.mkdir()
    monkeypatch.setattr(publishing, "weights_dir", lambda: weights)
    card = publishing.publish(run, "tiny-sigma15", test_dir=folders["test"])
    target = weights / "tiny-sigma15.safetensors"
    assert json.loads(target.with_suffix(".json").read_text()) == card
    assert card["sha256"] == sha256_of(target) and card["name"] == "tiny-sigma15"
    assert card["bsd68_psnr"] > 0 and card["certified_lipschitz_40x40"] <= 1 + 1e-3
    training = card["training"]
    assert training["steps_total"] == 3 and training["best_step"] == 1
    assert training["patches_seen"] == 4  # the shipped weights' patches (step 1 of 4), not the run's 12
    step_one = (run / "log.csv").read_text().splitlines()[1].split(",")
    assert step_one[0] == "1" and training["wall_time_minutes"] == round(float(step_one[1]) / 60, 1)
    assert training["schedule"] == {"planned_steps": 3, "planned_patches": 12, "decay_at_fraction": 0.75,
                                    "decay_factor": 0.1}
    assert training["lr_factor_at_best_step"] == 1.0 and training["spline_init"] == "identity"
    model, _ = load_denoiser_file(target)
    assert model.config.channels == 4
    assert sorted(p.name for p in weights.iterdir()) == ["tiny-sigma15.json", "tiny-sigma15.safetensors"]
    with pytest.raises(FileExistsError):
        publishing.publish(run, "tiny-sigma15", test_dir=folders["test"])
    assert publishing.publish(run, "tiny-sigma15", test_dir=folders["test"], force=True)["sha256"] == card["sha256"]


def test_the_card_takes_the_last_log_row_of_its_step_and_no_wall_time_without_one(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("step,elapsed_s,loss_per_patch,val_psnr,lr_factor\n2,60.0,1.0,20.0,1.0\n2,120.0,1.0,21.0,0.1\n")
    assert publishing._log_row(tmp_path, 2) == {"elapsed_s": 120.0, "loss_per_patch": 1.0, "val_psnr": 21.0,
                                               "lr_factor": 0.1}
    assert publishing._log_row(tmp_path, 3) == {} and publishing._log_row(tmp_path / "none", 2) == {}


def test_the_card_of_a_warm_started_run_counts_the_patches_of_its_start(tmp_path, monkeypatch):
    folders = write_smooth_images(tmp_path, {"train": 3, "val": 2, "test": 2})
    common = dict(train_dir=str(folders["train"]), val_dir=str(folders["val"]), channels=4, depth=3, batch_size=4,
                  patch_size=16, validate_every=1)
    train(TrainConfig(output=str(tmp_path / "first"), steps=3, **common), progress=False)
    source = str(tmp_path / "first" / "best.safetensors")
    start = load_denoiser_file(source)[1]
    train(TrainConfig(output=str(tmp_path / "warm"), steps=2, sigma=25.0, init_from=source, **common), progress=False)
    weights = tmp_path / "weights"
    weights.mkdir()
    monkeypatch.setattr(publishing, "weights_dir", lambda: weights)
    training = publishing.publish(tmp_path / "warm", "tiny-sigma25", test_dir=folders["test"])["training"]
    best_step = load_denoiser_file(tmp_path / "warm" / "best.safetensors")[1]["step"]
    assert training["warm_start"]["source"] == source and training["warm_start"]["sha256"] == sha256_of(source)
    assert training["warm_start"]["patches_seen"] == 4 * start["step"]
    assert training["patches_seen"] == 4 * start["step"] + 4 * best_step
    assert training["spline_init"] is None  # the splines started as the source's
