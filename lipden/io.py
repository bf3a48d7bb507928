"""Images and files: reading and writing float tensors (C, H, W) or (H, W) in [0, 1], listing
image folders, the data root, and the one atomic write every output goes through."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lipden.paths import DATA_ENV as DATA_ENV  # public here
from lipden.paths import default_data_root as default_data_root

READABLE = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".npy")

#: Float data (NPY, float TIFF) must lie in this range: [0, 1] "up to noise". Anything
#: outside is almost surely on another scale (e.g. 0-255) and is refused, not clipped.
FLOAT_RANGE = (-1.0, 2.0)

#: PIL modes converted before reading: premultiplied, padded or non-RGB colour spaces.
_TO_RGB = {"CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB", "RGBX": "RGB", "RGBa": "RGBA",
           "La": "LA", "PA": "RGBA"}


class ImageError(ValueError):
    """An input that is not a usable image."""


@dataclass
class ImageInfo:
    bits: int  # 8 or 16 for integer images, 32 for float data (NPY / float TIFF)
    channels: int


def read_image(path: str | Path) -> tuple[Tensor, ImageInfo]:
    """Read PNG/JPEG/TIFF/BMP/NPY as a float32 (C, H, W) tensor in [0, 1], C = 1 or 3.

    8-bit data is divided by 255, other integer data (16-bit PNG/TIFF) by 65535; float
    data (NPY, float TIFF) must be finite and on the [0, 1] scale up to noise (within
    ``FLOAT_RANGE``). Alpha channels are dropped, palettes expanded, CMYK / YCbCr / LAB
    converted to RGB. Raises ``FileNotFoundError`` for a missing file and ``ImageError``
    (a ``ValueError``) for anything that is not a usable image; messages name the file.
    """
    path = Path(path)
    if path.is_dir():
        raise ImageError(f"{path}: is a folder, not an image")
    if not path.is_file():
        raise FileNotFoundError(f"input not found: {path}")
    if path.suffix.lower() not in READABLE:
        raise ImageError(f"{path}: unsupported file type {path.suffix!r} (use {', '.join(READABLE)})")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: empty file")
    try:
        if path.suffix.lower() == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            from PIL import Image

            with Image.open(path) as image:
                if image.mode == "P":
                    image = image.convert("RGBA" if "transparency" in image.info else "RGB")
                elif image.mode in _TO_RGB:
                    image = image.convert(_TO_RGB[image.mode])
                array = np.asarray(image)
    except (OSError, ValueError, EOFError, SyntaxError) as error:  # PIL raises all of these on bad data
        raise ImageError(f"{path}: not a readable image ({error})") from error
    except Exception as error:
        from PIL import Image

        if isinstance(error, Image.DecompressionBombError):
            raise ImageError(f"{path}: too many pixels for PIL's decompression-bomb limit ({error})") from error
        raise
    if array.ndim == 3 and array.shape[-1] in (2, 4):
        array = array[..., :-1]
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
        raise ImageError(f"{path}: expected a grayscale (H, W) or colour (H, W, 3) image, got shape {array.shape}")
    if array.size == 0:
        raise ImageError(f"{path}: empty image (shape {array.shape})")
    if array.dtype == np.uint8:
        bits, data = 8, array.astype(np.float32) / 255
    elif array.dtype == bool:
        bits, data = 8, array.astype(np.float32)
    elif np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 65535:
            raise ImageError(f"{path}: integer values in [{low}, {high}] do not fit 16 bits (0-65535)")
        bits, data = 16, array.astype(np.float32) / 65535
    elif np.issubdtype(array.dtype, np.floating):
        bits, data = 32, array.astype(np.float32)
        if not np.isfinite(data).all():
            raise ImageError(f"{path}: contains NaN or infinite values")
        least, most = float(data.min()), float(data.max())
        if least < FLOAT_RANGE[0] or most > FLOAT_RANGE[1]:
            raise ImageError(f"{path}: float values in [{least:.4g}, {most:.4g}]; float images must be on the "
                             f"[0, 1] scale (up to noise: within [{FLOAT_RANGE[0]:g}, {FLOAT_RANGE[1]:g}])")
    else:
        raise ImageError(f"{path}: unsupported pixel type {array.dtype}")
    tensor = torch.from_numpy(np.ascontiguousarray(data))
    tensor = tensor[None] if tensor.dim() == 2 else tensor.permute(2, 0, 1).contiguous()
    return tensor, ImageInfo(bits=bits, channels=tensor.shape[0])


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT / SIGTERM until the block is done, then deliver them.

    Wrapped around the write-and-rename of an output, so that an interrupt never leaves a
    temporary file behind or a half-finished rename: the file is either complete or absent.
    Outside the main thread (where handlers cannot be set) the block runs unprotected.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {}
    for number in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(number)
        if handler is None:  # installed outside Python: leave it alone
            continue
        previous[number] = handler
        signal.signal(number, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if received:
            signal.raise_signal(received[0])  # the restored handler runs now


def atomic_write(path: str | Path, write: Callable[[str], object], *, force: bool = True) -> None:
    """Write ``path`` all at once: ``write(tmp)`` fills a hidden file in the same folder, which
    is then renamed over ``path`` (``os.replace``) with SIGINT / SIGTERM held meanwhile.

    ``path`` is never seen half-written and no temporary file is left behind, whatever
    ``write`` raises. With ``force=False`` an existing ``path`` is refused (FileExistsError).
    The folder must exist. The file is made readable by all (0o644).
    """
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"output exists: {path} (use --force to overwrite)")
    with deferred_signals():
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        except OSError as error:
            raise OSError(f"cannot write to {path.parent}: {error.strerror or error}") from error
        os.close(fd)
        try:
            write(tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str, *, force: bool = True) -> None:
    """:func:`atomic_write` of a UTF-8 text."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), force=force)


