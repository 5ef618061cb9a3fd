"""The device check for a lent GPU machine: one command, one results file written as it goes.

    python benchmarks/gpu_check.py --out DIR            # the GPU machine: <= 7 minutes (steps in budget order)
    python benchmarks/gpu_check.py --out DIR --budget 560 --lean   # every step: ~9 minutes
    python benchmarks/gpu_check.py --quick --out DIR    # a CPU dry run of every step, tiny sizes

It uses the machine's own torch and JAX and installs nothing. Each step runs with its own time
limit inside an overall budget (``--budget``); a step that fails or would not fit is written down
as such and the rest still run. ``DIR/gpu_check.md`` is the results page (partial results survive a
kill), ``DIR/logs.tar.gz`` every run's raw log and ``metrics.csv``.

Steps (run in the order ``--order`` gives; by default 1, 5, 2, 4, 6, 3: step 5 first after the tests,
because no call has timed it yet):

1. the CUDA tests (``tests/test_cuda.py``, ``tests/test_device_paths.py``);
2. the paper-shaped HopperStand GoRL-FM loop on MJX on the GPU at the authors' shape (2,048 envs x
   16 unrolls of 30 steps per 983,040-frame update): a real ``gorl fit`` of a short plan (stage 0 and
   stage 1 with a short refit between them), read from its ``metrics.csv``: loop and collection
   frames/s per stage (stage 0 acts through the identity, later stages through the 10-step flow
   decoder), the update's time, and the time of one evaluation of 128 episodes of 1,000 steps;
3. the same at the many-env shape (16,384 envs x 2 unrolls, ``conf/recipes/paper_gpu_wide.yaml``),
   with the evaluations after updates in side lanes of the batch (``--eval-lanes``,
   ``loop.eval_lanes``) and the phase-end wait for them timed;
4. the acting chain per env step, eager and from a CUDA graph; one PPO update at the authors' shape,
   eager, with ``model.speed.step_graphs`` and with ``model.speed.compile``; decoder refits at the
   authors' batch (8,192 pairs x 8 draws), the real ``DecoderFit`` with its validations, for the
   recipes' flow (GoRL-FM) and diffusion (GoRL-diffusion, with the pairwise term) decoders, in
   float32, float32 with step graphs, TF32, bf16 autocast and compiled float32: Adam steps/s;

Steps 2, 3 and 5 train with ``model.speed.step_graphs: true`` (``--eager-steps``: without).
5. dm_control with 15 worker processes (16 shards of 128 envs) and CUDA networks: frames/s;
6. DDP: the smoke plan in 2 processes sharing the one GPU (gloo), every rank's weights identical;
7. the projected 180M-frame plan time per shape from the rates above, each phase shown.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PLAN = [60e6, 60e6, 30e6, 30e6]  # the authors' encoder frames per stage
EVALS = 10 * len(PLAN) + len(PLAN) - 1  # 10 per stage, plus each later stage's initial evaluation
SYNC_EVALS = 2 * len(PLAN)  # with loop.eval_lanes: each stage's first and last evaluations stay their own
REFITS = len(PLAN) - 1
REFIT_FRAMES = 4_096_000  # 4,096 episodes of 1,000 steps of decoder data per refit
# The authors' refit lengths (bennidict23/GoRL@8a0209c): configs/methods/gorl_fm.toml, train_steps = 50000;
# configs/methods/gorl_diffusion.toml, 50 epochs of batches of 8192 over ~3.7M training pairs.
FLOW_STEPS, DIFFUSION_STEPS = 50_000, 22_500


class Report:
    """The results page, rewritten after every line so a kill leaves what was measured."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.lines: list[str] = []
        self.logs: dict[str, str] = {}
        self.data: dict[str, object] = {}

    def say(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)
        (self.out / "gpu_check.md").write_text("\n".join(self.lines) + "\n")
        (self.out / "gpu_check.json").write_text(json.dumps(self.data, indent=1, default=str))

    def keep(self, name: str, text: str) -> None:
        self.logs[name] = text
        with tarfile.open(self.out / "logs.tar.gz", "w:gz") as tar:
            for key, value in self.logs.items():
                raw = value.encode()
                info = tarfile.TarInfo(key)
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))


