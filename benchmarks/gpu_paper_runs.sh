#!/usr/bin/env bash
# One device command's share of the paper-scale matrix: GoRL-FM, Gaussian PPO and GoRL-diffusion on
# HopperStand at the authors' full plan (180M encoder-phase frames), MJX on CUDA, seed 0 of each first
# (python benchmarks/learning.py paper-hopper; the "wide" preset with PRESET=paper-hopper-wide).
#
# Run on the GPU machine from the repository root, with the dependency bundle carried along
# (../shared/device/README.md):
#
#     bash benchmarks/gpu_paper_runs.sh            # MINUTES=7 of training, then a clean stop
#
# STEP_GRAPHS=auto (default) first runs the CUDA-graph tests of tests/test_cuda.py (~30 s): if they
# pass, every optimiser step of the runs is a replayed CUDA graph (model.speed.step_graphs: the same
# maths, gorl/step_graphs.py); if not, the runs step eagerly and $OUT/step_graphs_check.log says why.
# STEP_GRAPHS=true / false skips the check. Speed settings are not part of a run's identity, so a run
# may change them between commands.
#
# EVAL_LANES=K (default 0) runs the evaluations after updates in K lane groups of the training batch
# (loop.eval_lanes, gorl/eval_lanes.py): same evaluations, recorded some updates later.
#
# It continues whatever benchmarks/logs/<preset>/ holds (runs resume from their archived
# checkpoints), stops every running fit cleanly after MINUTES (a checkpoint, the closing lines),
# archives each run's state there and copies that archive, with the matrix's log, into $OUT. Copy
# $OUT/benchmarks/logs/<preset>/ back over the repository's and commit it: the next command, on any
# machine, continues from there. Exit code 3 means runs are unfinished (expected), 0 that the matrix
# is done (results.md and figure.png are in $OUT/runs/).
set -uo pipefail

MINUTES=${MINUTES:-7}
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

if [ "$STEP_GRAPHS" = auto ]; then
    if timeout 240 python -m pytest -q -p no:cacheprovider tests/test_cuda.py -k "replayed_from_cuda_graphs" > "$OUT/step_graphs_check.log" 2>&1; then
        STEP_GRAPHS=true
    else
        STEP_GRAPHS=false
    fi
    echo "gpu_paper_runs: CUDA-graph check: $(tail -1 "$OUT/step_graphs_check.log") -> step_graphs $STEP_GRAPHS"
fi
EVAL_LANES=${EVAL_LANES:-0}
extra=()
[ "$STEP_GRAPHS" = true ] && extra+=(--model.speed.step_graphs true)
[ "$EVAL_LANES" != 0 ] && extra+=(--model.loop.eval_lanes "$EVAL_LANES")
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
