"""lipden.train.comparison: a run's best within a budget kept with its recipe, and the check that
the entries of one comparison were trained alike."""

import json

import pytest

from lipden.models.checkpoint import sha256_of
from lipden.train.comparison import keep_entry, main, read_entries, unequal_settings
from lipden.train.loop import TrainConfig, train
from tests.helpers import write_smooth_images


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny runs of 4 steps (spline and ReLU) and one of 2 steps, with a validation set."""
    root = tmp_path_factory.mktemp("comparison")
    folders = write_smooth_images(root, {"train": 2, "val": 1})

    def run(name, activation, stop_at, **changes):
        config = TrainConfig(output=str(root / name), activation=activation, train_dir=str(folders["train"]),
                             val_dir=str(folders["val"]), channels=4, depth=3, batch_size=4, patch_size=16,
                             steps=6, stop_at=stop_at, validate_every=2, **changes)
        train(config, progress=False)
        return root / name

    return {"spline": run("spline", "spline", 4), "relu": run("relu", "relu", 4),
            "short": run("short", "relu", 2), "faster": run("faster", "relu", 4, lr_scale=2.0),
            "spline_lr": run("spline_lr", "spline", 4, lr_spline=1e-3), "root": root}


def test_an_entry_is_the_runs_best_with_its_budget_and_recipe(runs, tmp_path):
    record = keep_entry(runs["spline"], tmp_path / "spline-16.safetensors", 4)
    assert sha256_of(tmp_path / "spline-16.safetensors") == sha256_of(runs["spline"] / "best.safetensors")
    assert record["budget_steps"] == 4 and record["budget_patches"] == 16
    assert record["recipe"]["activation"] == "spline" and record["network"]["channels"] == 4
    assert record["best_step"] in (2, 4) and record["run"] == "spline"
    (entry,) = read_entries(tmp_path).values()
    assert entry["sha256"] == record["sha256"] and entry["weights"].endswith("spline-16.safetensors")
    assert json.loads((tmp_path / "spline-16.json").read_text()) == record
    # taken again (the record lost, say): the same weights, the same record
    assert keep_entry(runs["spline"], tmp_path / "spline-16.safetensors", 4) == record


def test_a_run_off_its_budget_or_another_runs_entry_is_refused(runs, tmp_path):
    with pytest.raises(ValueError, match="is at step 2, not 4"):
        keep_entry(runs["short"], tmp_path / "relu.safetensors", 4)
    keep_entry(runs["relu"], tmp_path / "relu.safetensors", 4)
    with pytest.raises(ValueError, match="is not the best of"):
        keep_entry(runs["spline"], tmp_path / "relu.safetensors", 4)
    assert not (tmp_path / "spline.json").exists()


def test_a_weights_file_without_its_record_is_not_an_entry(runs, tmp_path):
    (tmp_path / "half.safetensors").write_bytes((runs["relu"] / "best.safetensors").read_bytes())
    assert read_entries(tmp_path) == {}


def test_entries_that_differ_in_more_than_the_activation_are_named(runs, tmp_path):
    entries = {name: keep_entry(runs[name], tmp_path / f"{name}.safetensors", steps)
               for name, steps in (("spline", 4), ("relu", 4))}
    assert unequal_settings(entries) == []
    entries["short"] = keep_entry(runs["short"], tmp_path / "short.safetensors", 2)
    entries["faster"] = keep_entry(runs["faster"], tmp_path / "faster.safetensors", 4)
    lines = unequal_settings(entries)
    assert any(line.startswith("budget_patches:") and "short 8" in line for line in lines)
    assert any(line.startswith("lr_conv:") for line in lines)
    assert not any(line.startswith("activation") for line in lines)


def test_spline_settings_are_compared_between_spline_entries_only(runs, tmp_path):
    entries = {name: keep_entry(runs[name], tmp_path / f"{name}.safetensors", 4) for name in ("spline_lr", "relu")}
    assert entries["spline_lr"]["recipe"]["lr_spline"] == 1e-3 != entries["relu"]["recipe"]["lr_spline"]
    assert unequal_settings(entries) == []  # ReLU has no spline to learn at any rate
    entries["spline"] = keep_entry(runs["spline"], tmp_path / "spline.safetensors", 4)
    assert [line.split(":")[0] for line in unequal_settings(entries)] == ["lr_spline"]


def test_the_command_line_answers_bad_input_in_one_line(runs, tmp_path, capsys):
    assert main(["only-one"]) == 2
    assert main([str(runs["short"]), str(tmp_path / "e.safetensors"), "4"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "not 4" in err[-1] and len(err) == 2
    assert main([str(tmp_path / "missing"), str(tmp_path / "e.safetensors"), "4"]) == 1
    assert main([str(runs["relu"]), str(tmp_path / "e.safetensors"), "4"]) == 0
    assert (tmp_path / "e.json").is_file()
