import json
import os
import re
import subprocess
import sys

import pytest
import torch

from lipden import OrthoConv2d
from lipden.models.checkpoint import (
    WeightsError,
    load_denoiser_file,
    load_tensors,
    save_tensors_atomic,
    sha256_of,
)
from lipden.models.denoiser import LipschitzDenoiser
from lipden.nn.conv_ops import circular_conv_singular_values
from lipden.train.loop import TrainConfig, train
from tests.helpers import ROOT, write_smooth_images


@pytest.fixture(scope="module")
def image_folders(tmp_path_factory):
    folders = write_smooth_images(tmp_path_factory.mktemp("images"), {"train": 3, "val": 2})
    return folders["train"], folders["val"]


def tiny_config(folders, output, **kwargs):
    train_dir, val_dir = folders
    values = dict(output=str(output), train_dir=str(train_dir), val_dir=str(val_dir), channels=4, depth=3,
                  batch_size=4, patch_size=16, steps=4, validate_every=2)
    values.update(kwargs)
    return TrainConfig(**values)


def test_training_reduces_the_loss_and_writes_files(image_folders, tmp_path):
    summary = train(tiny_config(image_folders, tmp_path, steps=6, validate_every=3), progress=False)
    assert summary["step"] == 6
    lines = (tmp_path / "log.csv").read_text().splitlines()
    assert lines[0].startswith("step,") and len(lines) == 3
    model, metadata = load_denoiser_file(tmp_path / "best.safetensors")
    assert metadata["config"]["channels"] == 4 and not model.training


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(image_folders, tmp_path):
    train(tiny_config(image_folders, tmp_path / "straight"), progress=False)
    assert train(tiny_config(image_folders, tmp_path / "split", stop_at=2), progress=False)["step"] == 2
    train(tiny_config(image_folders, tmp_path / "split"), progress=False)
    a, _ = load_tensors(tmp_path / "straight" / "train_state.safetensors")
    b, meta = load_tensors(tmp_path / "split" / "train_state.safetensors")
    assert meta["step"] == 4
    for key in a:
        if not key.startswith("train.rng"):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("change", [{"steps": 8}, {"batch_size": 2}, {"lr_scale": 0.5}, {"seed": 1},
                                    {"activation": "relu"}, {"channels": 6}])
def test_resuming_with_another_recipe_is_refused_and_changes_nothing(image_folders, tmp_path, change):
    train(tiny_config(image_folders, tmp_path, stop_at=2), progress=False)
    before = (tmp_path / "train_state.safetensors").read_bytes()
    name = {"steps": "steps=4 \\(given 8\\)", "batch_size": "batch_size=4 \\(given 2\\)", "lr_scale": "lr_conv=",
            "seed": "seed=0 \\(given 1\\)", "activation": "activation='spline' \\(given 'relu'\\)",
            "channels": "the network"}[next(iter(change))]
    with pytest.raises(ValueError, match=f"was trained with .*{name}"):
        train(tiny_config(image_folders, tmp_path, **change), progress=False)
    assert (tmp_path / "train_state.safetensors").read_bytes() == before
    # what does not change the run may change: the validation and checkpoint intervals, the stop
    summary = train(tiny_config(image_folders, tmp_path, validate_every=1, checkpoint_minutes=5.0), progress=False)
    assert summary["step"] == 4


@pytest.mark.parametrize("planned, stop, replanned", [(8, 4, 12), (12, 3, 8), (8, 6, 12)])
def test_a_step_budget_changed_before_the_decay_gives_the_run_planned_so_from_the_start(
        image_folders, tmp_path, planned, stop, replanned):
    # decay at 0.75 of the budget: from the step 6 -> 7 of 8 and 9 -> 10 of 12; steps before `stop` precede both
    train(tiny_config(image_folders, tmp_path / "straight", steps=replanned), progress=False)
    train(tiny_config(image_folders, tmp_path / "replanned", steps=planned, stop_at=stop), progress=False)
    summary = train(tiny_config(image_folders, tmp_path / "replanned", steps=replanned, replan_steps=True),
                    progress=False)
    assert summary["step"] == replanned
    a, _ = load_tensors(tmp_path / "straight" / "train_state.safetensors")
    b, meta = load_tensors(tmp_path / "replanned" / "train_state.safetensors")
    assert meta["train_config"]["steps"] == replanned
    for key in a:
        if not key.startswith("train.rng"):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    def rate_factors(run):  # step -> learning-rate factor of the log's rows
        rows = (tmp_path / run / "log.csv").read_text().splitlines()[1:]
        return {row.split(",")[0]: row.split(",")[-1] for row in rows}

    straight, replanned_factors = rate_factors("straight"), rate_factors("replanned")
    assert straight == {step: replanned_factors[step] for step in straight}


