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
    assert not output.exists()


def test_resuming_with_another_schedule_is_one_line_and_leaves_the_run(capsys, tmp_path):
    from tests.helpers import write_smooth_images

    folders = write_smooth_images(tmp_path, {"train": 2, "val": 1})
    output = tmp_path / "run"
    common = ["train", "--output", output, "--train-dir", folders["train"], "--val-dir", folders["val"],
              "--channels", "4", "--depth", "3", "--batch-size", "4", "--validate-every", "1", "--quiet"]
    assert cli(capsys, *common, "--steps", "4", "--stop-at", "1")[0] == 0
    state = (output / "train_state.safetensors").read_bytes()
    assert_one_line_error(cli(capsys, *common, "--steps", "9"), "was trained with steps=4 \\(given 9\\)")
    assert (output / "train_state.safetensors").read_bytes() == state
