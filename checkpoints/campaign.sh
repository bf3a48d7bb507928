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
#   slot 1: spline64-maxmin-sigma5 and spline64-maxmin-sigma25 by turns, CHECK_STEPS at a time, each
#           until it is flat (below);
#           then the four 1-Lipschitz baselines at sigma 15 (ReLU, |x|, GroupSort, HouseHolder), one
#           after the other, each with the spline's recipe up to the claim budget (31,250 steps of 64
#           patches, 2M patches); each run's best set12 weights within the budget are kept with its
#           recipe as the claim's entry, claim-sigma15/<activation>-2M.{safetensors,json} (compared by
#           `python cli.py benchmark claim`).
#   slot 2: spline64-maxmin-sigma15 up to the claim budget, where its entry is kept the same way;
#           then the baselines from the other end of the list (householder first), so that the claim
#           is complete before the spline goes on; then the spline on to the full budget.
# Every spline run starts from maxmin splines (`train --spline-init maxmin`: every other channel |x|,
# the others the identity): of the four starts screened, the best PnP prior on MRI and within 0.06 dB
# of the best denoiser (docs/training.md, "How the splines start"); the runs before it started
# from |x| or from the identity and are kept only as learning curves.
# The full budget is the paper's sample budget: 50 epochs of 238,400 patches, 11.92M patches, or
# 186,250 steps of 64. The claim runs keep the schedule they were planned with (180,000 steps,
# decay at 75 %); a run planned so is re-planned to the full budget when it goes on past the claim
# (exact before the decay: `train --resume --steps` then gives the run planned so from the start).
# Sigma 5 and 25 follow the issue's rule for ending a run before the full budget: they train at the
# constant rate until their validation gains less than 0.02 dB per hour
# over their last 5 hours of training (`python -m lipden.train.plateau RUN` fits the slope and
# judges it flat when the slope plus two standard errors is below the bar); such a
# run is then re-planned so that its decay comes at that step (a budget of 4/3 of it, exact) and
# trained to the end of that plan, still by turns. Sigma 15 trains to the full budget whatever its slope.
set -u
cd "$(dirname "$0")/.."

CLAIM_STEPS=31250
FIRST_PLAN=180000  # the schedule the claim runs are planned with
FULL_STEPS=186250
CHECK_STEPS=2500  # steps between two looks at the slope of a run trained until it is flat
RECIPE="--channels 64 --batch-size 64 --lr-scale 0.5 --validate-every 500"
START=maxmin  # what the splines of every spline run start as
SPLINE15=spline64-$START-sigma15

# Run one training (in a dry run: print it, and stop the slot there).
train() {
    if [ -n "${DRY_RUN:-}" ]; then
        echo "python cli.py train --quiet $*"
        return 1
    else
        OMP_NUM_THREADS=1 nice -n 19 python cli.py train --quiet "$@"
    fi
}

# The step a run's state has reached (0 without a state; nothing when it cannot be read), or with
# "plan" as $2, the step budget it is planned for (0 without a state or a recorded budget).
state_step() {
    python - "$1" "${2:-step}" 2>/dev/null <<'PY'
import json, pathlib, struct, sys
state = pathlib.Path(sys.argv[1]) / "train_state.safetensors"
if not state.exists():
    print(0)
else:  # the safetensors header: its length (8 bytes, little-endian), then JSON
    with open(state, "rb") as handle:
        header = json.loads(handle.read(struct.unpack("<Q", handle.read(8))[0]))
    metadata = json.loads(header["__metadata__"]["lipden"])
    print(metadata["step"] if sys.argv[2] == "step" else int(metadata.get("train_config", {}).get("steps") or 0))
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
    entry_run=$1"64-sigma15" entry=checkpoints/claim-sigma15/$1-2M.safetensors new="--activation $1"
    [ "$1" = spline ] && entry_run=$SPLINE15 new="--spline-init $START"
    [ -f "${entry%.safetensors}.json" ] && return 0
    # shellcheck disable=SC2086
    train_to "$entry_run" "$CLAIM_STEPS" "$FIRST_PLAN" --sigma 15 $new || return 1
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

# One stage of checkpoints/$1, a run trained until it is flat (resumed; new with the options "$2 ..." and
# the recipe): CHECK_STEPS more steps at the constant rate of the full budget while it is not flat; once
# it is, re-planned so that its decay comes at that step, and then CHECK_STEPS at a time to the end of
# that plan. A run planned for another budget (re-planned so) goes on to the end of its plan; past the
# full budget's own decay the slope is not looked at again. Returns 0 after a stage, 3 when the run is
# done, 1 when it failed (or, in a dry run, after printing the stage).
advance_until_flat() {
    name=$1 folder=checkpoints/$1
    shift
    step=$(state_step "$folder") plan=$(state_step "$folder" plan)
    for number in "$step" "$plan"; do
        case $number in
            '' | *[!0-9]*) echo "cannot read the step of $folder/train_state.safetensors" >&2; return 1 ;;
        esac
    done
    if [ "$step" -gt 0 ] && [ "$plan" -ne "$FULL_STEPS" ]; then
        [ "$step" -ge "$plan" ] && return 3
    elif [ "$step" -ge "$FULL_STEPS" ]; then
        return 3
    else
        plan=$FULL_STEPS
        if [ "$step" -gt 0 ] && [ $((step * 4)) -lt $((FULL_STEPS * 3)) ]; then
            budget=$(python -m lipden.train.plateau "$folder") || return 1
            case $budget in
                '') ;;
                *[!0-9]*) echo "lipden.train.plateau printed no step budget for $folder: $budget" >&2; return 1 ;;
                *) plan=$budget ;;
            esac
        fi
    fi
    next=$((step + CHECK_STEPS))
    [ "$next" -gt "$plan" ] && next=$plan
    train_to "$name" "$next" "$plan" "$@" || return 1
}

slot1() {
    # sigma 5 and sigma 25 by turns, a stage each, so that both gain while neither is flat
    sigma5=0 sigma25=0
    while [ "$sigma5" -ne 3 ] || [ "$sigma25" -ne 3 ]; do
        if [ "$sigma5" -ne 3 ]; then
            advance_until_flat spline64-$START-sigma5 --sigma 5 --spline-init "$START"
            sigma5=$?
        fi
        if [ "$sigma25" -ne 3 ]; then
            advance_until_flat spline64-$START-sigma25 --sigma 25 --spline-init "$START"
            sigma25=$?
        fi
        [ "$sigma5" -eq 1 ] || [ "$sigma25" -eq 1 ] && return 1
    done
    for activation in relu absolute_value groupsort householder; do
        claim_entry "$activation" || return 1
    done
    echo "slot 1: every run is done"
}

slot2() {
    claim_entry spline || return 1
    # then the baselines from the other end of slot 1's list; one that slot 1 is training refuses
    # a second trainer, and the spline goes on instead
    for activation in householder groupsort absolute_value relu; do
        if ! claim_entry "$activation"; then
            [ -n "${DRY_RUN:-}" ] && return 1
            echo "slot 2: $activation is not done here; the spline goes on"
            break
        fi
    done
    train_to "$SPLINE15" "$FULL_STEPS" "$FULL_STEPS" --sigma 15 && echo "slot 2: every run is done"
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
