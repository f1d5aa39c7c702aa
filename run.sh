#!/usr/bin/env bash
# The lab end to end on a CPU.
#
#   bash run.sh           train VAE0label and Genwithlabel with the tuned defaults of train.py,
#                         reconstruct + generate on the validation split, grade, print both grades
#   SPLIT=test bash run.sh        the same, graded on the test split
#   RUN=try2 bash run.sh          train into checkpoints/<task>/try2 instead of .../run
#                                 (a RUN with a '/' is a folder: RUN/<task>)
#   RESUME=1 bash run.sh          after Ctrl-C: continue each task's run where it stopped
#   FRESH=1 bash run.sh           start over, replacing the run (finished or not)
#                                 (without it, a finished run is kept and used as it is)
#   THREADS=1 bash run.sh         torch threads (default: one per core; 1 is faster on a busy machine)
#   OUT=dir bash run.sh           inference outputs in dir/<task> and grades in dir/grade_result.json
#                                 (default: outputs/<task> and grade_result.json)
#   TRAIN_FLAGS="--epochs 3" bash run.sh     more train.py flags, e.g. a quick try
#   bash run.sh sweep     the hyper-parameter grid of benchmarks/sweep.py (latent_dim x var x lr x
#                         epochs), one table of grades in sweeps/sweep.{csv,md}
#
# Every step must succeed: the script stops at the first failing one.
set -euo pipefail
# Ctrl-C reaches every process of the job. Wherever it lands (a Python step starting up, training,
# inference, bash between steps), the job ends with this one line and exit code 130. Each Python step
# stops without a traceback (train.py first saves interrupted.pth and says so); the trap runs once
# the step has ended.
interrupted() {
    echo "interrupted: the training done so far is saved; RESUME=1 bash run.sh continues where it stopped" >&2
    exit 130
}
trap interrupted INT
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python}
SPLIT=${SPLIT:-valid}
RUN=${RUN:-run}
RESUME=${RESUME:-0}
FRESH=${FRESH:-0}
THREADS=${THREADS:-0}
OUT=${OUT:-}
TRAIN_FLAGS=${TRAIN_FLAGS:-}

if [ "${1:-}" = "sweep" ]; then
    shift
    if [ ! -f benchmarks/sweep.py ]; then
        echo "error: the sweep (benchmarks/sweep.py) is not part of this copy of the lab" >&2
        exit 2
    fi
    exec "$PYTHON" benchmarks/sweep.py --out sweeps/sweep "$@"
elif [ -n "${1:-}" ]; then
    echo "error: unknown argument '$1': use 'bash run.sh' or 'bash run.sh sweep'" >&2
    exit 2
fi

run_dir() {  # the run folder of task $1
    case "$RUN" in */*) echo "$RUN/$1" ;; *) echo "checkpoints/$1/$RUN" ;; esac
}
# The names are defined once, in tasks.py. (SIGINT's default action first, as in the entry scripts: a
# Ctrl-C during the imports stops Python without a traceback.)
TASKS=$("$PYTHON" -c "import signal; signal.signal(signal.SIGINT, signal.SIG_DFL); from tasks import TASKS; print(*TASKS)")
start=$(date +%s)
for task in $TASKS; do
    echo "== train $task"
    folder=$(run_dir "$task")
    # shellcheck disable=SC2206  # TRAIN_FLAGS is split into words on purpose
    flags=(--task "$task" --save_dir "$folder" --threads "$THREADS" $TRAIN_FLAGS)
    if [ "$RESUME" = 1 ] && compgen -G "$folder/*.pth" > /dev/null; then
        flags+=(--load_from_checkpoint)
    elif [ "$FRESH" = 1 ]; then
        flags+=(--overwrite)
    elif [ -f "$folder.pth" ] && [ ! -f "$folder/interrupted.pth" ]; then
        # a finished run is a result: kept, and used as it is
        echo "already trained: $folder.pth (FRESH=1 bash run.sh trains it again, RUN=name bash run.sh elsewhere)"
        continue
    fi
    status=0
    "$PYTHON" train.py "${flags[@]}" || status=$?
    if [ "$status" = 130 ]; then
        interrupted  # a SIGTERM sent to train.py alone: it saved interrupted.pth as for Ctrl-C
    elif [ "$status" != 0 ]; then
        exit "$status"
    fi
done
trained=$(date +%s)
grade_flags=()
for task in $TASKS; do
    echo "== inference $task on $SPLIT"
    out="${OUT:-outputs}/$task"
    "$PYTHON" inference.py --checkpoint_path "$(run_dir "$task").pth" --data_path "$SPLIT" --save_dir "$out"
    grade_flags+=("--${task}_output_dir" "$out")
done
echo "== grade"
result=${OUT:+$OUT/}grade_result.json
"$PYTHON" grade.py "${grade_flags[@]}" --result_path "$result"
end=$(date +%s)
echo "training took $((trained - start)) s; the whole job $((end - start)) s (grades above, also in $result)"