class StepTimeUp(BaseException):
    """A step's time share is spent. Not an ``Exception``: the measurements catch those to report a
    failure and go on (as does ``CompiledFn``'s fallback to eager), and must not swallow this."""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}


def _run(cmd: list[str], cwd: Path, timeout: float, extra_env: dict | None = None) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, cwd=cwd, env={**_env(), **(extra_env or {})}, capture_output=True, text=True, timeout=timeout)
        code, text = res.returncode, res.stdout + res.stderr
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        code, text = 124, out + f"\n[gpu_check] killed after {timeout:.0f} s"
    return code, text, time.perf_counter() - t0


def _rows(run_dir: Path) -> list[dict]:
    paths = sorted(run_dir.glob("runs/gorl/version_*/metrics.csv"))
    return list(csv.DictReader(paths[-1].open())) if paths else []


def _num(row: dict, key: str) -> float | None:
    value = row.get(key, "")
    return float(value) if value not in ("", None) else None


# --- 2, 3, 5: real gorl fit runs -------------------------------------------------------------
def fit_rates(report: Report, name: str, configs: list[str], overrides: list[str], timeout: float) -> dict | None:
    """A short real run; per stage: median loop / collection frames/s over the updates after the
    stage's first (compiles and graph captures), the update's seconds, evaluation seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        args = [sys.executable, "-m", "gorl", "fit"]
        for c in configs:
            args += ["--config", str(ROOT / c)]
        args += ["--trainer.enable_progress_bar", "false", "--curves", "false", "--checkpoint.every_minutes", "null", *overrides]
        code, text, secs = _run(args, Path(tmp), timeout)
        rows = _rows(Path(tmp))
        report.keep(f"{name}.log", text)
        if rows:
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=list(rows[0].keys()))
            writer.writeheader()
            writer.writerows(rows)
            report.keep(f"{name}.metrics.csv", buf.getvalue())
    if code != 0:
        tail = " | ".join(text.strip().splitlines()[-6:])
        report.say(f"- **{name}: FAILED** (exit {code}, {secs:.0f} s): `{tail[-900:]}`")
        return None
    result: dict = {"wall_s": secs, "stages": {}}
    for stage in sorted({_num(r, "loop/stage") for r in rows if _num(r, "perf/fps") is not None}):
        ups = [r for r in rows if _num(r, "perf/fps") is not None and _num(r, "loop/stage") == stage]
        warm = ups[1:] or ups
        loop = statistics.median(_num(r, "perf/fps") for r in warm)
        collect = statistics.median(_num(r, "perf/collect_fps") for r in warm)
        evals = [_num(r, "perf/eval_seconds") for r in rows if _num(r, "perf/eval_seconds") is not None and _num(r, "loop/stage") == stage]
        result["stages"][int(stage)] = {"loop_fps": loop, "collect_fps": collect, "first_loop_fps": _num(ups[0], "perf/fps"),
                                         "updates": len(ups), "eval_s": evals}
    result["drain_s"] = [_num(r, "perf/eval_lanes_drain_seconds") for r in rows if _num(r, "perf/eval_lanes_drain_seconds") is not None]
    if result["drain_s"]:
        report.say(f"- {name}: lane evaluations finished at the phase ends in {', '.join(f'{d:.1f} s' for d in result['drain_s'])}")
    fits = [_num(r, "perf/fit_seconds") for r in rows if _num(r, "perf/fit_seconds") is not None]
    result["fit_seconds"] = fits
    # The refit's data: env frames collected from reset (loop/collect_frames), and its fit's steps.
    result["collect_frames"] = max((_num(r, "loop/collect_frames") or 0.0 for r in rows), default=0.0)
    result["refit_steps"] = max((_num(r, "decoder/step") or 0.0 for r in rows), default=0.0)
    final = re.findall(r"final eval/return (\S+)", text)
    result["final_return"] = final[-1] if final else None
    report.data[name] = result
    for stage, s in result["stages"].items():
        evals = ", ".join(f"{e:.1f}" for e in s["eval_s"]) or "none"
        report.say(f"- {name}, stage {stage} ({s['updates']} updates): loop **{s['loop_fps']:,.0f}** frames/s, collection "
                   f"{s['collect_fps']:,.0f} frames/s (first update, compiles included: {s['first_loop_fps']:,.0f}); "
                   f"evaluations of the eval batch: {evals} s")
    report.say(f"- {name}: whole command {secs:.0f} s; refit(s) incl. data collection: {', '.join(f'{f:.1f} s' for f in fits) or 'none'}")
    for line in text.splitlines():  # a speed setting that could not apply says so once in the log
        if "Warning: [gorl]" in line and ("are off for this run" in line or "step_graphs" in line):
            report.say(f"  - `{line.strip()[:300]}`")
    return result


# --- 4: decoder refits ---------------------------------------------------------------------------
def _recipe(config: str) -> dict:
    from gorl.cli import main

    buf = io.StringIO()
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when given args beside a command line
    try:
        with redirect_stdout(buf):
            main(["fit", "--config", str(ROOT / config), "--print_config"])
    except SystemExit:
        pass
    finally:
        sys.argv = argv
    import yaml

    return yaml.safe_load(buf.getvalue())["model"]


def refit_rates(report: Report, quick: bool) -> dict:
    import importlib

    import torch
    from tensordict import TensorDict

    from gorl.refinement import DecoderFit, RefinementConfig
    from gorl.step_graphs import StepGraphs

    device = "cuda" if torch.cuda.is_available() else "cpu"
    obs_dim, act_dim = 15, 4  # hopper-stand
    out: dict = {}
    for label, config in (("flow (GoRL-FM)", "conf/hopper_fm.yaml"), ("diffusion (GoRL-diffusion)", "conf/hopper.yaml")):
        model = _recipe(config)
        module, _, cls = model["decoder"]["class_path"].rpartition(".")
        make = getattr(importlib.import_module(module), cls)
        ref = {k: v for k, v in model["refinement"].items()}
        if quick:
            ref.update(batch_size=256, val_samples=1024)
        n = 40_000 if quick else 400_000
        g = torch.Generator().manual_seed(0)
        data = TensorDict({"observation": torch.randn(n, obs_dim, generator=g), "action": torch.randn(n, act_dim, generator=g).clamp(-3, 3),
                           "latent": torch.randn(n, act_dim, generator=g)}, [n]).to(device)
        cfg = RefinementConfig(**{**ref, "steps": 10_000, "epochs": None, "val_every": 100 if not quick else 10})
        for precision in ("fp32", "fp32 step graphs", "tf32", "bf16", "fp32 compiled"):
            torch.manual_seed(0)
            decoder = make(obs_dim, act_dim, **model["decoder"]["init_args"]).to(device)
            decoder.fit_obs_statistics(data["observation"])
            if precision == "fp32 compiled":  # model.speed.compile (the warm-up round below compiles)
                decoder.compile_loss()
            opt = torch.optim.Adam(decoder.parameters(), lr=decoder.lr, fused=True)

            def optimize(loss, decoder=decoder, opt=opt):
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(decoder.parameters(), 1e9, foreach=True)  # the norm pass a real step makes
                opt.step()

            graphs = None
            if precision == "fp32 step graphs":  # model.speed.step_graphs (the warm-up round below captures)
                graphs = StepGraphs(opt, "decoder refit steps", mode="cuda" if device == "cuda" else "emulate")
            torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
            fit = DecoderFit(cfg, data[: int(0.9 * n)], data[int(0.9 * n):])
            auto = torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16")
            try:
                with auto:
                    fit.step(decoder, optimize, graphs=graphs)  # warm-up round (cuBLAS, fused Adam, first validation, capture)
                    if device == "cuda":
                        torch.cuda.synchronize()
                    t0, s0 = time.perf_counter(), fit.steps
                    for _ in range(2 if quick else 5):
                        fit.step(decoder, optimize, graphs=graphs)
                    if device == "cuda":
                        torch.cuda.synchronize()
                rate = (fit.steps - s0) / (time.perf_counter() - t0)
                if graphs is not None and not graphs.enabled:
                    report.say(f"- refit {label}, {precision}: the capture FAILED and it ran eagerly (see the log)")
                    continue
                if precision == "fp32 compiled" and not decoder._compiled_loss.enabled:
                    report.say(f"- refit {label}, {precision}: the compile FAILED and it ran eagerly (see the log)")
                    continue
                out[(label, precision)] = rate
                total = FLOW_STEPS if "flow" in label else DIFFUSION_STEPS
                report.say(f"- refit {label}, {precision}: **{rate:,.0f}** Adam steps/s at batch {cfg.batch_size:,} x "
                           f"{decoder.hparams.get('draws', '?')} draws, validation every {cfg.val_every} steps included "
                           f"-> {total:,} steps in {total / rate:.0f} s")
            except Exception as err:  # noqa: BLE001
                report.say(f"- refit {label}, {precision}: FAILED: {type(err).__name__}: {err}"[:600])
    torch.set_float32_matmul_precision("highest")
    report.data["refit"] = {f"{k[0]} {k[1]}": v for k, v in out.items()}
    return out


def acting_rates(report: Report, quick: bool) -> None:
    """The acting chain (encoder 4x32 -> 10-step flow decoder 4x64 -> tanh) per batched env step,
    eager against replayed from a CUDA graph, at the two shapes' batch sizes."""
    import torch

    from gorl.acceleration import GraphedChain
    from gorl.decoders import FlowDecoder
    from gorl.encoders import EncoderModule
    from gorl.networks import ActionSquash
    from gorl.policy import LatentPolicy

    device = "cuda" if torch.cuda.is_available() else "cpu"
    enc = EncoderModule(15, 4).to(device)
    dec = FlowDecoder(15, 4, hidden=[64] * 4).to(device)
    with torch.no_grad():
        for p in dec.parameters():
            p.normal_(0, 0.1)  # a decoder that is not the identity, as after a refit
    squash = ActionSquash(-torch.ones(4), torch.ones(4)).to(device)
    policy = LatentPolicy(enc.act, dec.decode, squash)
    graphed = GraphedChain(policy.chain, lambda: ())
    for batch in ((64, 256) if quick else (2048, 16384)):
        obs = torch.randn(batch, 15, device=device)
        times = {}
        with torch.no_grad():
            for label, fn in (("eager", policy.chain), ("CUDA graph", graphed)):
                for _ in range(5):
                    fn(obs, False)
                if device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(50):
                    fn(obs, False)
                if device == "cuda":
                    torch.cuda.synchronize()
                times[label] = (time.perf_counter() - t0) / 50 * 1e3
        report.say(f"- acting chain at {batch:,} envs: eager {times['eager']:.2f} ms, CUDA graph {times['CUDA graph']:.2f} ms per env step"
                   + ("" if device == "cuda" else " (CPU: the graph path is eager)"))
        report.data[f"acting {batch}"] = times


