"""Bad input to ``lipden tune`` and ``lipden benchmark``: refused before any work."""


import pytest

from tests.cli.helpers import assert_one_line_error, cli


@pytest.mark.parametrize("command", [["tune", "mri-random-x4-cf0.08-noise0.002"], ["benchmark", "mri", "--rows", "tv"]])
def test_tune_and_benchmark_refuse_a_bad_device_before_any_work(command, capsys, tmp_path):
    result = cli(capsys, *command, "--device", "cuda:x", *(["--output", tmp_path] if command[0] == "benchmark" else []))
    assert_one_line_error(result, "not a device name")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("option, value", [("--chunk", "-1"), ("--stride", "0")])
def test_benchmark_refuses_a_bad_batch_or_stride_before_any_work(option, value, capsys, tmp_path):
    result = cli(capsys, "benchmark", "mri", "--rows", "tv", option, value, "--output", tmp_path)
    assert_one_line_error(result, option)
    assert not any(tmp_path.iterdir())



@pytest.mark.parametrize("command", [["benchmark", "mri", "--rows", "tv", "--spline-kernel", "fast"],
                                     ["tune", "mri-random-x4-cf0.08-noise0.002", "--spline-kernel", "fast"],
                                     ["reconstruct", "mri", "--spline-kernel", "fast"]])
def test_an_unknown_spline_kernel_is_refused(command, capsys, tmp_path):
    result = cli(capsys, *command, *(["--output", tmp_path] if command[0] == "benchmark" else []))
    assert_one_line_error(result, "--spline-kernel")
    assert not any(tmp_path.iterdir())


def test_benchmark_refuses_compile_with_another_spline_kernel(capsys, tmp_path):
    result = cli(capsys, "benchmark", "mri", "--rows", "tv", "--compile", "--spline-kernel", "native",
                 "--output", tmp_path)
    assert_one_line_error(result, "--compile")
    assert not any(tmp_path.iterdir())