def test_a_step_budget_is_not_changed_after_a_decayed_step(image_folders, tmp_path):
    train(tiny_config(image_folders, tmp_path, steps=8, stop_at=7), progress=False)  # the step 6 -> 7 decayed
    with pytest.raises(ValueError, match="steps=8 \\(given 12\\); .* step 7 is past the decay at 0.75 x 8"):
        train(tiny_config(image_folders, tmp_path, steps=12, replan_steps=True), progress=False)


def test_a_stop_step_not_ahead_is_refused_and_a_new_run_keeps_the_old_log_aside(image_folders, tmp_path):
    train(tiny_config(image_folders, tmp_path, stop_at=2), progress=False)
    with pytest.raises(ValueError, match="--stop-at 2 is not after the run's step 2"):
        train(tiny_config(image_folders, tmp_path, stop_at=2), progress=False)
    old_log = (tmp_path / "log.csv").read_text()
    train(tiny_config(image_folders, tmp_path, steps=3, validate_every=1), resume=False, progress=False)
    assert (tmp_path / "log.replaced.csv").read_text() == old_log
    steps = [line.split(",")[0] for line in (tmp_path / "log.csv").read_text().splitlines()[1:]]
    assert steps == ["1", "2", "3"]  # the new run's rows only


def test_a_run_started_from_trained_weights_begins_at_them_and_counts_their_patches(image_folders, tmp_path):
    first = tmp_path / "first"
    train(tiny_config(image_folders, first), progress=False)
    source = str(first / "best.safetensors")
    start, start_meta = load_tensors(source)
    assert start_meta["patches_seen"] == start_meta["step"] * 4
    # learning rates of ~0: the new run's weights stay those it started from, at another sigma
    warm = tmp_path / "warm"
    train(tiny_config(image_folders, warm, steps=2, sigma=25.0, init_from=source, lr_scale=1e-12), progress=False)
    weights, meta = load_tensors(warm / "best.safetensors")
    for key, value in start.items():
        torch.testing.assert_close(weights[key], value, rtol=0, atol=1e-9, msg=key)
    assert meta["config"]["sigma"] == pytest.approx(25 / 255) and meta["patches_seen"] == start_meta["patches_seen"] + 8
    record = load_tensors(warm / "train_state.safetensors")[1]["warm_start"]
    assert record == {"source": source, "sha256": sha256_of(source), "patches_seen": start_meta["patches_seen"],
                      "sigma_255": 15.0, "run": str(first), "step": start_meta["step"]}
    # a training state as the start: its run, step and wall time
    state = str(first / "train_state.safetensors")
    train(tiny_config(image_folders, tmp_path / "from-state", steps=1, init_from=state), progress=False)
    record = load_tensors(tmp_path / "from-state" / "train_state.safetensors")[1]["warm_start"]
    state_meta = load_tensors(state)[1]
    assert record["run"] == str(first) and record["step"] == 4 and record["patches_seen"] == 16
    assert record["hours"] == round(state_meta["elapsed_s"] / 3600, 3)
    # without the warm start the same recipe begins elsewhere
    cold = tmp_path / "cold"
    train(tiny_config(image_folders, cold, steps=2, sigma=25.0, lr_scale=1e-12), progress=False)
    cold_weights = load_tensors(cold / "best.safetensors")[0]
    assert any(not torch.allclose(cold_weights[key], value) for key, value in start.items())


