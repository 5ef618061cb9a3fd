#!/usr/bin/env bash
# One device command's share of the paper-scale matrix: GoRL-FM, Gaussian PPO and GoRL-diffusion on
# HopperStand at the authors' full plan (180M encoder-phase frames), MJX on CUDA, seed 0 of each first
# (python benchmarks/learning.py paper-hopper; the "wide" preset with PRESET=paper-hopper-wide).
#
# Run on the GPU machine from the repository root, with the dependency bundle carried along
# (../shared/device/README.md):
#
#     bash benchmarks/gpu_paper_runs.sh            # MINUTES=7.5 of training, then a clean stop
#
# It continues whatever benchmarks/logs/<preset>/ holds (runs resume from their archived
# checkpoints), stops every running fit cleanly after MINUTES (a checkpoint, the closing lines),
# archives each run's state there and copies that archive, with the matrix's log, into $OUT. Copy
# $OUT/benchmarks/logs/<preset>/ back over the repository's and commit it: the next command, on any
# machine, continues from there. Exit code 3 means runs are unfinished (expected), 0 that the matrix
# is done (results.md and figure.png are in $OUT/runs/).
set -uo pipefail

MINUTES=${MINUTES:-7.5}
PRESET=${PRESET:-paper-hopper}
ARCHIVE="benchmarks/logs/${PRESET//-/_}"
OUT=${OUT:-/tmp/gorl_out}
mkdir -p "$OUT"

if [ -f .device/install_bundle.sh ]; then
    bash .device/install_bundle.sh .device/site312.tar.xz || { echo "gpu_paper_runs: the bundle did not install" >&2; exit 1; }
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import torch, jax; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), '| jax', jax.__version__, jax.devices())"

start=$(date +%s)
python benchmarks/learning.py "$PRESET" --stop-after "$MINUTES" --stop-grace 60 2>&1 | tee "$OUT/bench.log"
rc=${PIPESTATUS[0]}
echo "gpu_paper_runs: $PRESET exited $rc after $(( $(date +%s) - start )) s" | tee -a "$OUT/bench.log"

mkdir -p "$OUT/$ARCHIVE"
cp -r "$ARCHIVE"/. "$OUT/$ARCHIVE"/ 2>/dev/null || true
runs="runs/${PRESET//-/_}"
for f in results.md results.json figure.png status.md; do
    [ -f "$runs/$f" ] && mkdir -p "$OUT/$runs" && cp "$runs/$f" "$OUT/$runs/"
done
exit "$rc"
