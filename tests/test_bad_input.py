"""Bad input, faults and odd images: CLI (one-line errors, no partial output) and API (exception types).

CLI cases run in-process through ``lipden.cli.main`` (exit code, stderr), except the
interrupt test, which signals a real ``python cli.py`` process.
"""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import lipden
import problems as P
from lipden.cli import main
from lipden.io import ImageError, read_image, write_image
from tests.helpers import ROOT, write_tiny_model

SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
FAST = ["--max-iter", "3", "--quiet"]


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


def cli(capsys, *args) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:  # argparse errors
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(result, pattern: str) -> None:
    code, _, err = result
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(pattern, lines[0]), lines[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def new_dir(parent: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=parent))


# ---------------------------------------------------------------- unreadable files


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


def _valid_file(folder: Path, suffix: str) -> Path:
    data = (np.random.default_rng(0).random((24, 20)) * 255).astype(np.uint8)
    path = folder / f"valid{suffix}"
    if suffix == ".npy":
        np.save(path, data.astype(np.float32) / 255)
    else:
        Image.fromarray(data).save(path)
    return path


@SETTINGS
@given(suffix=st.sampled_from([".png", ".jpg", ".tif", ".bmp", ".npy"]), fraction=st.floats(0, 0.99))
def test_truncated_files_fail_cleanly_or_give_a_whole_image(suffix, fraction, tmp_path, capsys, tiny):
    folder = new_dir(tmp_path)
    source = _valid_file(folder, suffix)
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


# ---------------------------------------------------------------- formats and tiny images


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


def test_tiny_images_for_reconstruction_give_clear_errors(tmp_path, capsys):
    for size in [(1, 1), (2, 2), (1, 40)]:
        path = tmp_path / f"small {size[0]}x{size[1]}.png"
        Image.fromarray(np.zeros(size, np.uint8)).save(path)
        assert_one_line_error(cli(capsys, "reconstruct", "deblur", path, *FAST), "does not fit")
        assert_one_line_error(cli(capsys, "reconstruct", "mri", path, *FAST), "too small|exceeds")
    # a 1x1 kernel fits a 1x1 image: handled, SSIM is not defined there
    code, out, err = cli(capsys, "reconstruct", "deblur", tmp_path / "small 1x1.png", "--kernel", "uniform",
                         "--kernel-size", "1", "--json", *FAST)
    assert code == 0, err
    assert json.loads(out)["ssim"] is None


# ---------------------------------------------------------------- bad numbers and names


@SETTINGS
@given(value=st.sampled_from(["0", "-1", "255", "1e9", "nan", "inf", "-inf"]),
       option=st.sampled_from(["--sigma", "--add-noise"]))
def test_denoise_noise_levels_outside_the_scale(value, option, tmp_path, capsys, tiny):
    result = cli(capsys, "denoise", "--model", tiny, option, value, "-o", tmp_path / "never.png")
    assert_one_line_error(result, re.escape(option))
    assert not (tmp_path / "never.png").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["deblur", "--noise", "nan"], "--noise"),
        (["deblur", "--noise", "2"], "--noise"),
        (["deblur", "--blur-sigma", "0"], "blur.sigma"),
        (["deblur", "--blur-sigma", "inf"], "--blur-sigma"),
        (["deblur", "--blur-sigma", "1e4"], "does not fit the 32x32 image"),
        (["deblur", "--kernel", "uniform", "--kernel-size", "0"], "kernel size"),
        (["deblur", "--kernel", "motion", "--kernel-size", "100001"], "does not fit the 32x32 image"),
        (["mri", "--acceleration", "-2"], "acceleration"),
        (["mri", "--acceleration", "100000"], "acceleration 100000 exceeds the 32 k-space lines"),
        (["mri", "--center-fraction", "0"], "center_fraction"),
        (["mri", "--center-fraction", "nan"], "center_fraction"),
        (["deblur", "--step", "nan"], "finite"),
        (["deblur", "--strength", "0"], "no convergence guarantee"),
        (["deblur", "--method", "red", "--weight", "-1"], "weight"),
        (["deblur", "--tol", "nan"], "--tol"),
        (["deblur", "--device", "no-such-device"], "not a device"),
        (["deblur", "--kernel", "gaussian-ish"], "invalid choice: 'gaussian-ish'"),
        (["mri", "--mask", "spiral"], "invalid choice: 'spiral'"),
        (["deblur", "--method", "admm-pnp"], "invalid choice: 'admm-pnp'"),
        (["ct"], "invalid choice: 'ct'"),
        (["mri", "--acceleration", "2.5"], "invalid int value"),
    ],
)
def test_reconstruct_bad_values_and_names(args, message, capsys, small_truth):
    assert_one_line_error(cli(capsys, "reconstruct", args[0], small_truth, *args[1:], *FAST), message)