def ppo_rates(report: Report, quick: bool) -> None:
    """One PPO update at the authors' shape (983,040 frames, 16 epochs x 32 minibatches of 30,720,
    GAE per minibatch, 4x32 actor, 5x256 critic): eager, with ``model.speed.compile`` (the fused
    loss under torch.compile, ``reduce-overhead`` on a GPU; the compile itself is timed apart), and
    with ``model.speed.step_graphs`` (every minibatch step one replayed CUDA graph; on a CPU the
    emulated graph, which times nothing useful)."""
    import torch
    from ppo_update import plain_optimize, rollout  # benchmarks/ppo_update.py: the same update outside Lightning

    from gorl.encoders import EncoderModule
    from gorl.step_graphs import StepGraphs

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows, mb = (64, 960) if quick else (32_768, 30_720)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times = {}
    for label in ("eager", "step graphs", "compiled"):
        torch.manual_seed(0)
        enc = EncoderModule(15, 4, gae="minibatch", minibatch_size=mb, epochs=16, unroll=30, prior_reg="l2").to(device)
        batch = rollout(rows, device, enc)
        optimize = plain_optimize(enc)
        if label == "compiled":
            enc.compile_loss()
        if label == "step graphs":
            enc.use_step_graphs(StepGraphs(optimize.optimizer, "PPO minibatch steps", mode="cuda" if device == "cuda" else "emulate"))
        sync()
        t0 = time.perf_counter()
        enc.train_on(batch.clone(), optimize, 0)  # the first update: warm-up, and for "compiled" the compile
        sync()
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        enc.train_on(batch.clone(), optimize, 0)
        sync()
        times[label] = time.perf_counter() - t0
        fell_back = (label == "compiled" and not enc._compiled_terms.enabled) or (label == "step graphs" and not enc._step_graphs.enabled)
        report.say(f"- PPO update, {rows * 30:,} frames, {label}: **{times[label]:.2f} s** (first update {first:.1f} s)"
                   + (" - the compile or capture FAILED and it ran eagerly (see the log)" if fell_back else ""))
    report.data["ppo update"] = times


