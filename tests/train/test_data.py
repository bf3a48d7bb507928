"""Training patches: exact crops of the training images under the 8 symmetries, every
position and symmetry reachable, reproducible and resumable from the generator state."""

import numpy as np
import pytest
import torch
from skimage import io

from lipden.train.data import PatchSampler


@pytest.fixture
def noise_images(tmp_path):
    """Two small 8-bit images of random values (every 3x3 crop is unique)."""
    rng = np.random.default_rng(1)
    for name, shape in (("a.png", (7, 6)), ("b.png", (5, 9))):
        io.imsave(tmp_path / name, rng.integers(0, 256, shape, dtype=np.uint8), check_contrast=False)
    return tmp_path


def _all_crops(images, size):
    """{(image, top, left, symmetry): patch} for every crop and each of the 8 symmetries."""
    crops = {}
    for index, image in enumerate(images):
        for top in range(image.shape[0] - size + 1):
            for left in range(image.shape[1] - size + 1):
                crop = image[top : top + size, left : left + size]
                for symmetry in range(8):
                    moved = torch.rot90(crop, symmetry % 4)
                    crops[(index, top, left, symmetry)] = moved.flip(-1) if symmetry >= 4 else moved
    return crops


def test_patches_are_exact_crops_and_every_position_and_symmetry_occurs(noise_images):
    sampler = PatchSampler(noise_images, patch_size=3, scales=(1.0,), seed=0)
    crops = _all_crops(sampler.images, 3)
    seen = set()
    for _ in range(40):
        batch = sampler.sample(64)
        assert batch.shape == (64, 1, 3, 3) and batch.dtype == torch.float32
        for patch in batch[:, 0]:
            matches = [key for key, crop in crops.items() if torch.equal(crop, patch)]
            assert matches, "a patch is not a crop of a training image"
            seen.update(matches)
    # 5*4 + 3*7 = 41 positions, 8 symmetries each (a symmetric crop may match several keys)
    assert {key[:3] for key in seen} == {key[:3] for key in crops}
    assert {key[3] for key in seen} == set(range(8))


def test_sampling_is_reproducible_and_resumes_from_the_generator_state(noise_images):
    first = PatchSampler(noise_images, patch_size=3, seed=5)
    second = PatchSampler(noise_images, patch_size=3, seed=5)
    assert torch.equal(first.sample(16), second.sample(16))
    state = first.state()
    expected = first.sample(16)
    resumed = PatchSampler(noise_images, patch_size=3, seed=99)
    resumed.set_state(state)
    assert torch.equal(resumed.sample(16), expected)
    assert not torch.equal(PatchSampler(noise_images, patch_size=3, seed=6).sample(16), second.sample(16))


def test_images_smaller_than_a_patch_are_refused(noise_images):
    with pytest.raises(ValueError, match="at least 10 pixels"):
        PatchSampler(noise_images, patch_size=10)
