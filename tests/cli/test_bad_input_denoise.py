"""Bad input to ``lipden denoise``: tiny images, noise levels off the scale, devices, odd file names."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from tests.cli.helpers import (
    SETTINGS,
    assert_one_line_error,
    cli,
    leftovers,
    new_dir,
)


@SETTINGS
@given(shape=st.one_of(st.tuples(st.integers(1, 3), st.integers(1, 3)),
                       st.tuples(st.just(1), st.integers(1, 60)), st.tuples(st.integers(1, 60), st.just(2))),
       channels=st.sampled_from([1, 3]))
def test_tiny_and_thin_images_are_denoised(shape, channels, tmp_path, capsys, tiny, model):
    x = torch.rand(1, channels, *shape)
    assert model(x).shape == x.shape
    folder = new_dir(tmp_path)
    source = folder / "small.png"
    array = (x[0].permute(1, 2, 0).squeeze(-1).numpy() * 255).astype(np.uint8)
    Image.fromarray(array).save(source)
    code, out, err = cli(capsys, "denoise", source, "-o", folder / "out.png", "--model", tiny,
                         "--add-noise", "10", "--json")
    assert code == 0, err
    record = json.loads(out)
    assert np.asarray(Image.open(folder / "out.png")).shape == array.shape
    assert (record["ssim"] is None) == (min(shape) < 3)


@SETTINGS
@given(value=st.sampled_from(["0", "-1", "255", "1e9", "nan", "inf", "-inf"]),
       option=st.sampled_from(["--sigma", "--add-noise"]))
def test_denoise_noise_levels_outside_the_scale(value, option, tmp_path, capsys, tiny):
    result = cli(capsys, "denoise", "--model", tiny, option, value, "-o", tmp_path / "never.png")
    assert_one_line_error(result, re.escape(option))
    assert not (tmp_path / "never.png").exists()


def test_device_that_is_not_here(capsys, tiny):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert_one_line_error(cli(capsys, "denoise", "--model", tiny, "--device", "cuda"), "CUDA is not available")
    assert_one_line_error(cli(capsys, "denoise", "--model", tiny, "--tile", "-1"), "--tile")


def test_folder_batch_with_spaces_and_non_ascii_names_reruns_idempotently(tmp_path, capsys, tiny):
    inputs = tmp_path / "scans é ü"
    inputs.mkdir()
    for index, name in enumerate(["a b.png", "ü.tif", "snow ❄.npy", "c.jpg"]):
        data = (np.random.default_rng(index).random((12, 9)) * 255).astype(np.uint8)
        if name.endswith(".npy"):
            np.save(inputs / name, data / 255)
        else:
            Image.fromarray(data).save(inputs / name)
    (inputs / "notes.txt").write_text("not an image")
    # outputs next to the inputs: a rerun must not take them for inputs
    code, out, err = cli(capsys, "denoise", inputs, "--model", tiny, "--json")
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 4 and not any(r["skipped"] for r in records)
    written = {Path(r["output"]).name for r in records}
    assert written == {"a b_denoised.png", "ü_denoised.tif", "snow ❄_denoised.npy", "c_denoised.png"}
    code, out, _ = cli(capsys, "denoise", inputs, "--model", tiny, "--json")
    assert code == 0 and [json.loads(line)["skipped"] for line in out.splitlines()] == [True] * 4
    assert len(leftovers(inputs)) == 9