# --- 7: the projection -------------------------------------------------------------------------
def project(report: Report, name: str, run: dict | None, refits: dict, startup_s: float) -> None:
    if not run or 0 not in run["stages"] or 1 not in run["stages"]:
        report.say(f"- {name}: no projection (the loop run did not finish both stages)")
        return
    s0, s1 = run["stages"][0], run["stages"][1]
    evals = [e for s in (s0, s1) for e in s["eval_s"][1:]] or [e for s in (s0, s1) for e in s["eval_s"]]
    eval_s = statistics.median(evals) if evals else float("nan")
    rates = {p: refits[("flow (GoRL-FM)", p)] for p in ("fp32", "fp32 step graphs") if ("flow (GoRL-FM)", p) in refits}
    kind = max(rates, key=rates.get) if rates else "fp32"
    flow = rates.get(kind)
    rows = [
        ("stage 0 encoder phase, 60M frames (identity decoder)", PLAN[0] / s0["loop_fps"]),
        ("stages 1-3 encoder phases, 120M frames (flow decoder)", sum(PLAN[1:]) / s1["loop_fps"]),
        *([(f"{SYNC_EVALS} evaluations of their own x 128 episodes ({eval_s:.1f} s each); the other {EVALS - SYNC_EVALS} in the "
             f"batch's side lanes (in the loop rates above)", SYNC_EVALS * eval_s),
           (f"{len(PLAN)} phase-end waits for lane evaluations (at most one evaluation each)", len(PLAN) * eval_s)]
          if run.get("lanes") else [(f"{EVALS} evaluations x 128 episodes ({eval_s:.1f} s each)", EVALS * eval_s)]),
        (f"{REFITS} refits x {FLOW_STEPS:,} flow steps ({kind})", REFITS * FLOW_STEPS / flow if flow else float("nan")),
        data_row(run, flow),
        ("start-up and compiles (this check's first update, measured)", startup_s),
    ]
    total = sum(t for _, t in rows)
    target = TARGET_MIN.get(name)
    verdict = "" if target is None else f" (target <= {target} min: {'within' if total / 60 <= target else 'OVER'})"
    report.say(f"\n**{name}: projected GoRL-FM HopperStand plan (180M frames): {total / 60:.1f} min**{verdict}\n")
    report.say("| phase | projected |\n|---|---|")
    for label, t in rows:
        report.say(f"| {label} | {t / 60:.2f} min |")
    report.data[f"projection {name}"] = {label: t for label, t in rows} | {"total_s": total}


