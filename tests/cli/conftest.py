"""Fixtures of the command-line tests: a tiny model file, a small ground truth, a small denoiser."""

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import io

import lipden
import problems as P
from tests.helpers import write_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small certified model file: fast to load and run."""
    return str(write_tiny_model(tmp_path_factory.mktemp("tiny model")))


@pytest.fixture(scope="module")
def small_truth(tmp_path_factory):
    """A 32x32 ground truth: the reconstruct checks that need the image stay fast."""
    path = tmp_path_factory.mktemp("truth") / "truth 32.png"
    Image.fromarray((P.default_image("natural", 32)[0, 0].numpy() * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def model():
    """A small random certified denoiser (4 channels, 3 layers) trained for sigma 15/255."""
    torch.manual_seed(0)
    return lipden.LipschitzDenoiser(lipden.DenoiserConfig(channels=4, depth=3, sigma=15 / 255)).eval()


@pytest.fixture
def truth_png(tmp_path):
    """A 48x48 8-bit ground truth in a folder of its own, under a name with a space and an accent."""
    image = (P.default_image("natural", 48)[0, 0].numpy() * 255).round().astype(np.uint8)
    path = tmp_path / "truth image é.png"
    io.imsave(path, image, check_contrast=False)
    return path