def test_device_that_is_not_here(capsys, tiny):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert_one_line_error(cli(capsys, "denoise", "--model", tiny, "--device", "cuda"), "CUDA is not available")
    assert_one_line_error(cli(capsys, "denoise", "--model", tiny, "--tile", "-1"), "--tile")


def test_cuda_graph_training_off_a_gpu_is_refused_before_any_work(capsys, tmp_path):
    output = tmp_path / "run"
    result = cli(capsys, "train", "--cuda-graph", "--device", "cpu", "--output", output, "--quiet")
    assert_one_line_error(result, "CUDA graph training needs --device cuda")
    assert not output.exists() or not any(output.iterdir())


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


# ---------------------------------------------------------------- outputs: folders, collisions, names


def test_output_folders_and_collisions(tmp_path, capsys, tiny):
    source = _valid_file(tmp_path, ".png")
    missing = tmp_path / "no such folder"
    cases = [
        (["denoise", source, "-o", missing / "x.png", "--model", tiny], "output folder does not exist"),
        (["denoise", source, source, "-o", missing, "--model", tiny], "existing folder"),
        (["denoise", source, "-o", tmp_path / "x.gif", "--model", tiny], "unsupported output type"),
        (["denoise", "-o", tmp_path / "camera.webp", "--model", tiny], "unsupported output type"),
        (["reconstruct", "deblur", "-o", missing / "x.png", *FAST], "output folder does not exist"),
        (["reconstruct", "deblur", "--plot", missing / "fig.png", *FAST], "output folder does not exist"),
        (["reconstruct", "deblur", "--plot", tmp_path / "fig.xyz", *FAST], "unsupported output type"),
        (["reconstruct", "deblur", "-o", tmp_path / "a.png", "--plot", tmp_path / "a.png", *FAST], "same file"),
        (["reconstruct", "deblur", source, "--plot", source, "--force", *FAST], "overwrite the input"),
    ]
    # the same file under another name is still the input
    alias = tmp_path / "alias.png"
    os.link(source, alias)
    cases.append((["denoise", source, "-o", alias, "--force", "--model", tiny], "overwrite the input"))
    # two inputs that would write the same output
    other = tmp_path / "other"
    other.mkdir()
    _valid_file(other, ".png")
    (tmp_path / "out").mkdir()
    cases.append((["denoise", source, other / "valid.png", "-o", tmp_path / "out", "--model", tiny],
                  "both be written"))
    before = leftovers(tmp_path)
    for args, message in cases:
        assert_one_line_error(cli(capsys, *args), message)
    assert leftovers(tmp_path) == before and leftovers(tmp_path / "out") == []
    assert not missing.exists()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root writes into read-only folders: the check cannot fail here")
def test_read_only_output_folder(tmp_path, capsys, tiny):
    source = _valid_file(tmp_path, ".png")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert_one_line_error(cli(capsys, "denoise", source, "-o", locked / "x.png", "--model", tiny),
                              "not writable")
        assert_one_line_error(cli(capsys, "reconstruct", "deblur", "-o", locked / "x.png", *FAST), "not writable")
        assert leftovers(locked) == []
    finally:
        locked.chmod(0o700)


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


# ---------------------------------------------------------------- interrupts