def write_image(path: str | Path, image: Tensor, bits: int = 8, force: bool = False) -> None:
    """Write a (C, H, W) tensor in [0, 1] (clipped) atomically; refuse to overwrite without force.

    PNG/TIFF keep 8 or 16 bits (16 bits for grayscale only); a grayscale TIFF with
    ``bits=32`` is stored as float32; JPEG and BMP are 8-bit; NPY stores float32 values
    unclipped. The data goes to a hidden temporary file in the same folder that is renamed
    over ``path`` (``os.replace``) with SIGINT / SIGTERM held meanwhile: ``path`` is never
    seen half-written and no temporary file is left behind.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in READABLE:
        raise ImageError(f"{path}: unsupported output type {suffix!r} (use {', '.join(READABLE)})")
    if path.is_dir():
        raise ImageError(f"{path}: is a folder; give an output file name")
    if path.exists() and not force:
        raise FileExistsError(f"output exists: {path} (use --force to overwrite)")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {path.parent}")
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ImageError(f"{path}: expected a (1 or 3, H, W) image, got shape {tuple(image.shape)}")
    if not bool(torch.isfinite(image).all()):
        raise ImageError(f"{path}: refusing to write an image with NaN or infinite values")
    array = image.detach().cpu().float().permute(1, 2, 0).numpy()
    if array.shape[-1] == 1:
        array = array[..., 0]

    def write(tmp: str) -> None:
        if suffix == ".npy":
            with open(tmp, "wb") as handle:
                np.save(handle, array.astype(np.float32))
            return
        from PIL import Image

        clipped = np.clip(array, 0, 1)
        grey_tiff = clipped.ndim == 2 and suffix in (".tif", ".tiff")
        if bits == 32 and grey_tiff:
            Image.fromarray(clipped.astype(np.float32)).save(tmp, format="TIFF")
        elif bits >= 16 and clipped.ndim == 2 and suffix in (".png", ".tif", ".tiff"):
            Image.fromarray(np.round(clipped * 65535).astype(np.uint16)).save(tmp, format=_format(suffix))
        else:
            Image.fromarray(np.round(clipped * 255).astype(np.uint8)).save(tmp, format=_format(suffix))

    atomic_write(path, write)


def _format(suffix: str) -> str:
    return {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}[suffix]


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def list_images(folder: str | Path) -> list[Path]:
    """Image files of a folder, sorted by name (the order of the evaluation protocol)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def load_grayscale(path: str | Path) -> Tensor:
    """Load an image as a (H, W) float32 tensor in [0, 1] (colour is converted to luminance)."""
    from skimage import color, util
    from skimage import io as skio

    image = skio.imread(str(path))
    if image.ndim == 3:
        if image.shape[-1] == 4:
            image = color.rgba2rgb(image)
        image = color.rgb2gray(image)
    return torch.from_numpy(np.ascontiguousarray(util.img_as_float32(image)))
