#!/usr/bin/env bash
# One device command's share of the paper-scale matrix: GoRL-FM, Gaussian PPO and GoRL-diffusion on
# HopperStand at the authors' full plan (180M encoder-phase frames), MJX on CUDA, seed 0 of each first
# (python benchmarks/learning.py paper-hopper; the "wide" preset with PRESET=paper-hopper-wide).
#
# Run on the GPU machine from the repository root, with the dependency bundle carried along
# (.device/site312.tar.xz and .device/install_bundle.sh: the packages that machine lacks, unpacked
# onto its Python path), as one command of at most 10 minutes:
#
#     bash benchmarks/gpu_paper_runs.sh            # everything within TOTAL=570 s, then a clean stop
#
# Time: the whole command, checks and packing included, keeps within TOTAL seconds. Training gets
# what is left after the checks, less RESERVE seconds for the running fit's checkpoint (STOP_GRACE),
# the archive and the packing.
#
# Speed settings that change no maths, each switched on only if its GPU tests pass here first
# (tests/test_cuda.py, ~1 minute together; speed_check.log):
# - STEP_GRAPHS=auto (default): every optimiser step a replayed CUDA graph (model.speed.step_graphs,
#   gorl/step_graphs.py);
# - EVAL_LANES=auto (default): the evaluations after updates in side lanes of the training batch
#   (loop.eval_lanes, gorl/eval_lanes.py: as many fresh episodes, other seeds, recorded some updates
#   later; each stage's first and last evaluations stay on the evaluation env), 1 group at the
#   authors' shape, 3 at the wide one.
# true / a number / false / 0 skip the check. The first command's choice is kept in the archive
# (speed.env) and reused by the next ones, which then skip the check; a run may still change them
# between commands (gorl bench leaves them out of a run's identity).
#
# What comes back: it continues whatever benchmarks/logs/<preset>/ holds (runs resume from their
# archived checkpoints), stops the running fit cleanly before the time is up, archives every run's
# state there, with this command's logs under device_commands/<UTC time>/, and packs that archive
# into $OUT as <preset>.json + <preset>.tgz.<k> (benchmarks/device_files.py: the device returns at
# most 8 files, 16 MiB each, 2 folders down), also when something fails. Here, after the call:
#
#     python benchmarks/device_files.py unpack <files_at>/paper_hopper.* --into benchmarks/logs
#     git add benchmarks/logs/paper_hopper && git commit
#
# and the next command, on any machine, continues from there. Exit code 3: runs are unfinished
# (expected); 0: the matrix is done (results.md and figure.png are in the archive); 4: no time was
# left to train; anything else: a failure, said in bench.log (the archive still comes back).
set -uo pipefail

T0=$(date +%s)
TOTAL=${TOTAL:-570}
STOP_GRACE=${STOP_GRACE:-60}
RESERVE=${RESERVE:-$((STOP_GRACE + 45))}
PRESET=${PRESET:-paper-hopper}
NAME=${PRESET//-/_}
ARCHIVE=${ARCHIVE:-benchmarks/logs/$NAME}
OUT=${OUT:-/tmp/gorl_out}
STAMP=$(date -u +%Y-%m-%dT%H%MZ)
LOGS="$ARCHIVE/device_commands/$STAMP"
mkdir -p "$OUT" "$LOGS"
elapsed() { echo $(( $(date +%s) - T0 )); }

pack() {
    rc=$?
    trap - EXIT
    echo "gpu_paper_runs: exit $rc after $(elapsed) s; packing $ARCHIVE into $OUT" | tee -a "$LOGS/bench.log"
    [ -f "$ARCHIVE/status.md" ] && cp "$ARCHIVE/status.md" "$OUT/status.md"
    python3 benchmarks/device_files.py pack "$ARCHIVE" "$OUT" --name "$NAME" --max-parts 6 || { [ "$rc" -eq 0 ] && rc=1; }
    exit "$rc"
}
trap pack EXIT

if [ -f .device/install_bundle.sh ]; then
    bash .device/install_bundle.sh .device/site312.tar.xz || { echo "gpu_paper_runs: the bundle did not install" >&2; exit 1; }
fi
# Everything a run imports, before any time is spent: a missing bundle is one line, now.
python3 -c "import torch, torchrl, tensordict, lightning, jax, mujoco, mujoco_playground, gorl" \
    || { echo "gpu_paper_runs: the project's dependencies do not import here (carry .device with the bundle: site312.tar.xz and install_bundle.sh)" | tee -a "$LOGS/bench.log" >&2; exit 1; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi here"
  python3 -c "import torch, jax; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), '| jax', jax.__version__, jax.devices())"
  git rev-parse HEAD 2>/dev/null || true; } | tee "$LOGS/machine.txt"

STEP_GRAPHS=${STEP_GRAPHS:-auto}
EVAL_LANES=${EVAL_LANES:-auto}
if [ -f "$ARCHIVE/speed.env" ]; then  # the first command's choice: the same for every command after it
    while IFS='=' read -r key value; do
        [ "$key" = STEP_GRAPHS ] && [ "$STEP_GRAPHS" = auto ] && STEP_GRAPHS=$value
        [ "$key" = EVAL_LANES ] && [ "$EVAL_LANES" = auto ] && EVAL_LANES=$value
    done < "$ARCHIVE/speed.env"
fi
if [ "$STEP_GRAPHS" = auto ] || [ "$EVAL_LANES" = auto ]; then
    timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py -rA \
        -k "replayed_from_cuda_graphs or lane_evaluations" > "$LOGS/speed_check.log" 2>&1
    passed() { grep -q "^PASSED.*$1" "$LOGS/speed_check.log" && ! grep -q "^FAILED.*$1" "$LOGS/speed_check.log"; }
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
    printf 'STEP_GRAPHS=%s\nEVAL_LANES=%s\n' "$STEP_GRAPHS" "$EVAL_LANES" > "$ARCHIVE/speed.env"
    echo "gpu_paper_runs: speed check: $(tail -1 "$LOGS/speed_check.log") -> step_graphs $STEP_GRAPHS, eval_lanes $EVAL_LANES ($(elapsed) s)"
fi
[ "$EVAL_LANES" = true ] && EVAL_LANES=1
[ "$EVAL_LANES" = false ] && EVAL_LANES=0
extra=()
[ "$STEP_GRAPHS" = true ] && extra+=(--model.speed.step_graphs true)
[ "$EVAL_LANES" != 0 ] && extra+=(--model.loop.eval_lanes "$EVAL_LANES")
[ ${#extra[@]} -gt 0 ] && extra=(--override "${extra[@]}")

left=$(( TOTAL - $(elapsed) - RESERVE ))
if [ "$left" -lt 30 ]; then
    echo "gpu_paper_runs: only $left s left for training after the checks; stopping without training" | tee -a "$LOGS/bench.log"
    exit 4
fi
MINUTES=$(python3 -c "print(round($left / 60, 2))")
echo "gpu_paper_runs: training for $MINUTES min (the command's $TOTAL s, $(elapsed) s spent, $RESERVE s kept to stop and pack)" | tee -a "$LOGS/bench.log"
# BENCH_ARGS: further gorl bench arguments (e.g. --out); they win over the preset's.
read -r -a user <<< "${BENCH_ARGS:-}"
python3 benchmarks/learning.py "$PRESET" --archive "$ARCHIVE" --stop-after "$MINUTES" --stop-grace "$STOP_GRACE" "${user[@]}" "${extra[@]}" \
    2>&1 | tee -a "$LOGS/bench.log"
exit "${PIPESTATUS[0]}"
