"""Bad input: unreadable, truncated and unusable image files (one-line errors naming the file, no partial
output), and every image format read and written back."""

import re

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from lipden.io import ImageError, read_image, write_image
from tests.cli.helpers import SETTINGS, assert_one_line_error, cli, leftovers, new_dir, valid_file


@SETTINGS
@given(content=st.binary(max_size=300), suffix=st.sampled_from([".png", ".jpg", ".tif", ".bmp", ".npy"]))
def test_garbage_files_give_one_line_errors_naming_the_file(content, suffix, tmp_path, capsys, tiny):
    folder = new_dir(tmp_path)
    source = folder / f"junk{suffix}"
    source.write_bytes(content)
    out = folder / "out"
    out.mkdir()
    result = cli(capsys, "denoise", source, "-o", out / "x.png", "--model", tiny)
    assert_one_line_error(result, re.escape(str(source)))
    assert leftovers(out) == []
    with pytest.raises(ImageError):
        read_image(source)


@SETTINGS
@given(suffix=st.sampled_from([".png", ".jpg", ".tif", ".bmp", ".npy"]), fraction=st.floats(0, 0.99))
def test_truncated_files_fail_cleanly_or_give_a_whole_image(suffix, fraction, tmp_path, capsys, tiny):
    folder = new_dir(tmp_path)
    source = valid_file(folder, suffix)
    data = source.read_bytes()
    source.write_bytes(data[: int(len(data) * fraction)])
    out = folder / "out"
    out.mkdir()
    code, _, err = result = cli(capsys, "denoise", source, "-o", out / "x.png", "--model", tiny)
    if code == 0:  # some decoders fill a cut-off tail: then the output is whole
        assert np.asarray(Image.open(out / "x.png")).shape == (24, 20)
    else:
        assert_one_line_error(result, re.escape(str(source)))
        assert leftovers(out) == []


@pytest.mark.parametrize(
    "name, make, message",
    [
        ("empty.png", lambda p: p.write_bytes(b""), "empty file"),
        ("folder.png", lambda p: p.mkdir(), "no images in folder"),
        ("anim.gif", lambda p: Image.new("L", (4, 4)).save(p), "unsupported file type"),
        ("nan.npy", lambda p: np.save(p, np.full((5, 5), np.nan, np.float32)), "NaN"),
        ("inf.npy", lambda p: np.save(p, np.array([[0.5, np.inf], [0, 1]])), "infinite"),
        ("scale255.npy", lambda p: np.save(p, np.full((5, 5), 200.0)), r"\[0, 1\] scale"),
        ("scale255.tif", lambda p: Image.fromarray(np.full((5, 5), 200, np.float32)).save(p), r"\[0, 1\] scale"),
        ("negative.npy", lambda p: np.save(p, -np.ones((5, 5), np.int32)), "16 bits"),
        ("complex.npy", lambda p: np.save(p, np.ones((5, 5), complex)), "pixel type"),
        ("stack.npy", lambda p: np.save(p, np.zeros((2, 5, 5, 3))), "shape"),
        ("flat.npy", lambda p: np.save(p, np.zeros(5)), "shape"),
        ("nothing.npy", lambda p: np.save(p, np.zeros((0, 5))), "empty image"),
        ("pickle.npy", lambda p: np.save(p, np.array([{}]), allow_pickle=True), "not a readable image"),
    ],
)
def test_unusable_images_are_refused(name, make, message, tmp_path, capsys, tiny):
    source = tmp_path / name
    make(source)
    result = cli(capsys, "denoise", source, "-o", tmp_path / "out.png", "--model", tiny)
    assert_one_line_error(result, message)
    assert not (tmp_path / "out.png").exists()
    with pytest.raises((ImageError, FileNotFoundError)):
        read_image(source)


def _grey(draw, dtype, high):
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    values = draw(st.lists(st.integers(0, high), min_size=h * w, max_size=h * w))
    return np.array(values, dtype=dtype).reshape(h, w)


@st.composite
def saved_images(draw):
    """(PIL image to save, suffix, expected (C, H, W) float array)."""
    kind = draw(st.sampled_from(["rgba", "la", "palette", "palette-alpha", "grey16", "float-tiff", "int32-tiff",
                                 "bilevel", "cmyk"]))
    grey = _grey(draw, np.uint8, 255)
    if kind == "rgba":
        rgba = np.stack([grey, 255 - grey, grey // 2, np.full_like(grey, 7)], -1)
        return Image.fromarray(rgba, "RGBA"), ".png", rgba[..., :3].transpose(2, 0, 1) / 255
    if kind == "la":
        return Image.fromarray(np.stack([grey, 255 - grey], -1), "LA"), ".png", grey[None] / 255
    if kind.startswith("palette"):
        rgb = np.stack([grey, grey // 3, 255 - grey], -1)
        image = Image.fromarray(rgb).quantize(256)
        if kind == "palette-alpha":
            image.info["transparency"] = 0
        expected = np.asarray(image.convert("RGB")).transpose(2, 0, 1) / 255
        return image, ".png", expected
    if kind == "grey16":
        data = _grey(draw, np.uint16, 65535)
        return Image.fromarray(data), draw(st.sampled_from([".png", ".tif"])), data[None] / 65535
    if kind == "float-tiff":
        data = (grey / 255 * 1.2 - 0.1).astype(np.float32)  # noisy images leave [0, 1] a little
        return Image.fromarray(data), ".tif", data[None]
    if kind == "int32-tiff":
        data = _grey(draw, np.int32, 65535)
        return Image.fromarray(data), ".tif", data[None] / 65535
    if kind == "bilevel":
        return Image.fromarray(grey > 127), ".png", (grey > 127)[None].astype(float)
    cmyk = Image.fromarray(np.stack([grey, 255 - grey, grey], -1)).convert("CMYK")
    return cmyk, ".tif", np.asarray(cmyk.convert("RGB")).transpose(2, 0, 1) / 255


@SETTINGS
@given(case=saved_images())
def test_image_formats_are_read_correctly(case, tmp_path):
    image, suffix, expected = case
    path = new_dir(tmp_path) / f"image{suffix}"
    image.save(path)
    tensor, info = read_image(path)
    assert tensor.dtype == torch.float32 and tensor.dim() == 3 and tensor.shape[0] in (1, 3)
    np.testing.assert_allclose(tensor.numpy(), expected, atol=1e-6)
    assert info.channels == tensor.shape[0]


@SETTINGS
@given(height=st.integers(1, 6), width=st.integers(1, 6), channels=st.sampled_from([1, 3]),
       suffix=st.sampled_from([".png", ".tif", ".npy", ".bmp"]), bits=st.sampled_from([8, 16, 32]))
def test_written_images_read_back(height, width, channels, suffix, bits, tmp_path):
    image = torch.rand(channels, height, width, generator=torch.Generator().manual_seed(height * width))
    path = new_dir(tmp_path) / f"out{suffix}"
    write_image(path, image, bits=bits)
    back, _ = read_image(path)
    exact = suffix == ".npy" or (bits == 32 and suffix == ".tif" and channels == 1)
    wide = bits >= 16 and channels == 1 and suffix in (".png", ".tif")
    tolerance = 1e-6 if exact else (0.5 / 65535 if wide else 0.5 / 255) + 1e-6
    torch.testing.assert_close(back, image, atol=tolerance, rtol=0)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left

