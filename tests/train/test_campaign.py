"""checkpoints/campaign.sh: each slot goes on with the first stage its runs' states leave undone
(read in a dry run, which prints the slot's next action instead of training)."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from lipden.models.checkpoint import save_tensors_atomic
from tests.helpers import ROOT

RECIPE = "--channels 64 --batch-size 64 --lr-scale 0.5 --validate-every 500"
SPLINE_START = "--spline-init maxmin"  # every spline run's start
FIRST = "--steps 180000"  # the schedule of the claim runs
FULL = "--steps 186250 --stop-at 186250"  # the paper's 11.92M patches
PLAN = "--steps 186250"  # a run trained until it is flat, a chunk at a time
SIGMA5, SIGMA15, SIGMA25 = (f"spline64-maxmin-sigma{sigma}" for sigma in (5, 15, 25))


def write_log(folder, slope_db_per_hour: float, hours: float = 6.0, last_step: int = 12000) -> None:
    """A log.csv of validations every quarter hour on a straight learning curve of the given slope."""
    folder.mkdir(parents=True, exist_ok=True)
    points = int(hours * 4) + 1
    rows = ["step,elapsed_s,loss_per_patch,val_psnr,lr_factor"]
    for i in range(points):
        step = last_step - (points - 1 - i) * 500
        rows.append(f"{step},{900.0 * i},1.0,{30 + slope_db_per_hour * i / 4:.4f},1.0")
    (folder / "log.csv").write_text("\n".join(rows) + "\n")


@pytest.fixture
def campaign(tmp_path):
    """A copy of the script in an empty repository root; ``next_actions(**steps)`` gives each slot's next action
    for runs whose states are at those steps (and, with ``reports=True``, the slopes it measured)."""
    if shutil.which("sh") is None:
        pytest.skip("needs a POSIX sh")
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(ROOT / "checkpoints" / "campaign.sh", tmp_path / "checkpoints")

    def next_actions(claim: tuple[str, ...] = (), reports: bool = False, **steps: int | tuple[int, int]) -> list[str]:
        for run, step in steps.items():  # a step, or (step, the step budget the run is planned for)
            (step, plan) = step if isinstance(step, tuple) else (step, 186250 if run in (SIGMA5, SIGMA25) else 180000)
            save_tensors_atomic({"x": torch.zeros(1)}, tmp_path / "checkpoints" / run / "train_state.safetensors",
                                {"step": step, "train_config": {"steps": plan, "lr_decay_at": 0.75}})
        for activation in claim:  # the claim's entries kept so far: weights and record
            (tmp_path / "checkpoints" / "claim-sigma15").mkdir(exist_ok=True)
            for suffix, content in ((".safetensors", b"weights"), (".json", b"{}")):
                (tmp_path / "checkpoints" / "claim-sigma15" / f"{activation}-2M{suffix}").write_bytes(content)
        path = f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"  # its python
        result = subprocess.run(["sh", "checkpoints/campaign.sh"], cwd=tmp_path, capture_output=True, text=True,
                                env={**os.environ, "DRY_RUN": "1", "PATH": path}, timeout=120)
        assert result.returncode == 0, result.stderr
        return [line for line in result.stdout.splitlines()  # without the slope reports unless asked
                if reports or not line.startswith("checkpoints/spline64-")]

    return next_actions


def test_new_runs_start_with_the_recipe_and_started_ones_resume(campaign):
    assert campaign() == [  # slot 1: a stage of sigma 5, then one of sigma 25; slot 2
        f"python cli.py train --quiet --sigma 5 {SPLINE_START} {RECIPE} {PLAN} --stop-at 2500 --output checkpoints/{SIGMA5}",
        f"python cli.py train --quiet --sigma 25 {SPLINE_START} {RECIPE} {PLAN} --stop-at 2500 --output checkpoints/{SIGMA25}",
        f"python cli.py train --quiet --sigma 15 {SPLINE_START} {RECIPE} {FIRST} --stop-at 31250 --output checkpoints/{SIGMA15}"]
    assert campaign(**{SIGMA5: 3000, SIGMA25: 2500, SIGMA15: 900}) == [
        f"python cli.py train --quiet --resume {PLAN} --stop-at 5500 --output checkpoints/{SIGMA5}",
        f"python cli.py train --quiet --resume {PLAN} --stop-at 5000 --output checkpoints/{SIGMA25}",
        f"python cli.py train --quiet --resume {FIRST} --stop-at 31250 --output checkpoints/{SIGMA15}"]


BASELINES = ("relu", "absolute_value", "groupsort", "householder")
DONE = {SIGMA5: (53334, 53334), SIGMA25: (20833, 20833)}  # both ended by their decay


def test_slot1_trains_sigma5_and_sigma25_by_turns_until_flat_then_their_decay(campaign, tmp_path):
    sigma5 = tmp_path / "checkpoints" / SIGMA5
    write_log(sigma5, slope_db_per_hour=0.05, last_step=15500)  # still rising: one more chunk
    assert campaign(reports=True, **{SIGMA5: 15625})[:2] == [
        f"checkpoints/{SIGMA5}: +0.0500 dB/h (standard error 0.0000) over the last 5 hours, steps 5500-15500 "
        "(21 validations): not flat",
        f"python cli.py train --quiet --resume {PLAN} --stop-at 18125 --output checkpoints/{SIGMA5}"]
    write_log(sigma5, slope_db_per_hour=0.01, last_step=15500)  # flat: its decay comes at its step, 15,625
    assert campaign(**{SIGMA5: 15625})[0] == \
        f"python cli.py train --quiet --resume --steps 20833 --stop-at 18125 --output checkpoints/{SIGMA5}"
    # re-planned so, it goes on to the end of its plan without a new look at its slope, a stage at a time
    write_log(sigma5, slope_db_per_hour=0.05, last_step=15500)
    assert campaign(**{SIGMA5: (17000, 20833)})[0] == \
        f"python cli.py train --quiet --resume --steps 20833 --stop-at 19500 --output checkpoints/{SIGMA5}"
    assert campaign(**{SIGMA5: (19500, 20833)})[0] == \
        f"python cli.py train --quiet --resume --steps 20833 --stop-at 20833 --output checkpoints/{SIGMA5}"
    # a run that goes flat late still ends with its decay; past the full budget's own decay it is not looked at
    write_log(sigma5, slope_db_per_hour=0.0, last_step=136000)
    assert campaign(**{SIGMA5: 136000})[0] == \
        f"python cli.py train --quiet --resume --steps 181333 --stop-at 138500 --output checkpoints/{SIGMA5}"
    write_log(sigma5, slope_db_per_hour=0.0, last_step=140000)
    assert campaign(reports=True, **{SIGMA5: 140000})[0] == \
        f"python cli.py train --quiet --resume {PLAN} --stop-at 142500 --output checkpoints/{SIGMA5}"
    # a flat sigma 25 is re-planned the same way while sigma 5 goes on
    write_log(tmp_path / "checkpoints" / SIGMA25, slope_db_per_hour=0.0, last_step=12000)
    assert campaign(**{SIGMA5: 12000, SIGMA25: 12000})[1] == \
        f"python cli.py train --quiet --resume --steps 16000 --stop-at 14500 --output checkpoints/{SIGMA25}"
    # once sigma 5 is done, sigma 25 alone; less than 5 hours of validations are not judged
    shutil.rmtree(tmp_path / "checkpoints" / SIGMA25)
    assert campaign(**{SIGMA5: (20833, 20833)})[0] == \
        f"python cli.py train --quiet --sigma 25 {SPLINE_START} {RECIPE} {PLAN} --stop-at 2500 --output checkpoints/{SIGMA25}"
    write_log(tmp_path / "checkpoints" / SIGMA25, slope_db_per_hour=0.0, hours=4, last_step=8000)
    assert campaign(reports=True, **{SIGMA5: (20833, 20833), SIGMA25: 8000})[:2] == [
        f"checkpoints/{SIGMA25}: less than 5 hours of constant-rate validations, not judged",
        f"python cli.py train --quiet --resume {PLAN} --stop-at 10500 --output checkpoints/{SIGMA25}"]


def test_slot1_then_keeps_each_baselines_best_at_the_claim_budget(campaign):
    assert campaign(**DONE)[0] == \
        f"python cli.py train --quiet --sigma 15 --activation relu {RECIPE} {FIRST} --stop-at 31250 --output " \
        "checkpoints/relu64-sigma15"
    assert campaign(**DONE, **{"relu64-sigma15": 31250})[0] == \
        "keep checkpoints/relu64-sigma15/best.safetensors as checkpoints/claim-sigma15/relu-2M.safetensors"
    assert campaign(claim=("relu",), **DONE)[0] == \
        f"python cli.py train --quiet --sigma 15 --activation absolute_value {RECIPE} {FIRST} --stop-at 31250 " \
        "--output checkpoints/absolute_value64-sigma15"
    assert campaign(claim=("relu",), **DONE, **{"absolute_value64-sigma15": 900})[0] \
        == f"python cli.py train --quiet --resume {FIRST} --stop-at 31250 --output checkpoints/absolute_value64-sigma15"
    assert campaign(claim=BASELINES, **DONE)[0] == "slot 1: every run is done"


def test_slot2_trains_the_spline_to_its_claim_then_baselines_then_on_to_the_full_budget(campaign):
    assert campaign(**DONE, **{SIGMA15: 31250})[1] == \
        f"keep checkpoints/{SIGMA15}/best.safetensors as checkpoints/claim-sigma15/spline-2M.safetensors"
    # the baselines from the other end of slot 1's list
    assert campaign(claim=("spline",), **DONE, **{SIGMA15: 31250})[1] == \
        f"python cli.py train --quiet --sigma 15 --activation householder {RECIPE} {FIRST} --stop-at 31250 " \
        "--output checkpoints/householder64-sigma15"
    assert campaign(claim=("spline", "householder", "groupsort"), **DONE, **{SIGMA15: 31250})[1] == \
        f"python cli.py train --quiet --sigma 15 --activation absolute_value {RECIPE} {FIRST} --stop-at 31250 " \
        "--output checkpoints/absolute_value64-sigma15"
    # a run planned for 180,000 steps goes on re-planned to the full budget, whatever its slope
    assert campaign(claim=("spline", *BASELINES), **DONE, **{SIGMA15: 31250})[-1] == \
        f"python cli.py train --quiet --resume {FULL} --output checkpoints/{SIGMA15}"
    assert campaign(claim=("spline", *BASELINES), **DONE, **{SIGMA15: (186250, 186250)})[-1] == \
        "slot 2: every run is done"


def test_a_baseline_past_the_budget_without_its_entry_is_reported(campaign):
    (line, _) = campaign(**DONE, **{"relu64-sigma15": 31300})
    assert line == "relu64-sigma15 is at step 31300, not 31250: its best is not the claim's entry"


def test_the_entry_is_kept_with_the_runs_recipe(tmp_path):
    """Not a dry run: slot 2 keeps the spline's entry, then fails to train it on (no cli.py here)."""
    if shutil.which("sh") is None:
        pytest.skip("needs a POSIX sh")
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(ROOT / "checkpoints" / "campaign.sh", tmp_path / "checkpoints")
    run = tmp_path / "checkpoints" / SIGMA15
    recipe = {"sigma": 15.0, "activation": "spline", "batch_size": 64, "lr_conv": 4e-4}
    save_tensors_atomic({"x": torch.zeros(1)}, run / "train_state.safetensors",
                        {"step": 31250, "train_config": recipe, "config": {"channels": 64}})
    save_tensors_atomic({"x": torch.ones(1)}, run / "best.safetensors", {"step": 19000, "val_psnr": 31.06})
    path = f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"
    subprocess.run(["sh", "checkpoints/campaign.sh"], cwd=tmp_path, capture_output=True, text=True,
                   env={**os.environ, "PATH": path}, timeout=120)
    record = json.loads((tmp_path / "checkpoints" / "claim-sigma15" / "spline-2M.json").read_text())
    assert record["budget_patches"] == 2_000_000 and record["best_step"] == 19000
    assert record["recipe"]["lr_conv"] == 4e-4 and record["network"] == {"channels": 64}
    assert (tmp_path / "checkpoints" / "claim-sigma15" / "spline-2M.safetensors").read_bytes() == \
        (run / "best.safetensors").read_bytes()
    log = (tmp_path / "checkpoints" / "campaign-slot2.log").read_text()
    # the first baseline fails (as one that slot 1 holds would), and the spline goes on
    assert "householder is not done here; the spline goes on" in log and "cli.py" in log


