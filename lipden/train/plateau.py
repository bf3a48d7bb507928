"""When a training run has stopped improving, and the step budget that ends it from there.

The campaign's rule (the priors issue): a run trains at its constant learning rate towards the
paper's sample budget unless its learning curve has flattened, that is, unless its set12
validation PSNR gains less than ``threshold`` dB per hour of training at the end. The gain is
measured as the least-squares slope of the validation PSNR against the trainer's clock over the
last ``window_hours`` of constant-rate validations, which averages the validation noise (about
0.05 dB from one validation to the next at the constant rate) instead of comparing two maxima;
a run counts as flat only when the slope plus two standard errors is below the bar, since the
decay that ends it cannot be undone. The trainer's clock (``elapsed_s``) also runs while a
trainer is paused (SIGSTOP), so long pauses read as hours without gain: keep them short.

A flat run then ends with the schedule's own decay: its step budget is re-planned to the budget
``N`` whose first decayed step (the trainer decays every step ``k >= lr_decay_at * N``) is the
run's current step, which :func:`lipden.train.config.schedule_replans_exactly` accepts, so the run
goes on exactly as if it had been planned for ``N`` from the start.

    python -m lipden.train.plateau checkpoints/spline64-maxmin-sigma25

prints the re-planned step budget on stdout when the run is flat (nothing while it is still
rising, when it cannot be judged yet, or when it is past a decay already) and the measured slope
on stderr.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from lipden.models.checkpoint import load_tensors
from lipden.train.config import TrainConfig, schedule_replans_exactly
from lipden.train.state import read_log

#: the issue's flatness bar (dB of set12 validation PSNR per hour of training)
FLAT_DB_PER_HOUR = 0.02
#: the span of the learning curve the slope is fitted on (hours of training)
WINDOW_HOURS = 5.0


@dataclass(frozen=True)
class Slope:
    """Least-squares slope of validation PSNR against training hours over a window of a log."""

    db_per_hour: float
    standard_error: float  # of ``db_per_hour``, from the residuals of the fit
    validations: int  # number of validations in the window
    first_step: int
    last_step: int


def validation_slope(rows: list[dict[str, float]], window_hours: float = WINDOW_HOURS) -> Slope | None:
    """The slope of ``val_psnr`` against ``elapsed_s`` over the last ``window_hours`` of the
    constant-rate validations in ``rows`` (a run's log rows, :func:`lipden.train.state.read_log`).

    Only rows at the undecayed rate (``lr_factor`` 1, or not recorded) count. ``None`` when those
    span less than ``window_hours`` or hold fewer than 3 validations (no slope can be judged)."""
    if window_hours <= 0:
        raise ValueError(f"the window must be positive, got {window_hours} hours")
    curve = [(row["elapsed_s"] / 3600, row["val_psnr"], int(row["step"])) for row in rows
             if "val_psnr" in row and row.get("lr_factor", 1.0) == 1.0]
    if not curve or curve[-1][0] - curve[0][0] < window_hours:
        return None
    window = [point for point in curve if point[0] >= curve[-1][0] - window_hours]
    if len(window) < 3:
        return None
    n = len(window)
    mean_h = sum(h for h, _, _ in window) / n
    mean_p = sum(p for _, p, _ in window) / n
    spread = sum((h - mean_h) ** 2 for h, _, _ in window)
    slope = sum((h - mean_h) * (p - mean_p) for h, p, _ in window) / spread
    residual = sum((p - mean_p - slope * (h - mean_h)) ** 2 for h, p, _ in window)
    return Slope(slope, math.sqrt(residual / (n - 2) / spread), n, window[0][2], window[-1][2])


def decay_budget(step: int, lr_decay_at: float = 0.75) -> int:
    """The step budget ``N`` whose first decayed step is ``step``: the trainer decays every step
    ``k >= lr_decay_at * N``, so ``N`` is the largest budget with ``lr_decay_at * N <= step``
    (then ``lr_decay_at * N > step - 1``). The steps ``0 .. step - 1`` taken so far stay undecayed,
    so the run re-planned to ``N`` is the run planned for ``N`` from the start; its decayed tail is
    the ``N - step`` steps from ``step`` on."""
    if step < 1 or not 0 < lr_decay_at < 1:
        raise ValueError(f"need a step >= 1 and a decay point in (0, 1), got {step} and {lr_decay_at}")
    budget = math.floor(step / lr_decay_at)
    while lr_decay_at * (budget + 1) <= step:  # guards against the rounding of step / lr_decay_at,
        budget += 1  # in the trainer's own product
    while lr_decay_at * budget > step:
        budget -= 1
    if budget <= step:
        raise ValueError(f"step {step} is too early for a decayed tail at {lr_decay_at} of a budget")
    return budget


def is_flat(slope: Slope, threshold: float = FLAT_DB_PER_HOUR) -> bool:
    """Whether the curve gains less than ``threshold`` dB per hour with confidence: the slope plus
    two standard errors is below it."""
    return slope.db_per_hour + 2 * slope.standard_error < threshold


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lipden.train.plateau",
        description="Print the re-planned step budget of a training run whose validation has flattened "
                    "(nothing while it still gains); the measured slope goes to stderr.")
    parser.add_argument("run", type=Path, help="a run's folder (its log.csv and train_state.safetensors)")
    parser.add_argument("--window", type=float, default=WINDOW_HOURS, help="hours of training fitted (default 5)")
    parser.add_argument("--threshold", type=float, default=FLAT_DB_PER_HOUR,
                        help="flat below this many dB per hour (default 0.02)")
    args = parser.parse_args(argv)
    state = args.run / "train_state.safetensors"
    if not state.is_file():
        print(f"error: {args.run} is not a training run (no train_state.safetensors)", file=sys.stderr)
        return 1
    if args.window <= 0:
        print(f"error: --window must be positive, got {args.window}", file=sys.stderr)
        return 1
    try:
        _, metadata = load_tensors(state)
        step = int(metadata["step"])
        planned, lr_decay_at = int(metadata["train_config"]["steps"]), float(metadata["train_config"]["lr_decay_at"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(f"error: cannot read the step and schedule of {state}: {error}", file=sys.stderr)
        return 1
    rows = read_log(args.run)
    slope = validation_slope(rows, args.window)
    if slope is None:
        print(f"{args.run}: less than {args.window:g} hours of constant-rate validations, not judged",
              file=sys.stderr)
        return 0
    flat = is_flat(slope, args.threshold)
    print(f"{args.run}: {slope.db_per_hour:+.4f} dB/h (standard error {slope.standard_error:.4f}) over the "
          f"last {args.window:g} hours, steps {slope.first_step}-{slope.last_step} ({slope.validations} "
          f"validations): {'flat' if flat else 'not flat'}", file=sys.stderr)
    if flat:
        try:
            budget = decay_budget(step, lr_decay_at)
        except ValueError as error:
            print(f"{args.run}: {error}", file=sys.stderr)
            return 0
        replanned = TrainConfig(output=str(args.run), steps=budget, lr_decay_at=lr_decay_at)
        if not schedule_replans_exactly(planned, replanned, step):  # the state's step, maybe past the last validation
            print(f"{args.run}: step {step} is past the decay of its plan ({planned} steps); it goes on to its end",
                  file=sys.stderr)
            return 0
        print(budget)
    return 0


if __name__ == "__main__":
    sys.exit(main())
