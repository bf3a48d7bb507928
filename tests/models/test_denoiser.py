import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import lipden
from lipden.models.checkpoint import WeightsError
from tests.helpers import ROOT, write_tiny_model


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("model"))


def run_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_denoiser_is_a_deepinv_denoiser_for_any_size_and_colour():
    import deepinv

    model = lipden.LipschitzDenoiser(lipden.DenoiserConfig(channels=4, depth=3)).eval()
    assert isinstance(model, deepinv.models.Denoiser)
    for shape in [(1, 1, 17, 9), (2, 3, 8, 8)]:
        x = torch.rand(shape)
        assert model(x, 0.05).shape == shape
    colour = torch.rand(1, 3, 8, 8)
    out = model(colour)
    torch.testing.assert_close(out[:, 1:2], model(colour[:, 1:2]))


def test_sigma_mismatch_warns():
    model = lipden.LipschitzDenoiser(lipden.DenoiserConfig(channels=4, depth=3, sigma=15 / 255)).eval()
    with pytest.warns(UserWarning, match="trained for sigma"):
        model(torch.rand(1, 1, 8, 8), sigma=25 / 255)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(torch.rand(1, 1, 8, 8), sigma=15 / 255)


def test_load_checks_sha256_and_certifies(model_file, tmp_path):
    model = lipden.load_denoiser(model_file)
    from lipden.models.pretrained import CERTIFY_SHAPE
    assert not model.training and model.lipschitz_certificate(CERTIFY_SHAPE) <= 1 + 1e-4
    tampered = tmp_path / "tiny.safetensors"
    data = bytearray(model_file.read_bytes())
    data[-5] ^= 0xFF
    tampered.write_bytes(bytes(data))
    (tmp_path / "tiny.json").write_text(model_file.with_suffix(".json").read_text())
    with pytest.raises(WeightsError, match="sha256"):
        lipden.load_denoiser(tampered)


def test_unknown_model_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="shipped"):
        lipden.load_denoiser("spline-sigma99")


def test_cli_denoise_file_writes_atomically_and_refuses_overwrite(model_file, tmp_path):
    clean = (np.random.default_rng(0).random((24, 20)) * 255).astype(np.uint8)
    source = tmp_path / "in put é.png"
    Image.fromarray(clean).save(source)
    out = tmp_path / "out.png"
    result = run_cli("denoise", str(source), "-o", str(out), "--model", str(model_file), "--add-noise", "15", "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["psnr"] is not None and record["output"] == str(out)
    assert np.asarray(Image.open(out)).shape == (24, 20)
    again = run_cli("denoise", str(source), "-o", str(out), "--model", str(model_file))
    assert again.returncode != 0 and "--force" in again.stderr and "Traceback" not in again.stderr
    same = run_cli("denoise", str(source), "-o", str(source), "--model", str(model_file), "--force")
    assert same.returncode != 0 and "overwrite the input" in same.stderr
    assert np.array_equal(np.asarray(Image.open(source)), clean)


@pytest.mark.parametrize(
    "args,message",
    [
        (["missing.png"], "not found"),
        (["--sigma", "-3"], "sigma"),
        (["--model", "nonsense-model"], "unknown denoiser"),
    ],
)
def test_cli_bad_input_gives_one_line_errors(args, message, tmp_path):
    result = run_cli("denoise", *args)
    assert result.returncode != 0
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_cli_rejects_non_images(tmp_path, model_file):
    bogus = tmp_path / "notes.png"
    bogus.write_text("hello")
    result = run_cli("denoise", str(bogus), "--model", str(model_file))
    assert result.returncode != 0 and "not a readable image" in result.stderr


def test_a_denoiser_declares_its_training_noise_level_through_the_protocol():
    from lipden import DenoiserConfig, LipschitzDenoiser, NoiseLevelTrained

    model = LipschitzDenoiser(DenoiserConfig(channels=2, depth=2, sigma=15 / 255))
    assert isinstance(model, NoiseLevelTrained) and model.trained_sigma == pytest.approx(15 / 255)
    assert LipschitzDenoiser(DenoiserConfig(channels=2, depth=2)).trained_sigma is None
    assert not isinstance(torch.nn.Identity(), NoiseLevelTrained)
