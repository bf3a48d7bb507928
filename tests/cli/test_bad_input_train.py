"""Bad input to ``lipden train``: refused before any work."""



from tests.cli.helpers import assert_one_line_error, cli


def test_cuda_graph_training_off_a_gpu_is_refused_before_any_work(capsys, tmp_path):
    output = tmp_path / "run"
    result = cli(capsys, "train", "--cuda-graph", "--device", "cpu", "--output", output, "--quiet")
    assert_one_line_error(result, "CUDA graph training needs --device cuda")
    assert not output.exists() or not any(output.iterdir())



def test_a_bad_stop_step_is_refused_before_any_work(capsys, tmp_path):
    output = tmp_path / "run"
    assert_one_line_error(cli(capsys, "train", "--stop-at", "0", "--output", output, "--quiet"), "--stop-at")
    assert_one_line_error(cli(capsys, "train", "--lr-spline", "0", "--output", output, "--quiet"),
                          "--lr-spline must be > 0")
    assert not output.exists()


def test_resuming_with_another_schedule_is_one_line_and_leaves_the_run(capsys, tmp_path):
    from tests.helpers import write_smooth_images

    folders = write_smooth_images(tmp_path, {"train": 2, "val": 1})
    output = tmp_path / "run"
    common = ["train", "--output", output, "--train-dir", folders["train"], "--val-dir", folders["val"],
              "--channels", "4", "--depth", "3", "--batch-size", "4", "--validate-every", "1", "--quiet"]
    assert cli(capsys, *common, "--steps", "4", "--stop-at", "1")[0] == 0
    # before the decay (75 % of the steps) of both budgets the budget may change: exact
    assert cli(capsys, *common, "--steps", "8", "--stop-at", "7")[0] == 0
    state = (output / "train_state.safetensors").read_bytes()
    assert_one_line_error(cli(capsys, *common, "--steps", "12"),
                          "was trained with steps=8 \\(given 12\\); .* step 7 is past the decay at 0.75 x 8")
    assert (output / "train_state.safetensors").read_bytes() == state
    # without --steps the budget is the preset's (4000), not the run's: a change not asked for
    assert_one_line_error(cli(capsys, *common), "was trained with steps=8 \\(given 4000\\): resume with")
    assert (output / "train_state.safetensors").read_bytes() == state


def test_resume_takes_the_recipe_from_the_state(capsys, tmp_path):
    from lipden.models.checkpoint import load_tensors
    from tests.helpers import write_smooth_images

    folders = write_smooth_images(tmp_path, {"train": 2, "val": 1})
    output = tmp_path / "run"
    data = ["--train-dir", folders["train"], "--val-dir", folders["val"], "--quiet"]
    assert_one_line_error(cli(capsys, "train", "--resume", "--output", output, *data), "nothing to go on with")
    assert_one_line_error(cli(capsys, "train", "--resume", "--no-resume", "--output", output, *data), "contradict")
    assert cli(capsys, "train", "--output", output, "--channels", "4", "--depth", "3", "--batch-size", "4",
               "--steps", "4", "--stop-at", "2", "--lr-scale", "0.5", "--lr-spline", "3e-5", "--seed", "3",
               "--validate-every", "1", "--sigma", "10", *data)[0] == 0
    first = load_tensors(output / "train_state.safetensors")[1]["train_config"]
    assert first["lr_spline"] == 3e-5 and first["lr_conv"] == 4e-4  # given as is; the preset's rate x 0.5
    assert cli(capsys, "train", "--resume", "--output", output, *data)[0] == 0
    _, metadata = load_tensors(output / "train_state.safetensors")
    assert metadata["step"] == 4  # the recorded --steps, not the preset's 4000
    invocation = {"stop_at", "replan_steps"}  # how this start was asked, not the recipe
    assert {k: v for k, v in metadata["train_config"].items() if k not in invocation} == \
        {k: v for k, v in first.items() if k not in invocation}
    assert_one_line_error(cli(capsys, "train", "--resume", "--output", output, "--lr-scale", "1", *data),
                          "was trained with lr_conv")
    assert_one_line_error(cli(capsys, "train", "--resume", "--output", output, "--lr-spline", "1e-4", *data),
                          "was trained with lr_spline=3e-05 \\(given 0.0001\\)")
    # the rate scale given again derives the preset's rates again; the rate given stays
    assert cli(capsys, "train", "--resume", "--output", output, "--lr-scale", "0.5", *data)[0] == 0


def test_warm_start_weights_that_do_not_fit_are_one_line_and_start_nothing(capsys, tmp_path):
    from tests.helpers import write_smooth_images

    folders = write_smooth_images(tmp_path, {"train": 2, "val": 1})
    common = ["train", "--train-dir", folders["train"], "--val-dir", folders["val"], "--channels", "4", "--depth", "3",
              "--batch-size", "4", "--steps", "2", "--validate-every", "1", "--quiet"]
    missing = tmp_path / "missing.safetensors"
    assert_one_line_error(cli(capsys, *common, "--init-from", missing, "--output", tmp_path / "a"), "nor an existing file")
    # the shipped spline-sigma15 has 64 channels and 8 layers
    assert_one_line_error(cli(capsys, *common, "--init-from", "spline-sigma15", "--output", tmp_path / "b"),
                          "--init-from spline-sigma15: its network .* is not the run's")
    assert not (tmp_path / "a" / "train_state.safetensors").exists()
    assert not (tmp_path / "b" / "train_state.safetensors").exists()
    assert cli(capsys, *common, "--output", tmp_path / "c")[0] == 0
    assert cli(capsys, *common, "--init-from", tmp_path / "c" / "best.safetensors", "--sigma", "25",
               "--output", tmp_path / "d")[0] == 0
