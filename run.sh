#!/usr/bin/env bash
# The lab end to end on a CPU.
#
#   bash run.sh           train VAE0label and Genwithlabel with the tuned defaults of train.py,
#                         reconstruct + generate on the validation split, grade, print both grades
#   SPLIT=test bash run.sh        the same, graded on the test split
#   RUN=try2 bash run.sh          train into checkpoints/<task>/try2 instead of .../run
#   bash run.sh sweep     the hyper-parameter grid of benchmarks/sweep.py (latent_dim x var x lr x
#                         epochs), one table of grades in sweeps/sweep.{csv,md}
#
# Every step must succeed: the script stops at the first failing one.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python}
SPLIT=${SPLIT:-valid}
RUN=${RUN:-run}

if [ "${1:-}" = "sweep" ]; then
    shift
    exec "$PYTHON" benchmarks/sweep.py --out sweeps/sweep "$@"
elif [ -n "${1:-}" ]; then
    echo "error: unknown argument '$1': use 'bash run.sh' or 'bash run.sh sweep'" >&2
    exit 2
fi

TASKS=$("$PYTHON" -c "from tasks import TASKS; print(*TASKS)")  # the names are defined once, in tasks.py
start=$(date +%s)
for task in $TASKS; do
    echo "== train $task"
    "$PYTHON" train.py --task "$task" --save_dir "$RUN"
done
trained=$(date +%s)
for task in $TASKS; do
    echo "== inference $task on $SPLIT"
    "$PYTHON" inference.py --checkpoint_path "checkpoints/$task/$RUN.pth" --data_path "$SPLIT" --save_dir "outputs/$task"
done
echo "== grade"
"$PYTHON" grade.py  # grades every outputs/<task>/ written above
end=$(date +%s)
echo "training took $((trained - start)) s; the whole job $((end - start)) s (grades above, also in grade_result.json)"