def test_a_warm_started_run_resumes_exactly_and_is_not_started_again(image_folders, tmp_path):
    first = tmp_path / "first"
    train(tiny_config(image_folders, first), progress=False)
    source = str(first / "best.safetensors")
    train(tiny_config(image_folders, tmp_path / "straight", init_from=source), progress=False)
    train(tiny_config(image_folders, tmp_path / "split", init_from=source, stop_at=2), progress=False)
    train(tiny_config(image_folders, tmp_path / "split", init_from=source), progress=False)
    a, _ = load_tensors(tmp_path / "straight" / "train_state.safetensors")
    b, meta = load_tensors(tmp_path / "split" / "train_state.safetensors")
    assert meta["step"] == 4 and meta["warm_start"]["source"] == source
    for key in a:
        if not key.startswith("train.rng"):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    with pytest.raises(ValueError, match="was trained with init_from="):  # another start is another run
        train(tiny_config(image_folders, tmp_path / "split"), progress=False)


def test_weights_of_another_network_are_refused_before_any_step(image_folders, tmp_path):
    first = tmp_path / "first"
    train(tiny_config(image_folders, first), progress=False)
    with pytest.raises(ValueError, match="its network .* is not the run's"):
        train(tiny_config(image_folders, tmp_path / "wide", channels=6, init_from=str(first / "best.safetensors")),
              progress=False)
    assert not (tmp_path / "wide" / "train_state.safetensors").exists()
    with pytest.raises(ValueError, match="nor an existing file"):
        train(tiny_config(image_folders, tmp_path / "none", init_from=str(tmp_path / "missing.safetensors")),
              progress=False)
    # a new run in a used folder from weights that do not fit: the old run's files stay as they were
    files = {path.name: path.read_bytes() for path in first.iterdir() if path.suffix in (".csv", ".safetensors")}
    with pytest.raises(ValueError, match="its network"):
        train(tiny_config(image_folders, first, channels=6, init_from=str(first / "best.safetensors")), resume=False,
              progress=False)
    assert {path.name: path.read_bytes() for path in first.iterdir() if path.suffix in (".csv", ".safetensors")} \
        == files


def test_a_warm_start_asked_of_a_state_that_records_none_is_refused(image_folders, tmp_path):
    """A state written before runs recorded their start: resuming it with --init-from would
    silently skip the start, so it is refused."""
    first = tmp_path / "first"
    train(tiny_config(image_folders, first), progress=False)
    run = tmp_path / "run"
    train(tiny_config(image_folders, run, stop_at=2), progress=False)
    tensors, metadata = load_tensors(run / "train_state.safetensors")
    del metadata["train_config"]["init_from"]
    save_tensors_atomic(tensors, run / "train_state.safetensors", metadata)
    with pytest.raises(ValueError, match="init_from=None \\(given '"):
        train(tiny_config(image_folders, run, init_from=str(first / "best.safetensors")), progress=False)


@pytest.mark.parametrize("init", ["identity", "absolute_value", "relu"])
def test_the_splines_of_a_new_run_start_as_its_recipe_says(image_folders, tmp_path, init):
    from lipden.nn.splines import LinearSpline

    summary = train(tiny_config(image_folders, tmp_path, steps=1, lr_scale=1e-12, spline_init=init), progress=False)
    assert summary["step"] == 1
    model, metadata = load_denoiser_file(tmp_path / "best.safetensors")
    splines = [m for m in model.modules() if isinstance(m, LinearSpline)]
    assert len(splines) == 2
    for spline in splines:
        knots = spline.knots().expand_as(spline.coefficients)
        expected = {"identity": knots, "absolute_value": knots.abs(), "relu": knots.clamp(min=0)}[init]
        torch.testing.assert_close(spline.constrained_coefficients().detach(), expected, rtol=0, atol=1e-6)
    # the network names a start other than the default of a stored config (|x|, what every run had before)
    assert metadata["config"]["activation_kwargs"] == ({} if init == "absolute_value" else {"init": init})
    assert load_tensors(tmp_path / "train_state.safetensors")[1]["train_config"]["spline_init"] == init