# The targets for one whole run (GoRL-FM HopperStand, 180M frames) on one H200.
TARGET_MIN = {"mjx_2048x16": 15, "mjx_16384x2": 8}


def data_row(run: dict, flow_rate: float | None) -> tuple[str, float]:
    """The refits' data collection, from this check's own refit where it can be read off: its
    seconds less its fit steps', per env frame collected from reset (the path a run takes: its
    own env of ``collect_envs`` copies, compiles included), scaled to 4,096 episodes. Else from the
    training collection rate, which leaves out the reset path's own cost."""
    fits, frames, steps = run.get("fit_seconds") or [], run.get("collect_frames") or 0.0, run.get("refit_steps") or 0.0
    if fits and frames > 0 and flow_rate:
        collect_s = max(0.0, fits[0] - steps / flow_rate)
        return (f"{REFITS} x {REFIT_FRAMES:,} frames of decoder data (this check's refit: {frames:,.0f} frames from reset in "
                f"{collect_s:.1f} s, compiles included)", REFITS * REFIT_FRAMES * collect_s / frames)
    s0, s1 = run["stages"][0], run["stages"][1]
    return (f"{REFITS} x {REFIT_FRAMES:,} frames of decoder data (at the training collection rate)",
            REFIT_FRAMES / s0["collect_fps"] + (REFITS - 1) * REFIT_FRAMES / s1["collect_fps"])


