"""Tiled denoising (``lipden.models.tiling``): exactly the untiled result, any size, in bounded memory."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import lipden
from lipden.cli import main
from lipden.models.tiling import denoise_tiled, pass_tiles, receptive_field


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return lipden.LipschitzDenoiser(lipden.DenoiserConfig(channels=4, depth=5, sigma=15 / 255)).eval()


@pytest.fixture(scope="module")
def shipped():
    return lipden.load_denoiser("spline-sigma15")


def _check_exact(model, shape, tile, seed=0):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = model(x, 15 / 255)
        tiled = denoise_tiled(model, x, 15 / 255, tile=tile)
    assert tiled.shape == x.shape
    torch.testing.assert_close(tiled, expected, atol=1e-5, rtol=0)
    return x, expected


def test_receptive_field_is_derived_from_the_model(small, shipped):
    assert receptive_field(small) == ((5, 5), "circular")
    assert receptive_field(shipped) == ((shipped.config.depth,) * 2, "circular")
    free = lipden.LipschitzDenoiser(lipden.DenoiserConfig(channels=2, depth=3, kernel_size=5, conv="free",
                                                          padding_mode="zeros"))
    assert receptive_field(free) == ((6, 6), "zeros")
    with pytest.raises(ValueError, match="pass overlap"):
        receptive_field(nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.AvgPool2d(2)))


@pytest.mark.parametrize("shape, tile", [((1, 1, 100, 130), 32), ((1, 3, 257, 64), 48), ((2, 1, 31, 17), (8, 5)),
                                         ((1, 1, 3, 50), 4)])
def test_tiled_equals_untiled_small_model(small, shape, tile):
    x, expected = _check_exact(small, shape, tile)
    # not vacuous: the same tiles without their context differ at the seams
    naive = expected.clone()
    size = tile if isinstance(tile, int) else tile[0]
    with torch.no_grad():
        naive[..., :size, :size] = small(x[..., :size, :size])
    assert (naive - expected).abs().max() > 1e-3


@pytest.mark.parametrize("shape, tile", [((1, 1, 100, 130), 32), ((1, 3, 257, 64), 48), ((1, 1, 7, 5), 2)])
def test_tiled_equals_untiled_shipped_model(shipped, shape, tile):
    _check_exact(shipped, shape, tile)


def test_zero_padding_and_tiles_larger_than_the_image(small):
    zeros = lipden.LipschitzDenoiser(lipden.DenoiserConfig(channels=3, depth=4, padding_mode="zeros")).eval()
    _check_exact(zeros, (1, 2, 45, 38), 16)
    _check_exact(small, (1, 1, 20, 30), 1000)  # one tile: a single call
    _check_exact(small, (1, 1, 20, 30), (1000, 7))  # spans the rows, tiles the columns


def test_bad_arguments(small):
    x = torch.rand(1, 1, 16, 16)
    for kwargs, message in [({"tile": 0}, "tile"), ({"tile": 8, "overlap": 2}, "smaller than the receptive"),
                            ({"tile": 8, "overlap": -1}, "overlap")]:
        with pytest.raises(ValueError, match=message):
            denoise_tiled(small, x, **kwargs)
    with pytest.raises(ValueError, match="shape"):
        denoise_tiled(small, x[0], tile=8)
    # a network whose receptive field cannot be derived needs overlap= and padding_mode=
    pooled = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.Upsample(scale_factor=1))
    with pytest.raises(ValueError, match="pass overlap"):
        denoise_tiled(pooled, x, tile=8)
    with torch.no_grad():
        out = denoise_tiled(pooled, x, tile=8, overlap=1, padding_mode="zeros")
        torch.testing.assert_close(out, pooled(x), atol=1e-6, rtol=0)


def test_cli_tile_option_gives_the_untiled_image(tmp_path, capsys):
    image = (np.random.default_rng(1).random((70, 90)) * 255).astype(np.uint8)
    source = tmp_path / "large image.png"
    Image.fromarray(image).save(source)
    whole, tiled = tmp_path / "whole.npy", tmp_path / "tiled.npy"
    for target, tile in ((whole, "0"), (tiled, "32")):
        assert main(["denoise", str(source), "-o", str(target), "--tile", tile]) == 0
    assert "32x32 tiles" in capsys.readouterr().out
    np.testing.assert_allclose(np.load(tiled), np.load(whole), atol=1e-5, rtol=0)


@pytest.mark.parametrize("method, params", [("pnp-fbs", {"step": 1.9, "strength": 0.5}),
                                            ("pnp-drs", {"step": 1.0, "strength": 0.5})])
def test_reconstruct_with_a_tiled_denoiser_gives_the_same_iterates(small, method, params):
    import problems

    problem = problems.DeblurProblem("gaussian", blur_sigma=1.6, noise=0.01)
    x = problems.default_image("natural", 48)
    y, physics = problem.measure(x, seed=0), problem.physics(x.shape)
    whole = lipden.reconstruct(y, physics, small, method, max_iter=15, tol=1e-12, **params)
    tiled = lipden.reconstruct(y, physics, small, method, max_iter=15, tol=1e-12, tile=20, **params)
    torch.testing.assert_close(tiled.x, whole.x, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="tile"):
        lipden.reconstruct(y, physics, small, method, max_iter=2, tile=0, **params)


def _block_pixels(size, tile, radius):
    rows, cols = -(-size[0] // tile[0]), -(-size[1] // tile[1])
    extent_h = size[0] if rows == 1 else min(tile[0] + 2 * radius, size[0])
    extent_w = size[1] if cols == 1 else min(tile[1] + 2 * radius, size[1])
    return extent_h * extent_w


@pytest.mark.parametrize("height, width, radius, budget", [(481, 321, 8, 65536), (512, 512, 8, 65536),
                                                           (40, 5000, 8, 65536), (2048, 2048, 8, 32768),
                                                           (100, 130, 1, 900), (64, 64, 8, 4096)])
def test_pass_tiles_fit_the_budget_without_waste(height, width, radius, budget):
    tile = pass_tiles(height, width, (radius, radius), budget)
    assert 1 <= tile[0] <= height and 1 <= tile[1] <= width
    assert _block_pixels((height, width), tile, radius) <= budget
    tiles = -(-height // tile[0]) * -(-width // tile[1])
    # at most 40% more pixels computed than the image has (the context of each tile)
    assert tiles * _block_pixels((height, width), tile, radius) <= 1.4 * height * width + tiles * 2 * radius * width


def test_pass_tiles_keep_an_image_that_fits_whole_and_degrade_gracefully():
    assert pass_tiles(200, 300, (8, 8), 60000) == (200, 300)
    # the context alone exceeds the budget: the smallest blocks there are, still a valid tile
    tile = pass_tiles(7, 5, (8, 8), 30)
    assert 1 <= tile[0] <= 7 and 1 <= tile[1] <= 5


def _count_body_calls(model):
    calls = []
    handle = model.body.register_forward_pre_hook(lambda module, args: calls.append(tuple(args[0].shape)))
    return calls, handle


@pytest.fixture
def default_allocator(monkeypatch):
    """The library's view of a process that keeps glibc's defaults (a CLI run in this process may not)."""
    monkeypatch.setattr(lipden.models.denoiser, "freed_memory_kept", lambda: False)


@pytest.mark.parametrize("shape", [(5, 1, 20, 20), (1, 3, 61, 45), (2, 1, 90, 33)])
def test_bounded_cpu_passes_equal_one_pass(small, shape, monkeypatch, default_allocator):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        monkeypatch.setattr(small, "cpu_pass_bytes", None)
        one_pass = small(x)
        # 4 channels x 4 bytes x 500 pixels: passes of at most 500 pixels per plane
        monkeypatch.setattr(small, "cpu_pass_bytes", 4 * 4 * 500)
        calls, handle = _count_body_calls(small)
        try:
            passes = small(x)
        finally:
            handle.remove()
    torch.testing.assert_close(passes, one_pass, atol=1e-6, rtol=0)
    assert len(calls) > 1 and all(b * h * w <= 500 for b, _, h, w in calls)


def test_cpu_passes_are_off_for_autograd_training_and_a_kept_allocator(small, monkeypatch, default_allocator):
    monkeypatch.setattr(small, "cpu_pass_bytes", 4 * 4 * 100)
    x = torch.rand(2, 1, 30, 30, requires_grad=True)
    calls, handle = _count_body_calls(small)
    try:
        small(x).sum().backward()  # one pass, one graph: the gradient reaches the input
        assert len(calls) == 1 and x.grad is not None and x.grad.abs().sum() > 0
        small.train()
        with torch.no_grad():
            small(x.detach())
        assert len(calls) == 2
        small.eval()
        monkeypatch.setattr(lipden.models.denoiser, "freed_memory_kept", lambda: True)
        with torch.no_grad():
            small(x.detach())
        assert len(calls) == 3  # freed blocks are reused anyway: one pass
        monkeypatch.setattr(lipden.models.denoiser, "freed_memory_kept", lambda: False)
        with torch.no_grad():
            small(x.detach())
        assert len(calls) > 4
    finally:
        small.eval()
        handle.remove()


def test_shipped_model_batches_run_in_passes_with_the_same_result(shipped, default_allocator):
    x = torch.rand(6, 1, 200, 190, generator=torch.Generator().manual_seed(4))
    calls, handle = _count_body_calls(shipped)
    try:
        with torch.no_grad():
            passes = shipped(x)
            shipped.cpu_pass_bytes = None
            one_pass = shipped(x)
    finally:
        del shipped.cpu_pass_bytes  # back to the class default
        handle.remove()
    # 16 MiB per pass: 131,072 pixels at 32 channels (3 images of 200x190 at a time, 2 passes),
    # 65,536 at 64 channels (1 image, 6 passes); then the one pass
    assert len(calls) == {32: 2, 64: 6}[shipped.config.channels] + 1
    torch.testing.assert_close(passes, one_pass, atol=1e-5, rtol=0)
