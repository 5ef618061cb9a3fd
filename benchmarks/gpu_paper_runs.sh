#!/usr/bin/env bash
# One device command's share of the paper-scale matrix: GoRL-FM, Gaussian PPO and GoRL-diffusion on
# HopperStand at the authors' full plan (180M encoder-phase frames), MJX on CUDA, seed 0 of each first
# (python benchmarks/learning.py paper-hopper; the "wide" preset with PRESET=paper-hopper-wide).
#
# Run on the GPU machine from the repository root, with the dependency bundle carried along
# (../shared/device/README.md):
#
#     bash benchmarks/gpu_paper_runs.sh            # MINUTES=6 of training, then a clean stop
#
# Speed settings that change no maths, each switched on only if its GPU tests pass here first
# (tests/test_cuda.py, ~1 minute together; $OUT/speed_check.log):
# - STEP_GRAPHS=auto (default): every optimiser step a replayed CUDA graph (model.speed.step_graphs,
#   gorl/step_graphs.py);
# - EVAL_LANES=auto (default): the evaluations after updates in side lanes of the training batch
#   (loop.eval_lanes, gorl/eval_lanes.py: the same evaluations, recorded some updates later), 1 group
#   at the authors' shape, 3 at the wide one.
# true / a number / false / 0 skip the check. A run may change them between commands: a run is what
# it trains and its seed, not how fast.
#
# It continues whatever benchmarks/logs/<preset>/ holds (runs resume from their archived
# checkpoints), stops every running fit cleanly after MINUTES (a checkpoint, the closing lines),
# archives each run's state there and copies that archive, with the matrix's log, into $OUT. Copy
# $OUT/benchmarks/logs/<preset>/ back over the repository's and commit it: the next command, on any
# machine, continues from there. Exit code 3 means runs are unfinished (expected), 0 that the matrix
# is done (results.md and figure.png are in $OUT/runs/).
set -uo pipefail

MINUTES=${MINUTES:-6}  # + up to ~2 minutes of speed checks, the bundle and the archive: one 10-minute command
STEP_GRAPHS=${STEP_GRAPHS:-auto}
PRESET=${PRESET:-paper-hopper}
ARCHIVE="benchmarks/logs/${PRESET//-/_}"
OUT=${OUT:-/tmp/gorl_out}
mkdir -p "$OUT"

if [ -f .device/install_bundle.sh ]; then
    bash .device/install_bundle.sh .device/site312.tar.xz || { echo "gpu_paper_runs: the bundle did not install" >&2; exit 1; }
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import torch, jax; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), '| jax', jax.__version__, jax.devices())"

EVAL_LANES=${EVAL_LANES:-auto}
if [ "$STEP_GRAPHS" = auto ] || [ "$EVAL_LANES" = auto ]; then
    timeout 300 python -m pytest -q -p no:cacheprovider tests/test_cuda.py -rA \
        -k "replayed_from_cuda_graphs or lane_evaluations" > "$OUT/speed_check.log" 2>&1
    passed() { grep -q "^PASSED.*$1" "$OUT/speed_check.log" && ! grep -q "^FAILED.*$1" "$OUT/speed_check.log"; }
    if [ "$STEP_GRAPHS" = auto ]; then
        passed replayed_from_cuda_graphs && STEP_GRAPHS=true || STEP_GRAPHS=false
    fi
    if [ "$EVAL_LANES" = auto ]; then
        if passed lane_evaluations; then
            [ "$PRESET" = paper-hopper-wide ] && EVAL_LANES=3 || EVAL_LANES=1
        else
            EVAL_LANES=0
        fi
    fi
    echo "gpu_paper_runs: speed check: $(tail -1 "$OUT/speed_check.log") -> step_graphs $STEP_GRAPHS, eval_lanes $EVAL_LANES"
fi
extra=()
[ "$STEP_GRAPHS" = true ] && extra+=(--model.speed.step_graphs true)
[ "$EVAL_LANES" != 0 ] && [ "$EVAL_LANES" != false ] && extra+=(--model.loop.eval_lanes "$EVAL_LANES")
[ ${#extra[@]} -gt 0 ] && extra=(--override "${extra[@]}")

start=$(date +%s)
python benchmarks/learning.py "$PRESET" --stop-after "$MINUTES" --stop-grace 60 "${extra[@]}" 2>&1 | tee "$OUT/bench.log"
rc=${PIPESTATUS[0]}
echo "gpu_paper_runs: $PRESET exited $rc after $(( $(date +%s) - start )) s" | tee -a "$OUT/bench.log"

mkdir -p "$OUT/$ARCHIVE"
cp -r "$ARCHIVE"/. "$OUT/$ARCHIVE"/ 2>/dev/null || true
runs="runs/${PRESET//-/_}"
for f in results.md results.json figure.png status.md; do
    [ -f "$runs/$f" ] && mkdir -p "$OUT/$runs" && cp "$runs/$f" "$OUT/$runs/"
done
exit "$rc"
