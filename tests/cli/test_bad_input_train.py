"""Bad input to ``lipden train``: refused before any work."""



from tests.cli.helpers import assert_one_line_error, cli


def test_cuda_graph_training_off_a_gpu_is_refused_before_any_work(capsys, tmp_path):
    output = tmp_path / "run"
    result = cli(capsys, "train", "--cuda-graph", "--device", "cpu", "--output", output, "--quiet")
    assert_one_line_error(result, "CUDA graph training needs --device cuda")
    assert not output.exists() or not any(output.iterdir())

