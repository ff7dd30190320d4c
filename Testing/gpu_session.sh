#!/usr/bin/env bash
# Every GPU check of the open issues in one command, for a GPU machine lent for minutes: the
# cheapest first, each under its own time limit, so that one slow or failing check costs only its
# own figures. Logs and results go to $OUT (default /tmp/gpu-session).
#
#   bash Testing/gpu_session.sh [TOTAL_SECONDS]     # default 540
#
# Python packages the machine lacks can travel as wheels in .whl/ (installed into /tmp/site).
set -u
total=${1:-540}
start=$SECONDS
OUT=${OUT:-/tmp/gpu-session}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/MedSegNAS:$PWD/SSLPretrain${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "gpu_session: could not install .whl/"; exit 1; }
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
    nproc
    python3 -c "import sys, torch, numpy, monai, SimpleITK, nibabel; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'numpy', numpy.__version__, 'monai', monai.__version__); import MedSegNASLib.cli"
} 2>&1 | tee "$OUT/env.log"
[ "${PIPESTATUS[0]}" = 0 ] || { echo "gpu_session: the environment check failed"; exit 1; }

left() { echo $(( total - (SECONDS - start) )); }
stage() {  # stage NAME LIMIT_SECONDS COMMAND...: run it, log to $OUT/NAME.log, never longer than the time left
    local name=$1 limit=$2
    shift 2
    local remaining
    remaining=$(left)
    (( limit > remaining - 10 )) && limit=$(( remaining - 10 ))
    if (( limit < 20 )); then echo "== $name: skipped, $remaining s left" | tee "$OUT/$name.log"; return; fi
    echo "== $name (limit $limit s, $(( SECONDS - start )) s in)"
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]} after $(( SECONDS - start )) s"
}
stage interactive 120 python3 Testing/gpu_check_interactive.py --require-gpu
stage segment 260 python3 Testing/gpu_check_segment.py --require-gpu
budget=$(( $(left) - 25 ))
# 40 search epochs (30 of them architecture epochs: 180 steps, 10x the CPU table's 18) and 40
# training epochs: the first session's 80 / 60 had scored no model after 150 s.
stage benchmark $(( budget + 20 )) python3 Testing/gpu_check_benchmark.py --out /tmp/gpu-bench --budget-s "$budget" \
    --search-epochs 40 --warmup-epochs 10 --train-epochs 40
for f in benchmark.json dice_vs_params.png; do
    [ -f "/tmp/gpu-bench/bench/artifacts/$f" ] && cp "/tmp/gpu-bench/bench/artifacts/$f" "$OUT/"
done
# the search's progress events say how far it got when the budget ended it
[ -f /tmp/gpu-bench/bench/subruns/search-s0/events.jsonl ] && cp /tmp/gpu-bench/bench/subruns/search-s0/events.jsonl "$OUT/search_events.jsonl"
echo "gpu_session: done in $(( SECONDS - start )) s"