def _startup(run: dict | None, frames_per_update: int) -> float:
    """Seconds the first update took beyond a warm one (compiles, graph captures, process start)."""
    if not run or 0 not in run["stages"]:
        return float("nan")
    s0 = run["stages"][0]
    return frames_per_update / s0["first_loop_fps"] - frames_per_update / s0["loop_fps"] + 10.0  # + process start and imports (~10 s)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes: a dry run of every step (on a CPU, too)")
    p.add_argument("--out", default="gpu_check", help="folder for gpu_check.md, gpu_check.json and logs.tar.gz")
    p.add_argument("--budget", type=float, default=420.0, help="seconds for the whole check (steps that would not fit are skipped)")
    p.add_argument("--skip", nargs="*", default=[], help="step numbers to leave out (e.g. 5 6)")
    # Essentials first: the CUDA tests (1), the authors' shape (2) and the refits (4) make the
    # projection; then DDP (6), the many-env shape (3) and dm_control (5) get what is left. On an
    # H200 (2026-12-04, RESULTS.md §0) steps 1, 2, 4 and 6 took ~72, ~190, ~40 and ~37 s (step 1 has
    # more tests since). A complete pass takes about 9-10 minutes: --budget 560 in one 10-minute
    # command, or two calls (the second with --order 3 5 --skip 1).
    p.add_argument("--order", nargs="*", default=["1", "2", "4", "6", "3", "5"], help="the order of steps 1-6 (7 always ends the check)")
    p.add_argument("--tests", nargs="*", default=["tests/test_cuda.py"],
                   help="step 1's test files (tests/test_device_paths.py runs in the CPU suite; add it here to run it on the GPU too)")
    p.add_argument("--lean", action="store_true",
                   help="steps 2-3 evaluate (200 steps) and collect refit data (100-step episodes) on the training batch's shape: "
                        "no extra MJX compiles; their evaluation times are then not those of 128 episodes of 1,000 steps")
    p.add_argument("--eval-lanes", type=int, default=3,
                   help="step 3 runs its evaluations after updates in this many lane groups of the training batch "
                        "(loop.eval_lanes; 0 = evaluations of their own; not with --lean)")
    p.add_argument("--eager-steps", action="store_true",
                   help="steps 2, 3 and 5 without model.speed.step_graphs (by default their gorl fit runs take every optimiser "
                        "step as a replayed CUDA graph)")
    p.add_argument("--step4-seconds", type=float, default=None,
                   help="step 4's share of the budget (default: what is left less 30 s, at most 180 s)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out)
    start = time.perf_counter()
    left = lambda: args.budget - (time.perf_counter() - start)  # noqa: E731

    import torch

    cuda = torch.cuda.is_available()
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("lightning", "torchrl", "tensordict", "jax", "jax-cuda13-plugin", "mujoco", "mujoco-mjx", "playground", "warp-lang"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = "absent"
    # The device machine gets the working tree without .git: the command passes the commit in GORL_COMMIT.
    commit = os.environ.get("GORL_COMMIT") or subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                                             text=True).stdout.strip() or "unknown"
    report.data["versions"] = versions
    report.say(f"# gpu_check, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {commit}")
    report.say(f"\n{torch.cuda.get_device_name() if cuda else 'no CUDA (a CPU dry run)'}; {os.cpu_count()} cores; quick={args.quick}; "
               + ", ".join(f"{k} {v}" for k, v in versions.items()) + "\n")

    accelerator = "cuda" if cuda else "cpu"
    env_device = "cuda" if cuda else "cpu"
    graphed = [] if args.eager_steps else ["--model.speed.step_graphs", "true"]
    report.say(f"Training runs (steps 2, 3, 5): {'eager optimiser steps' if args.eager_steps else 'model.speed.step_graphs: true'}.\n")
    q = args.quick
    # Short plans: stage 0 of 3 updates, a short refit, stage 1 of 2 updates.
    def plan(envs: int, rollouts: int, eval_envs: int, updates0: int) -> tuple[list[str], int]:
        unroll = 30
        frames = envs * unroll * rollouts
        over = ["--trainer.accelerator", accelerator, "--model.env.device", env_device,
                "--model.env.num_envs", str(envs), "--model.encoder.rollouts_per_update", str(rollouts),
                "--model.loop.stages", f"[{updates0 * frames}, {2 * frames}]", "--model.loop.evals_per_stage", "null",
                "--model.loop.eval_every", str(10 * frames), "--model.env.eval_envs", str(eval_envs),
                "--model.refinement.episodes", "null", "--model.refinement.transitions", str(2 * envs * unroll),
                "--model.refinement.steps", "20" if q else "300", "--model.refinement.val_every", "10" if q else "100",
                "--checkpoint.every_frames", "1e12", *graphed]
        if q:
            over += ["--model.encoder.minibatch_size", str(unroll * max(1, envs * rollouts // 32)), "--model.encoder.epochs", "2",
                     "--model.refinement.collect_envs", "4", "--model.refinement.max_episode_steps", "50",
                     "--model.loop.eval_max_steps", "50", "--model.refinement.batch_size", "256", "--model.refinement.val_samples", "1024"]
        return over, frames

    gpu = ["conf/hopper_fm.yaml", "conf/recipes/paper_gpu.yaml", "conf/recipes/paper_gpu_mjx.yaml"]
    runs: dict[str, dict | None] = {}
    frames_of: dict[str, int] = {}

    refits: dict = {}

    def step_1() -> None:  # CUDA tests
        if "1" not in args.skip:
            report.say("\n## 1. CUDA tests\n")
            # -v: a line per test as it ends, so a test run cut by its time share still says which passed.
            code, text, secs = _run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", *args.tests],
                                    ROOT, min(200, left() - 60))
            report.keep("cuda_tests.log", text)
            summary = [line for line in text.strip().splitlines() if re.search(r"\d+ (passed|failed|skipped)", line)]
            ended = re.findall(r"::\S+ (PASSED|FAILED|SKIPPED|ERROR)", text)
            tally = ", ".join(f"{ended.count(k)} {k.lower()}" for k in ("PASSED", "FAILED", "ERROR", "SKIPPED") if ended.count(k))
            said = summary[-1] if summary else "cut short after " + (tally or "no test")
            report.say(f"- exit {code} in {secs:.0f} s: {said}")
            for line in text.splitlines():
                if line.startswith(("FAILED", "ERROR")):
                    report.say(f"  - `{line[:300]}`")


    # (envs, unrolls per update, eval envs, stage-0 updates): each stage's first update compiles and
    # captures, the others are timed; the authors' shape gets fewer (each of its updates is ~8 s).
    shapes = {"2": ("2. MJX, the authors' shape (2,048 envs x 16 unrolls)", "mjx_2048x16", (16, 4, 4, 3) if q else (2048, 16, 128, 2), []),
              "3": ("3. MJX, many envs (16,384 envs x 2 unrolls)", "mjx_16384x2", (64, 1, 4, 3) if q else (16384, 2, 128, 3),
                    ["conf/recipes/paper_gpu_wide.yaml"])}

    def step_23(number: str) -> None:  # MJX on the GPU, one shape
        title, name, (envs, rollouts, eval_envs, updates0), extra = shapes[number]
        report.say(f"\n## {title}" + (" (lean: evaluation and refit data on the training shape)" if args.lean else "") + "\n")
        if left() < 60:
            report.say("- skipped: the budget is spent")
            return
        over, frames = plan(envs, rollouts, eval_envs, updates0)
        if args.lean and not q:
            over += ["--model.env.eval_envs", str(envs), "--model.loop.eval_max_steps", "200",
                     "--model.refinement.collect_envs", str(envs), "--model.refinement.max_episode_steps", "100"]
        lanes = number == "3" and args.eval_lanes > 0 and not args.lean
        if lanes:  # two evaluations after updates run in the batch's side lanes, the phase-end drain is timed
            over += ["--model.loop.eval_lanes", str(args.eval_lanes), "--model.loop.evals_per_stage", "4"]
            report.say(f"- with loop.eval_lanes: {args.eval_lanes} (evaluations after updates 1 and 2 of each stage in side lanes)")
        frames_of[name] = frames
        runs[name] = fit_rates(report, name, gpu + extra, over, min(left() - 20, 240))
        if runs[name] is not None:
            runs[name]["lanes"] = lanes

    def step_4() -> None:  # decoder refits
        if "4" not in args.skip:
            report.say("\n## 4. The acting chain, and decoder refits at the authors' batch\n")
            if left() < 40:
                report.say("- skipped: the budget is spent")
            else:
                # In this process, so under an alarm: a compile that takes longer than the step may
                # have (SIGALRM between Python calls) ends the step, not the check.
                import signal

                def _out_of_time(signum, frame):  # noqa: ARG001
                    raise StepTimeUp("step 4's share of the budget is spent")

                signal.signal(signal.SIGALRM, _out_of_time)
                signal.alarm(max(1, int(args.step4_seconds if args.step4_seconds else min(left() - 30, 180))))
                try:
                    step_4_parts()
                except StepTimeUp as err:
                    report.say(f"- stopped: {err} (what it measured is above)")
                finally:
                    signal.alarm(0)

    def step_4_parts() -> None:
        nonlocal refits
        try:
            acting_rates(report, q)
        except Exception as err:  # noqa: BLE001
            report.say(f"- acting chain: FAILED: {type(err).__name__}: {err}"[:600])
        try:
            if left() > 150 or q:
                ppo_rates(report, q)
            else:
                report.say("- PPO update eager vs compiled: skipped, the budget is short")
        except Exception as err:  # noqa: BLE001
            report.say(f"- PPO update: FAILED: {type(err).__name__}: {err}"[:600])
        try:
            refits = refit_rates(report, q)
        except Exception as err:  # noqa: BLE001
            report.say(f"- FAILED: {type(err).__name__}: {err}"[:600])

    def step_5() -> None:  # dm_control, 15 worker processes, CUDA networks
        if "5" not in args.skip:
            report.say("\n## 5. dm_control, 16 shards of 128 envs (15 worker processes + the main one), CUDA networks\n")
            if left() < 70:
                report.say("- skipped: the budget is spent")
            else:
                workers, envs = (2, 8) if q else (16, 128)
                frames = workers * envs * 30 * (2 if q else 16)
                over = ["--trainer.accelerator", accelerator, "--model.env.num_workers", str(workers), "--model.env.num_envs", str(envs),
                        "--model.encoder.rollouts_per_update", "2" if q else "16",
                        "--model.loop.stages", f"[{2 * frames}]", "--model.loop.evals_per_stage", "null", "--model.loop.eval_every", str(10 * frames),
                        "--model.env.eval_envs", "4", "--model.loop.eval_max_steps", "50", "--checkpoint.every_frames", "1e12", *graphed]
                if q:
                    over += ["--model.encoder.minibatch_size", "240", "--model.encoder.epochs", "2"]
                fit_rates(report, "dmc_16x128", ["conf/hopper.yaml", "conf/recipes/paper_gpu.yaml"], over, min(left() - 10, 180))

    def step_6() -> None:  # DDP, two processes on the one GPU
        if "6" not in args.skip:
            report.say("\n## 6. DDP: the smoke plan in 2 processes " + ("sharing the one GPU (gloo)" if cuda else "on the CPU (gloo)") + "\n")
            if left() < 40:
                report.say("- skipped: the budget is spent")
            else:
                code, text, secs = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_ddp.py", "-k", "two_processes"],
                                        ROOT, min(left() - 5, 150), {"GORL_DDP_MODE": "shared-cuda" if cuda else "cpu"})
                report.keep("ddp.log", text)
                verdict = "every rank's weights identical after every phase" if code == 0 else "FAILED"
                report.say(f"- exit {code} in {secs:.0f} s: {verdict}")
                if code != 0:
                    report.say(f"  - `{' | '.join(text.strip().splitlines()[-5:])[-800:]}`")


    steps = {"1": step_1, "2": lambda: step_23("2"), "3": lambda: step_23("3"), "4": step_4, "5": step_5, "6": step_6}
    for number in args.order:
        if number not in args.skip:
            steps[number]()

    # 7. projections
    report.say("\n## 7. Projected 180M-frame plans (from the rates above, same command)\n")
    if q:
        report.say("(--quick: tiny sizes, so these numbers project nothing; the step is exercised only)\n")
    for name in ("mjx_2048x16", "mjx_16384x2"):
        if name in runs:
            project(report, name, runs[name], refits, _startup(runs[name], frames_of[name]))
    report.say(f"\n(check finished in {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