def test_a_sigma15_run_past_the_budget_without_its_claim_is_reported(campaign):
    assert campaign(**DONE, **{SIGMA15: 40000})[1] == \
        f"{SIGMA15} is at step 40000, not 31250: its best is not the claim's entry"


def test_an_unreadable_state_stops_its_slot_instead_of_starting_the_run_again(campaign, tmp_path):
    folder = tmp_path / "checkpoints" / SIGMA5
    folder.mkdir()
    (folder / "train_state.safetensors").write_bytes(b"\x04\x00\x00\x00\x00\x00\x00\x00{}}}")
    assert campaign()[0] == f"cannot read the step of checkpoints/{SIGMA5}/train_state.safetensors"


def test_a_second_campaign_is_refused_while_one_runs(tmp_path):
    shutil.copytree(ROOT / "checkpoints", tmp_path / "checkpoints", ignore=lambda d, names: [
        n for n in names if n != "campaign.sh"])
    if shutil.which("ps") is None:
        pytest.skip("needs ps")
    pidfile = tmp_path / "checkpoints" / "campaign.pid"
    running = subprocess.Popen(["sh", "-c", "sleep 60", "campaign.sh"])  # a live campaign, as ps shows it
    try:
        pidfile.write_text(str(running.pid))
        result = subprocess.run(["sh", "checkpoints/campaign.sh"], cwd=tmp_path, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 1 and "already running" in result.stderr
    finally:
        running.kill()
        running.wait()
    # a pid now held by another program (reused after a restart): the campaign starts; here its
    # trainings fail at once (no cli.py in this folder) and each slot logs why
    pidfile.write_text(str(os.getpid()))
    result = subprocess.run(["sh", "checkpoints/campaign.sh"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    assert "already running" not in result.stderr and not pidfile.exists()
    assert "cli.py" in (tmp_path / "checkpoints" / "campaign-slot1.log").read_text()