def test_a_run_recorded_before_the_spline_init_resumes_as_the_absolute_value_start(image_folders, tmp_path):
    from lipden.cli import main

    run = tmp_path / "run"
    train(tiny_config(image_folders, run, stop_at=2, spline_init="absolute_value"), progress=False)
    tensors, metadata = load_tensors(run / "train_state.safetensors")
    del metadata["train_config"]["spline_init"]
    save_tensors_atomic(tensors, run / "train_state.safetensors", metadata)
    with pytest.raises(ValueError, match="spline_init='absolute_value' \\(given 'identity'\\)"):
        train(tiny_config(image_folders, run), progress=False)
    train_dir, val_dir = image_folders
    assert main(["train", "--resume", "--quiet", "--output", str(run), "--train-dir", str(train_dir),
                 "--val-dir", str(val_dir)]) == 0
    assert load_tensors(run / "train_state.safetensors")[1]["step"] == 4
    with pytest.raises(ValueError, match="spline_init must be one of"):
        train(tiny_config(image_folders, tmp_path / "bad", spline_init="cubic"), progress=False)
    # a run without splines has no start to disagree on
    relu = tmp_path / "relu"
    train(tiny_config(image_folders, relu, stop_at=2, activation="relu"), progress=False)
    tensors, metadata = load_tensors(relu / "train_state.safetensors")
    del metadata["train_config"]["spline_init"]
    save_tensors_atomic(tensors, relu / "train_state.safetensors", metadata)
    assert train(tiny_config(image_folders, relu, activation="relu"), progress=False)["step"] == 4


def test_a_shipped_card_without_a_patch_count_gives_its_best_step_times_its_batch():
    from lipden.models.pretrained import denoiser_card, load_denoiser
    from lipden.train.warm_start import load_warm_start

    card = denoiser_card("relu-sigma15")
    weights, record = load_warm_start("relu-sigma15", load_denoiser("relu-sigma15").config)
    assert card["training"].get("patches_seen") is None
    assert record["patches_seen"] == card["training"]["best_step"] * card["training"]["batch_size"]
    assert record["sha256"] == card["sha256"] and record["step"] == card["training"]["best_step"]
    assert weights.keys() == load_denoiser("relu-sigma15").state_dict().keys()


def test_trained_model_is_still_certified(image_folders, tmp_path, device):
    """On each device with its default precision (bf16 convolutions where supported): the
    weights stay float32 and every orthogonal convolution keeps its singular values <= 1."""
    train(tiny_config(image_folders, tmp_path, steps=4, device=device), progress=False)
    model, _ = load_denoiser_file(tmp_path / "best.safetensors")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.lipschitz_certificate((1, 1, 16, 16)) <= 1 + 1e-4
    for module in model.modules():
        if isinstance(module, OrthoConv2d):
            values = circular_conv_singular_values(module.constrained_weight().double(), (16, 16))
            assert float(values.max()) <= 1 + 1e-4


def test_tampered_or_foreign_files_are_refused(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(WeightsError):
        load_denoiser_file(bad)
    with pytest.raises(FileNotFoundError):
        load_denoiser_file(tmp_path / "missing.safetensors")


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_end_with_identical_weights(image_folders, tmp_path):
    train_dir, val_dir = image_folders
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",  # a free port
         str(ROOT / "cli.py"), "train", "--output", str(tmp_path), "--train-dir", str(train_dir),
         "--val-dir", str(val_dir), "--channels", "4", "--depth", "3", "--batch-size", "2",
         "--steps", "3", "--validate-every", "3", "--device", "cpu", "--quiet", "--json"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[:3000] + "\n...\n" + result.stderr[-1500:]  # a rank's own error comes first
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["step"] == 3 and summary["ranks_identical"] is True
    tensors, _ = load_tensors(tmp_path / "train_state.safetensors")  # each rank resumes its own streams
    for stream in ("sampler", "noise"):
        assert not torch.equal(tensors[f"train.rng.{stream}.0"], tensors[f"train.rng.{stream}.1"])


@pytest.mark.slow
def test_torchrun_ranks_all_stop_in_one_line_when_the_folder_is_held(image_folders, tmp_path):
    from lipden.train.state import run_lock

    train_dir, val_dir = image_folders
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with run_lock(tmp_path):
        result = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
             str(ROOT / "cli.py"), "train", "--output", str(tmp_path), "--train-dir", str(train_dir),
             "--val-dir", str(val_dir), "--channels", "4", "--depth", "3", "--steps", "3", "--device", "cpu",
             "--quiet"],
            capture_output=True, text=True, cwd=ROOT, env=env, timeout=600,
        )
    assert result.returncode != 0
    refusals = re.findall(r"lipden train: error: .*? is being trained by", result.stderr)
    assert len(refusals) == 2, result.stderr[-3000:]
    assert "Connection closed" not in result.stderr and "[rank1]" not in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "train_state.safetensors").exists()


