"""lipden.train.plateau: the slope of a learning curve and the budget that puts the decay at a step."""

import random
from types import SimpleNamespace

import pytest
import torch

from lipden.models.checkpoint import save_tensors_atomic
from lipden.train.config import schedule_replans_exactly
from lipden.train.plateau import Slope, decay_budget, is_flat, main, validation_slope


def curve(slope: float, hours: float = 8.0, noise: float = 0.0, decayed_after: float | None = None) -> list[dict]:
    """Log rows every quarter hour on ``30 + slope * hours`` plus Gaussian validation noise."""
    rng = random.Random(0)
    rows = []
    for i in range(int(hours * 4) + 1):
        h = i / 4
        decayed = decayed_after is not None and h > decayed_after
        rows.append({"step": 500.0 * i, "elapsed_s": 3600.0 * h, "val_psnr": 30 + slope * h + rng.gauss(0, noise),
                     "lr_factor": 0.1 if decayed else 1.0})
    return rows


@pytest.mark.parametrize("slope", [-0.01, 0.0, 0.015, 0.05])
def test_the_slope_of_a_straight_curve_is_recovered(slope):
    fit = validation_slope(curve(slope), window_hours=5)
    assert fit is not None and fit.db_per_hour == pytest.approx(slope, abs=1e-9)
    assert fit.validations == 21 and (fit.first_step, fit.last_step) == (6000, 16000)  # hours 3 to 8


def test_the_fit_averages_validation_noise_and_reports_its_error():
    fits = [validation_slope(curve(0.03, noise=0.05)[: 33 - k], window_hours=5) for k in range(4)]
    for fit in fits:
        assert fit is not None and abs(fit.db_per_hour - 0.03) < 3 * fit.standard_error
        assert 0.003 < fit.standard_error < 0.03


def test_decayed_validations_and_short_curves_are_not_judged():
    rows = curve(0.0, hours=8, decayed_after=6)  # a run past its decay: only its first 6 hours count
    fit = validation_slope(rows + [{"step": 1e5, "elapsed_s": 1e5, "val_psnr": 99.0, "lr_factor": 0.1}], 5)
    assert fit is not None and fit.last_step == 12000 and fit.db_per_hour == pytest.approx(0.0, abs=1e-9)
    assert validation_slope(curve(0.0, hours=4.5), window_hours=5) is None
    assert validation_slope([], window_hours=5) is None
    with pytest.raises(ValueError, match="positive"):
        validation_slope(curve(0.0), window_hours=0)


@pytest.mark.parametrize("step", [10, 11, 12, 15625, 16100, 19000, 39900, 40000, 40001, 123457])
@pytest.mark.parametrize("lr_decay_at", [0.75, 0.5, 0.9, 0.3])
def test_the_budget_puts_the_first_decayed_step_at_the_step_and_replans_exactly(step, lr_decay_at):
    budget = decay_budget(step, lr_decay_at)
    # the trainer (lipden.train.loop) takes step k at the decayed rate when k >= lr_decay_at * budget
    decayed = [k for k in range(max(0, step - 3), budget) if k >= lr_decay_at * budget]
    assert decayed[0] == step
    assert lr_decay_at * (budget + 1) > step  # the largest such budget: one more step would move the decay
    config = SimpleNamespace(steps=budget, lr_decay_at=lr_decay_at)
    assert schedule_replans_exactly(10**6, config, step)  # a run planned for a longer budget accepts it
    assert not schedule_replans_exactly(10**6, config, step + 1)  # one step later it would not


def test_a_slope_is_flat_only_below_the_bar_with_two_standard_errors():
    assert is_flat(validation_slope(curve(0.0, noise=0.02), 5))
    assert not is_flat(validation_slope(curve(0.019, noise=0.0), 5), 0.019)
    assert not is_flat(Slope(0.01, 0.006, 20, 0, 1))  # 0.01 + 0.012 is not below 0.02


def test_a_budget_needs_a_step_a_decay_point_and_room_for_a_tail():
    for step, at in ((0, 0.75), (10, 0.0), (10, 1.0), (1, 0.75), (2, 0.75), (5, 0.9)):
        with pytest.raises(ValueError):
            decay_budget(step, at)


def write_run(folder, slope: float, step: int, planned: int = 186250) -> None:
    folder.mkdir(parents=True)
    save_tensors_atomic({"x": torch.zeros(1)}, folder / "train_state.safetensors",
                        {"step": step, "train_config": {"steps": planned, "lr_decay_at": 0.75}})
    lines = ["step,elapsed_s,loss_per_patch,val_psnr,lr_factor"]
    lines += [f"{row['step']:.0f},{row['elapsed_s']},1.0,{row['val_psnr']},1.0" for row in curve(slope)]
    (folder / "log.csv").write_text("\n".join(lines) + "\n")


def test_the_command_prints_the_budget_of_a_flat_run_only(tmp_path, capsys):
    write_run(tmp_path / "flat", slope=0.01, step=16100)  # its state is past its last validation (16,000)
    write_run(tmp_path / "rising", slope=0.05, step=16000)
    assert main([str(tmp_path / "flat")]) == 0
    captured = capsys.readouterr()
    assert captured.out == "21466\n" and "+0.0100 dB/h" in captured.err and "flat" in captured.err
    assert main([str(tmp_path / "rising")]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "not flat" in captured.err
    assert main([str(tmp_path / "rising"), "--threshold", "0.06"]) == 0  # flat by a looser bar
    assert capsys.readouterr().out == "21333\n"
    # a run past the decay of its plan is not re-planned again
    write_run(tmp_path / "decayed", slope=0.0, step=16100, planned=20000)
    assert main([str(tmp_path / "decayed")]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "past the decay of its plan (20000 steps)" in captured.err


def test_the_command_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main([str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith("error: ")
    write_run(tmp_path / "run", slope=0.0, step=100)
    assert main([str(tmp_path / "run"), "--window", "-1"]) == 1
    assert "--window must be positive" in capsys.readouterr().err