def _wait_for_outputs(folder: Path, count: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len([p for p in folder.iterdir() if not p.name.startswith(".")]) < count:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no output appeared"
        time.sleep(0.005)


def test_signals_during_a_write_are_delivered_after_it():
    from lipden.io import deferred_signals

    events = []

    def handler(signum, frame):
        events.append("handler")
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with deferred_signals():
                with deferred_signals():  # nested: still held until the outer block ends
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(0.01)
                    events.append("inner done")
                events.append("outer done")
        assert events == ["inner done", "outer done", "handler"]
        assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        signal.signal(signal.SIGTERM, previous)


SWALLOWED_SIGTERM = """
import os, signal, sys, time, weakref
sys.path.insert(0, {root!r})
from lipden import cli

class Resource:
    pass

def command(args):
    resource = Resource()

    def on_release(ref):  # Python drops any exception raised in a weakref callback
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)

    ref = weakref.ref(resource, on_release)
    del resource
    print("went on after the lost exception", flush=True)
    for _ in range(500):  # 5 s of work: the redelivered SIGTERM must stop it
        time.sleep(0.01)
    print("finished", flush=True)
    return 0

cli._certify = command
sys.exit(cli.main(["certify"]))
"""


@pytest.mark.skipif(not hasattr(signal, "SIGALRM"), reason="POSIX timers")
def test_a_sigterm_whose_exception_python_drops_is_delivered_again():
    process = subprocess.run([sys.executable, "-c", SWALLOWED_SIGTERM.format(root=str(ROOT))],
                             capture_output=True, text=True, timeout=60)
    assert "Exception ignored" in process.stderr  # the first exception really was lost
    assert "went on after the lost exception" in process.stdout
    assert "finished" not in process.stdout
    assert process.returncode == 143, process.stderr
    assert process.stderr.strip().splitlines()[-1] == "lipden certify: terminated (SIGTERM)"


def test_interrupted_batch_keeps_finished_outputs_and_resumes(tmp_path):
    # enough images that a loaded machine cannot finish them all before the signal lands
    count = 10
    inputs, outputs = tmp_path / "in", tmp_path / "out put"
    inputs.mkdir()
    outputs.mkdir()
    shape = (320, 320)
    for index in range(count):
        data = (np.random.default_rng(index).random(shape) * 255).astype(np.uint8)
        Image.fromarray(data).save(inputs / f"img{index}.png")
    command = [sys.executable, str(ROOT / "cli.py"), "denoise", str(inputs), "-o", str(outputs)]

    # A child inherits an ignored SIGINT and Python then keeps ignoring it: run in the background
    # (`pytest &`, which ignores SIGINT) this test saw every image written through the SIGINT.
    # Start the CLI with the default handler, as a shell starts a foreground command.
    foreground = [sys.executable, "-c", "import runpy, signal, sys; signal.signal(signal.SIGINT, "
                  "signal.default_int_handler); sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"]

    def interrupt(signum: int, after: int) -> subprocess.CompletedProcess:
        process = subprocess.Popen(foreground + command[1:], cwd=ROOT, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        try:
            _wait_for_outputs(outputs, after, process)
            process.send_signal(signum)
            out, err = process.communicate(timeout=120)
        finally:
            process.kill()
        return subprocess.CompletedProcess(command, process.returncode, out, err)

    def check_outputs() -> int:
        files = leftovers(outputs)
        assert all(name.endswith("_denoised.png") for name in files), files  # no temporary file
        for name in files:
            with Image.open(outputs / name) as image:
                assert np.asarray(image).shape == shape  # complete, decodable
        return len(files)

    first = interrupt(signal.SIGINT, 1)
    assert first.returncode == 130, (first.stderr, first.stdout[-300:])
    using = r"lipden denoise: using spline-sigma15\n"  # the model picked for the default noise level
    assert re.fullmatch(rf"{using}lipden denoise: interrupted: \d+ of {count} outputs written.*rerun.*\n",
                        first.stderr)
    done = check_outputs()
    assert 1 <= done < count
    second = interrupt(signal.SIGTERM, done + 1)
    assert second.returncode == 143, second.stderr
    assert re.fullmatch(rf"{using}lipden denoise: terminated \(SIGTERM\): .*\n", second.stderr)
    assert second.stdout.count("skipped") == done
    done = check_outputs()
    assert done < count
    final = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    assert final.stdout.count("skipped") == done and final.stdout.count("wrote") == count - done
    assert check_outputs() == count


# ---------------------------------------------------------------- API


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return lipden.LipschitzDenoiser(lipden.DenoiserConfig(channels=4, depth=3, sigma=15 / 255)).eval()


@SETTINGS
@given(shape=st.lists(st.integers(1, 5), min_size=0, max_size=6).filter(lambda s: len(s) != 4))
def test_denoiser_rejects_wrong_ranks(shape, model):
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        model(torch.rand(shape))
    with pytest.raises(ValueError):
        model(np.zeros((1, 1, 4, 4), np.float32))


@SETTINGS
@given(offset=st.floats(-1, 1), scale=st.floats(0.1, 3))
def test_denoiser_takes_values_outside_the_unit_range(offset, scale, model):
    """Noisy images leave [0, 1]: accepted, and the map stays 1-Lipschitz there."""
    generator = torch.Generator().manual_seed(0)
    x = offset + scale * torch.rand(1, 1, 12, 12, generator=generator)
    y = x + 0.1 * torch.randn(x.shape, generator=generator)
    with torch.no_grad():
        fx, fy = model(x), model(y)
    assert torch.isfinite(fx).all()
    assert (fx - fy).norm() <= (x - y).norm() * (1 + 1e-4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.int64, torch.uint8])
def test_denoiser_rejects_other_dtypes_with_a_value_error(dtype, model):
    with pytest.raises(ValueError):
        model(torch.zeros(1, 1, 8, 8, dtype=dtype))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_denoiser_rejects_non_finite_images(bad, model):
    x = torch.rand(1, 1, 8, 8)
    x[0, 0, 3, 3] = bad
    with pytest.raises(ValueError):
        model(x)


def test_denoiser_warns_on_a_noise_level_it_was_not_trained_for(model):
    for sigma in (-0.1, 0.0, 1e9):
        with pytest.warns(UserWarning, match="trained for sigma"):
            model(torch.rand(1, 1, 8, 8), sigma=sigma)


@pytest.fixture(scope="module")
def deblur_case():
    problem = P.DeblurProblem("gaussian", noise=0.01)
    x = P.default_image("natural", 24)
    return problem, x, problem.measure(x), problem.physics(x.shape)


@pytest.mark.parametrize(
    "change, error",
    [
        (lambda y: y * float("nan"), ValueError),
        (lambda y: y + float("inf"), ValueError),
        (lambda y: y[0], ValueError),
        (lambda y: y.numpy(), ValueError),
    ],
)
def test_reconstruct_rejects_bad_measurements(change, error, deblur_case, model):
    _, _, y, physics = deblur_case
    with pytest.raises(error):
        lipden.reconstruct(change(y), physics, model, max_iter=2)


def test_reconstruct_rejects_bad_names_and_numbers(deblur_case, model):
    _, x, y, physics = deblur_case
    for kwargs in ({"method": "pnp-fista"}, {"max_iter": 0}, {"tol": float("nan")}, {"step": float("inf")},
                   {"momentum": 0.5}):
        with pytest.raises(ValueError):
            lipden.reconstruct(y, physics, model, **{"max_iter": 2, **kwargs})
    with pytest.raises(lipden.ConvergenceConditionError):
        lipden.reconstruct(y, physics, model, step=0, max_iter=2)
    with pytest.raises(ValueError, match="x0"):
        lipden.reconstruct(y, physics, model, x0=x * float("nan"), max_iter=2)
    # measurements of images outside [0, 1] are still measurements
    result = lipden.reconstruct(3 * y - 1, physics, model, max_iter=2)
    assert torch.isfinite(result.x).all()
    for make in (lambda: P.MRIProblem("random", 0), lambda: P.MRIProblem("random", 0.5),
                 lambda: P.MRIProblem("spiral", 4), lambda: P.DeblurProblem("box")):
        with pytest.raises(ValueError):
            make()


def test_reconstruct_rejects_float64_measurements_with_a_value_error(deblur_case, model):
    _, _, y, physics = deblur_case
    with pytest.raises(ValueError):
        lipden.reconstruct(y.double(), physics, model, max_iter=2)