def test_mixed_precision_keeps_the_constraint_in_float32(image_folders, tmp_path):
    from lipden import LinearSpline, OrthoConv2d

    conv, spline = OrthoConv2d(4, 4, padding_mode="circular"), LinearSpline(4, init="relu")
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        weight = conv.constrained_weight()
        activated = spline(conv(torch.rand(2, 4, 8, 8)))
    assert weight.dtype == torch.float32 and activated.dtype == torch.float32
    from lipden.nn.conv_ops import circular_conv_singular_values

    values = circular_conv_singular_values(weight, (8, 8))
    assert float((values - 1).abs().max()) < 1e-4  # orthogonal to float32 accuracy, not bf16's 1e-2
    summary = train(tiny_config(image_folders, tmp_path, mixed_precision=True), progress=False)
    model, _ = load_denoiser_file(tmp_path / "best.safetensors")
    assert summary["step"] == 4 and all(p.dtype == torch.float32 for p in model.parameters())
    assert model.lipschitz_certificate((1, 1, 16, 16)) <= 1 + 1e-4


def test_divergence_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(image_folders, tmp_path,
                                                                                 monkeypatch):
    from lipden.train import loop
    from lipden.train.loop import TrainingDiverged

    train(tiny_config(image_folders, tmp_path, steps=8, stop_at=4), progress=False)
    state = tmp_path / "train_state.safetensors"
    before = state.read_bytes()
    monkeypatch.setattr(loop, "set_learning_rate", lambda group, lr: group.__setitem__("lr", 1e30))  # blows up
    with pytest.raises(TrainingDiverged, match="lower the learning rates"):
        train(tiny_config(image_folders, tmp_path, steps=8), progress=False)
    assert state.read_bytes() == before
    _, metadata = load_tensors(state)
    assert metadata["step"] == 4
    model, _ = load_denoiser_file(tmp_path / "best.safetensors")
    assert all(torch.isfinite(p).all() for p in model.parameters())


KILLED_RUN = """
import sys
import torch
torch.set_num_threads({threads})
sys.path.insert(0, {root!r})
from lipden.train.loop import TrainConfig, train
train(TrainConfig(output={output!r}, train_dir={train!r}, val_dir={val!r}, channels=4, depth=3, batch_size=4,
                  patch_size=16, steps={steps}, validate_every=1), progress=False)
"""


