#!/bin/sh
# The priors campaign on a 2-core CPU: two slots of one thread each, every run resumable.
# Start it first in every session, from the repository root:
#
#   nohup sh checkpoints/campaign.sh > checkpoints/campaign.log 2>&1 &
#
# Each run resumes from its state (`train --resume` takes the recipe from it) and a stage that is
# done is skipped, so the script goes on where the last session stopped. Pause both slots with
# `pkill -STOP -f "cli.py train"` (and -CONT) while timing anything. `DRY_RUN=1 sh checkpoints/campaign.sh`
# prints the next command of each slot instead of training.
#
#   slot 1: the four 1-Lipschitz baselines at sigma 15 (ReLU, |x|, GroupSort, HouseHolder), one after
#           the other, each with the spline's recipe up to the claim budget (31,250 steps of 64 patches,
#           2M patches); each run's best set12 weights within the budget are kept with its recipe as the
#           claim's entry, claim-sigma15/<activation>-2M.{safetensors,json} (compared by
#           `python cli.py benchmark claim`); then spline64-sigma5 to the full budget.
#   slot 2: spline64-sigma25, started from the shipped spline-sigma15 weights (same network), up to
#           1M patches of its own; then spline64-sigma15 up to the claim budget, where its entry is
#           kept the same way, and on to the full budget; then spline64-sigma25 to the full budget.
# The full budget is the paper's sample budget: 50 epochs of 238,400 patches, 11.92M patches, or
# 186,250 steps of 64. The claim runs keep the schedule they were planned with (180,000 steps,
# decay at 75 %); a run planned so is re-planned to the full budget when it goes on past the claim
# (exact before the decay: `train --resume --steps` then gives the run planned so from the start).
set -u
cd "$(dirname "$0")/.."

CLAIM_STEPS=31250
FIRST_PLAN=180000  # the schedule the claim runs and the sigma-25 head were planned with
FULL_STEPS=186250
SIGMA25_HEAD_STEPS=15625
RECIPE="--channels 64 --batch-size 64 --lr-scale 0.5 --validate-every 500"

# Run one training (in a dry run: print it, and stop the slot there).
train() {
    if [ -n "${DRY_RUN:-}" ]; then
        echo "python cli.py train --quiet $*"
        return 1
    else
        OMP_NUM_THREADS=1 nice -n 19 python cli.py train --quiet "$@"
    fi
}

# The step a run's state has reached (0 without a state; nothing when it cannot be read).
state_step() {
    python - "$1" 2>/dev/null <<'PY'
import json, pathlib, struct, sys
state = pathlib.Path(sys.argv[1]) / "train_state.safetensors"
if not state.exists():
    print(0)
else:  # the safetensors header: its length (8 bytes, little-endian), then JSON
    with open(state, "rb") as handle:
        header = json.loads(handle.read(struct.unpack("<Q", handle.read(8))[0]))
    print(json.loads(header["__metadata__"]["lipden"])["step"])
PY
}

# Train checkpoints/$1 up to step $2 of a schedule planned for $3 steps (new with the options "$4 ..."
# and the recipe, or resumed), unless its state is there already.
train_to() {
    run=checkpoints/$1 stop=$2 planned=$3
    shift 3
    step=$(state_step "$run")
    case $step in
        '' | *[!0-9]*) echo "cannot read the step of $run/train_state.safetensors" >&2; return 1 ;;
    esac
    if [ "$step" -ge "$stop" ]; then
        return 0
    elif [ "$step" -gt 0 ]; then
        train --resume --steps "$planned" --stop-at "$stop" --output "$run"
    else
        # shellcheck disable=SC2086
        train "$@" $RECIPE --steps "$planned" --stop-at "$stop" --output "$run"
    fi
}

# Train the sigma-15 run of activation $1 to the claim budget and keep its best within it as the
# claim's entry (weights and record, lipden.train.comparison), unless the entry is there already.
claim_entry() {
    entry_run=$1"64-sigma15" entry=checkpoints/claim-sigma15/$1-2M.safetensors
    [ -f "${entry%.safetensors}.json" ] && return 0
    if [ "$1" = spline ]; then
        train_to "$entry_run" "$CLAIM_STEPS" "$FIRST_PLAN" --sigma 15 || return 1
    else
        train_to "$entry_run" "$CLAIM_STEPS" "$FIRST_PLAN" --sigma 15 --activation "$1" || return 1
    fi
    step=$(state_step "checkpoints/$entry_run")
    if [ "$step" != "$CLAIM_STEPS" ]; then
        echo "$entry_run is at step $step, not $CLAIM_STEPS: its best is not the claim's entry" >&2
        return 1
    fi
    if [ -n "${DRY_RUN:-}" ]; then
        echo "keep checkpoints/$entry_run/best.safetensors as $entry"
        return 1
    fi
    mkdir -p checkpoints/claim-sigma15 &&
        python -m lipden.train.comparison "checkpoints/$entry_run" "$entry" "$CLAIM_STEPS"
}

slot1() {
    for activation in relu absolute_value groupsort householder; do
        claim_entry "$activation" || return 1
    done
    train_to spline64-sigma5 "$FULL_STEPS" "$FULL_STEPS" --sigma 5 && echo "slot 1: every run is done"
}

slot2() {
    train_to spline64-sigma25 "$SIGMA25_HEAD_STEPS" "$FIRST_PLAN" --sigma 25 --init-from spline-sigma15 || return 1
    claim_entry spline || return 1
    train_to spline64-sigma15 "$FULL_STEPS" "$FULL_STEPS" --sigma 15 || return 1
    train_to spline64-sigma25 "$FULL_STEPS" "$FULL_STEPS" --sigma 25 && echo "slot 2: every run is done"
}

if [ -n "${DRY_RUN:-}" ]; then
    slot1 2>&1
    slot2 2>&1
    exit 0
fi
# One campaign at a time: a second one would find its runs locked and cut the first one's logs.
pidfile=checkpoints/campaign.pid
if [ -f "$pidfile" ] && ps -p "$(cat "$pidfile")" -o args= 2>/dev/null | grep -q campaign.sh; then
    echo "the campaign is already running (process $(cat "$pidfile"))" >&2
    exit 1
fi
echo $$ > "$pidfile"
slot1 > checkpoints/campaign-slot1.log 2>&1 &
slot2 > checkpoints/campaign-slot2.log 2>&1 &
wait
rm -f "$pidfile"
