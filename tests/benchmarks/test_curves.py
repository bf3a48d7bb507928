"""``benchmark curves``: learning curves read from training runs, rewritten only when they change."""

import json

from benchmarks import curves
from lipden.train.loop import TrainConfig, train
from tests.helpers import write_smooth_images


def test_curves_follow_the_runs_and_are_not_rewritten_when_unchanged(tmp_path):
    folders = write_smooth_images(tmp_path, {"train": 2, "val": 1})
    runs, output = tmp_path / "runs", tmp_path / "results"
    output.mkdir()

    def config(stop_at):
        return TrainConfig(output=str(runs / "tiny"), train_dir=str(folders["train"]), val_dir=str(folders["val"]),
                           channels=4, depth=3, batch_size=4, patch_size=16, steps=6, stop_at=stop_at,
                           validate_every=2)

    train(config(4), progress=False)
    first = curves.run(output=str(output), runs=str(runs))
    (run,) = first["runs"]
    assert run["step"] == [2, 4] and run["patches"] == [8, 16] and run["channels"] == 4
    assert len(run["val_psnr"]) == 2 and run["hours"] == sorted(run["hours"])
    figure = output / "learning-curves.png"
    stamp = figure.stat().st_mtime_ns
    assert curves.run(output=str(output), runs=str(runs)) == first
    assert figure.stat().st_mtime_ns == stamp  # unchanged curves: nothing rewritten
    train(config(None), progress=False)  # the run goes on: the curve grows
    assert json.loads((output / "learning-curves.json").read_text()) != curves.run(output=str(output), runs=str(runs))
    assert json.loads((output / "learning-curves.json").read_text())["runs"][0]["step"] == [2, 4, 6]
    start = str(runs / "tiny" / "best.safetensors")
    train(TrainConfig(**{**config(None).__dict__, "output": str(runs / "warm"), "steps": 2, "init_from": start}),
          progress=False)
    warm = next(r for r in curves.run(output=str(output), runs=str(runs))["runs"] if r["run"] == "warm")
    best_patches = json.loads((output / "learning-curves.json").read_text())["runs"][0]["patches"]
    assert warm["warm_start_patches"] in best_patches and warm["patches"] == [warm["warm_start_patches"] + 8]
    assert "warm (started from weights that had seen" in (output / "learning-curves.md").read_text()
    import shutil

    shutil.rmtree(runs / "tiny")  # shipped: its state removed, its curve kept
    assert curves.run(output=str(output), runs=str(runs))["runs"][0]["step"] == [2, 4, 6]