@pytest.mark.parametrize("delay", [0.0, 0.3])
def test_sigkill_never_corrupts_the_checkpoint_and_resuming_matches_a_straight_run(image_folders, tmp_path, delay):
    import signal
    import time

    steps = 40  # every run below has the same length, hence the same learning-rate schedule
    output = tmp_path / "killed"
    code = KILLED_RUN.format(root=str(ROOT), output=str(output), train=str(image_folders[0]),
                             val=str(image_folders[1]), steps=steps, threads=torch.get_num_threads())
    # the same thread count as this process, which resumes the run: same float reductions
    threads = str(torch.get_num_threads())
    process = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": threads})
    state = output / "train_state.safetensors"
    deadline = time.monotonic() + 120
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "the run ended before it was killed"
    _, metadata = load_tensors(state)  # a complete, readable checkpoint
    killed_at = metadata["step"]
    assert 1 <= killed_at < steps
    # resume to the end and compare with an uninterrupted run
    train(tiny_config(image_folders, output, steps=steps, validate_every=1), progress=False)
    # a write cut by SIGKILL leaves its hidden partial file; the resumed run removes it
    assert not [p.name for p in output.iterdir() if p.name.startswith(".") or p.suffix in (".part", ".tmp")], \
        "temporary files left"
    train(tiny_config(image_folders, tmp_path / "straight", steps=steps, validate_every=1), progress=False)
    a, _ = load_tensors(tmp_path / "straight" / "train_state.safetensors")
    b, meta = load_tensors(state)
    assert meta["step"] == steps
    for key in a:
        if not key.startswith("train.rng"):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_a_time_budget_also_schedules_the_learning_rate_decay(image_folders, tmp_path, monkeypatch):
    """With --minutes, the rates decay at 75% of the time budget (steps permitting) and the
    run stops at the budget: simulated clock, 10 s per reading."""
    import types

    from lipden.train import loop as training

    clock = {"t": 0.0}

    def perf_counter() -> float:
        clock["t"] += 10.0
        return clock["t"]

    monkeypatch.setattr(training, "time", types.SimpleNamespace(perf_counter=perf_counter))
    summary = train(tiny_config(image_folders, tmp_path, steps=1000, validate_every=1, max_minutes=1.0), progress=False)
    rows = [line.split(",") for line in (tmp_path / "log.csv").read_text().splitlines()]
    assert rows[0] == ["step", "elapsed_s", "loss_per_patch", "val_psnr", "lr_factor"]
    elapsed = [float(r[1]) for r in rows[1:]]
    factors = [float(r[4]) for r in rows[1:]]
    assert summary["step"] == len(rows) - 1 < 1000 and elapsed[-1] >= 60
    decayed = [e for e, f in zip(elapsed, factors, strict=True) if f < 1]
    assert decayed and all(f == 1.0 for e, f in zip(elapsed, factors, strict=True) if e < 45)
    assert min(decayed) >= 45  # the factor applied at a step is decided by the clock before it


def test_lr_scale_multiplies_only_the_preset_rates(tmp_path):
    config = TrainConfig(output=str(tmp_path), lr_scale=0.5, lr_spline=3e-5).resolved()
    assert config.lr_conv == pytest.approx(4e-4) and config.lr_scaling == pytest.approx(1e-4)
    assert config.lr_spline == 3e-5 and config.resolved().lr_conv == config.lr_conv
    with pytest.raises(ValueError, match="lr_scale"):
        TrainConfig(output=str(tmp_path), lr_scale=0).resolved()


@pytest.mark.parametrize("preset", ["cpu", "paper"])
def test_a_training_step_never_reads_a_value_back_from_the_device(preset):
    """On the "meta" device tensors have shapes but no values, so anything that reads one back
    (``.item()``, ``bool(tensor)``, a NaN scan, ``bincount``'s index range) fails there. A whole
    step running on it is the CPU-side check that a GPU step never makes the host wait
    (tests/test_cuda.py checks the same on a GPU with torch.cuda.set_sync_debug_mode)."""
    from lipden.train.step import make_optimizer, training_step

    config = TrainConfig(output="unused", preset=preset).resolved()
    model = LipschitzDenoiser(config.model_config()).to("meta").train()
    optimizer = make_optimizer(model, config)
    batch = torch.empty(4, 1, 40, 40, device="meta")
    for _ in range(2):  # the second step also runs Adam on existing state
        loss = training_step(model, model, optimizer, batch, batch, config.tv2_weight, mixed_precision=False)
    assert loss.device.type == "meta" and loss.shape == ()


def test_a_time_due_checkpoint_between_validations_resumes_exactly(image_folders, tmp_path, monkeypatch):
    """With --checkpoint-minutes the state is also saved between validations (at a loss read),
    and a run resumed from such a state ends with the uninterrupted run's weights."""
    import shutil

    import lipden.train.loop as training

    saved_at: list[int] = []
    original = training.save_tensors_atomic

    def recording(tensors, path, metadata):
        original(tensors, path, metadata)
        saved_at.append(metadata["step"])
        if metadata["step"] == training.LOSS_CHECK_EVERY:
            (tmp_path / "split").mkdir()
            shutil.copy2(path, tmp_path / "split" / path.name)

    monkeypatch.setattr(training, "save_tensors_atomic", recording)
    every = training.LOSS_CHECK_EVERY
    steps = 2 * every + 5  # the resumed part spans two loss reads and two log rows
    config = dict(steps=steps, validate_every=2 * every, checkpoint_minutes=1e-9)
    train(tiny_config(image_folders, tmp_path / "straight", **config), progress=False)
    assert saved_at == [every, 2 * every, steps]  # the time-due save, then the validations
    train(tiny_config(image_folders, tmp_path / "split", **config), progress=False)
    logs = [[row.split(",")[:1] + row.split(",")[2:] for row in (tmp_path / run / "log.csv").read_text().splitlines()]
            for run in ("straight", "split")]  # every column but the wall time
    assert logs[0][-2:] == logs[1][-2:] and len(logs[0]) == 3  # same losses and validation at 50 and 55
    a, _ = load_tensors(tmp_path / "straight" / "train_state.safetensors")
    b, meta = load_tensors(tmp_path / "split" / "train_state.safetensors")
    assert meta["step"] == steps
    for key in a:
        if not key.startswith("train.rng"):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_a_second_trainer_is_refused_while_the_first_holds_the_folder(image_folders, tmp_path, capsys):
    from lipden.cli import main
    from lipden.train.state import RunLocked, run_lock

    with run_lock(tmp_path):
        with pytest.raises(RunLocked, match=f"is being trained by pid {os.getpid()}"):
            train(tiny_config(image_folders, tmp_path), progress=False)
        code = main(["train", "--output", str(tmp_path), "--train-dir", str(image_folders[0]), "--quiet"])
        assert code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is being trained by" in err
    assert not (tmp_path / "train_state.safetensors").exists()  # nothing was written by the refused runs


def test_the_lock_of_a_killed_trainer_is_taken_over(image_folders, tmp_path):
    import signal

    holder = subprocess.Popen([sys.executable, "-c", (
        "import pathlib, sys, time; from lipden.train.state import run_lock\n"
        f"with run_lock(pathlib.Path({str(tmp_path)!r})):\n    print('held', flush=True); time.sleep(60)")],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    summary = train(tiny_config(image_folders, tmp_path, steps=2), progress=False)
    assert summary["step"] == 2


def test_a_run_records_its_spline_kernel_and_a_resumed_run_keeps_it_on_the_same_device(image_folders, tmp_path):
    from lipden.nn.splines import get_spline_backend, native_kernel_available

    train(tiny_config(image_folders, tmp_path, stop_at=2, validate_every=1, spline_kernel="eager"), progress=False)
    _, metadata = load_tensors(tmp_path / "train_state.safetensors")
    assert metadata["spline_kernel"] == "eager"
    train(tiny_config(image_folders, tmp_path, stop_at=3, validate_every=1), progress=False)  # "auto"
    _, metadata = load_tensors(tmp_path / "train_state.safetensors")
    assert metadata["step"] == 3 and metadata["spline_kernel"] == "eager"
    # a run trained on a GPU and resumed on this CPU takes the CPU's kernel, not the GPU's
    tensors, metadata = load_tensors(tmp_path / "train_state.safetensors")
    save_tensors_atomic(tensors, tmp_path / "train_state.safetensors",
                        {**metadata, "train_config": {**metadata["train_config"], "device": "cuda:0"}})
    train(tiny_config(image_folders, tmp_path, validate_every=1), progress=False)
    _, metadata = load_tensors(tmp_path / "train_state.safetensors")
    assert metadata["step"] == 4
    assert metadata["spline_kernel"] == ("native" if native_kernel_available() else "eager")
    fresh = tmp_path / "fresh"
    train(tiny_config(image_folders, fresh, steps=1, validate_every=1), progress=False)
    _, metadata = load_tensors(fresh / "train_state.safetensors")
    assert metadata["spline_kernel"] == ("native" if native_kernel_available() else "eager")
    assert get_spline_backend() == "eager"  # the process's backend is restored after a run
    with pytest.raises(ValueError, match="spline_kernel"):
        TrainConfig(output=str(tmp_path), spline_kernel="fast").resolved()
