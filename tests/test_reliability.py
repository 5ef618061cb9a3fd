"""A crash, a bad checkpoint, a NaN or a dead worker must never cost a run: SIGKILL and resume,
clear one-line failures, the last good checkpoint kept, and reproducible seeding."""

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gorl.analysis.io import load_metrics, run_rows
from tests.conftest import CONF, ROOT, copy_runs, gorl_main, run_gorl

# A smoke plan long enough to be killed in the middle of each phase.
PLAN = ["--config", str(CONF / "smoke.yaml"), "--model.loop.stages", "[1024, 1024]", "--model.loop.eval_every", "256",
        "--model.refinement.transitions", "8192", "--model.refinement.steps", "12", "--model.refinement.val_every", "1",
        "--checkpoint.every_frames", "128", "--checkpoint.every_decoder_rounds", "1"]


def _phase_sequence(metrics: Path) -> list[tuple[int, int]]:
    seq = []
    for r in csv.DictReader(metrics.open()):
        if r.get("loop/stage"):
            key = (int(float(r["loop/stage"])), int(float(r["loop/phase"])))
            if not seq or seq[-1] != key:
                seq.append(key)
    return seq


def _start_and_wait_for(marker: str, cwd: Path, plan: list[str]) -> tuple[subprocess.Popen, list[str]]:
    """A real ``gorl fit`` in its own session (as a terminal's foreground job is), read up to ``marker``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gorl", "fit", *plan], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 300
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            return proc, seen
        if time.time() > deadline:
            break
    # A marker that never comes would otherwise let the run go on until the deadline and kill it
    # wherever it is: the test would pass slowly and test something else.
    proc.kill()
    raise AssertionError(f"{marker!r} never printed; the run's last lines: {''.join(seen[-5:])}")


def _kill_when(marker: str, cwd: Path, plan: list[str] = PLAN) -> None:
    proc, _ = _start_and_wait_for(marker, cwd, plan)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def plan_reference(tmp_path_factory) -> Path:
    """The uninterrupted run of PLAN that each killed-and-resumed run is compared with (the killed
    runs are real processes; this one, a reference, runs in this process)."""
    ref = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ref)
        assert gorl_main("fit", *PLAN) == 0
    return ref


@pytest.fixture
def smoke_run(smoke_fit) -> Path:
    """A finished ``gorl fit --config conf/smoke.yaml`` (seed 0; tests/conftest.py's, shared by the
    session), read by several tests; a test that adds runs beside it works on a copy (:func:`copy_runs`)."""
    return smoke_fit[0]


@pytest.mark.parametrize(
    "marker, expected_phase",
    # Stage 1's first line is its initial evaluation, printed inside the boundary iteration before
    # that iteration's phase-change checkpoint: kill at the next evaluation, inside the encoder phase.
    [("[gorl] stage 1 | frames 1,280", "encoder"), ("[gorl] stage 0 decoder step 3/", "decoder")],
    ids=["mid-encoder-phase", "mid-decoder-refinement"],
)
def test_sigkill_then_resume_finishes_the_same_plan(tmp_path, plan_reference, gorl_in_process, marker, expected_phase):
    ref = plan_reference
    full = _phase_sequence(next(ref.glob("runs/gorl/version_0/metrics.csv")))

    _kill_when(marker, tmp_path)
    (ckpt,) = tmp_path.glob("runs/gorl/version_0/checkpoints/last.ckpt")
    saved = torch.load(ckpt, weights_only=True)["gorl_loop"]["state"]
    assert saved["phase"] == expected_phase
    # The kill is a real process's; the resume runs in this process (the next test resumes a killed
    # run as the user types it).
    res = gorl_in_process("fit", *PLAN, "--ckpt_path", "last")
    assert res.returncode == 0, res.stderr[-3000:]
    resumed = _phase_sequence(next(tmp_path.glob("runs/gorl/version_1/metrics.csv")))
    start = full.index((saved["stage"], int(saved["phase"] != "encoder")))
    assert resumed == full[start:]
    final = torch.load(next(tmp_path.glob("runs/gorl/version_1/checkpoints/last.ckpt")), weights_only=True)["gorl_loop"]["state"]
    reference = torch.load(next(ref.glob("runs/gorl/version_0/checkpoints/last.ckpt")), weights_only=True)["gorl_loop"]["state"]
    assert (final["stage"], final["phase"], final["frames"]) == (reference["stage"], reference["phase"], reference["frames"])
    # The resumed run's history (curves.png, the analysis loaders) joins both parts: every step of
    # the uninterrupted run once, in order, the killed part's rows cut where the resumed part took over.
    joined = run_rows(tmp_path / "runs/gorl/version_1/metrics.csv")
    reference_rows = list(csv.DictReader(next(ref.glob("runs/gorl/version_0/metrics.csv")).open()))
    assert [r["step"] for r in joined] == [r["step"] for r in reference_rows]
    assert [r for r in joined if r.get("loop/frames")][0]["loop/frames"] == reference_rows[0]["loop/frames"]
    assert (tmp_path / "runs/gorl/version_1/curves.png").is_file()
    assert len(load_metrics(tmp_path / "runs/gorl")["step"]) == len(joined)  # the folder: each part once


@pytest.mark.parametrize("refit_data", ["store", "recollect"])
def test_a_refit_killed_mid_fit_resumes_as_if_uninterrupted(tmp_path, plan_reference, gorl_in_process, refit_data):
    """Killed mid-refit and resumed, the fit goes on as the uninterrupted run's did: the same
    validation losses at every later round and the same final decoder, bit for bit (the RNG state is
    put back once the envs are built, which draw from it). With ``checkpoint.refit_data:
    recollect`` the checkpoint holds the RNG state the refit's collection started from instead of
    the pairs (the paper's are ~310 MB, too large to carry a run between machines): the resumed run
    collects the same data again, its fingerprint checked."""
    plan = [*PLAN, "--checkpoint.refit_data", refit_data]
    _kill_when("[gorl] stage 0 decoder step 3/", tmp_path, plan)
    (ckpt,) = tmp_path.glob("runs/gorl/version_0/checkpoints/last.ckpt")
    saved = torch.load(ckpt, weights_only=True)["gorl_loop"]
    assert saved["state"]["phase"] == "decoder" and saved["fit"]["steps"] > 0
    if refit_data == "recollect":
        assert "train" not in saved["fit"] and "val" not in saved["fit"] and set(saved["fit"]["collected"]) == {"rng", "fingerprint"}
    else:
        assert len(saved["fit"]["train"]["observation"]) > 0 and "collected" not in saved["fit"]
    res = gorl_in_process("fit", *plan, "--ckpt_path", "last")
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert ("collecting the refit's data again" in out) == (refit_data == "recollect") and "differs from the original" not in out

    def val_losses(path: Path) -> dict[float, float]:
        return {float(r["decoder/step"]): float(r["decoder/val_loss"]) for r in csv.DictReader(path.open()) if r.get("decoder/val_loss")}

    reference = val_losses(next(plan_reference.glob("runs/gorl/version_0/metrics.csv")))
    resumed = val_losses(tmp_path / "runs/gorl/version_1/metrics.csv")
    later = [step for step in resumed if step > saved["fit"]["steps"]]
    assert later and {s: resumed[s] for s in later} == {s: reference[s] for s in later}
    final = torch.load(next(tmp_path.glob("runs/gorl/version_1/checkpoints/last.ckpt")), weights_only=True)["state_dict"]
    ref_final = torch.load(next(plan_reference.glob("runs/gorl/version_0/checkpoints/last.ckpt")), weights_only=True)["state_dict"]
    assert all(torch.equal(final[k], ref_final[k]) for k in ref_final if k.startswith("decoder."))


# Frame checkpoints far apart and no phase change before the kill (a long stage 0: 16 iterations of
# 128 frames, killed after 11), metrics rows flushed every iteration (metrics_every_seconds 0,
# instead of 30 s): no checkpoint is written before the kill. The refinement's size plays no part: a small one.
NO_CHECKPOINT = [*PLAN, "--model.loop.stages", "[2048, 1024]", "--checkpoint.every_frames", "1e9", "--model.refinement.transitions", "1024",
                 "--checkpoint.every_minutes", "null", "--checkpoint.metrics_every_seconds", "0"]
KILL_AT = "[gorl] stage 0 | frames 1,408"


@pytest.fixture(scope="module")
def killed_before_a_checkpoint(tmp_path_factory) -> Path:
    """A ``gorl fit`` of NO_CHECKPOINT SIGKILLed at KILL_AT, read by several tests (a test that adds
    runs beside it works on a copy)."""
    cwd = tmp_path_factory.mktemp("killed")
    _kill_when(KILL_AT, cwd, NO_CHECKPOINT)
    return cwd


def test_a_run_killed_between_frame_checkpoints_resumes_from_the_time_based_one(tmp_path, killed_before_a_checkpoint):
    # The same plan with a checkpoint every 0.001 min (60 ms): only the clock can have written last.ckpt.
    plan = [*NO_CHECKPOINT, "--checkpoint.every_minutes", "0.001"]
    _kill_when(KILL_AT, tmp_path, plan)
    (ckpt,) = tmp_path.glob("runs/gorl/version_0/checkpoints/last.ckpt")
    saved = torch.load(ckpt, weights_only=True)["gorl_loop"]["state"]
    assert saved["stage"] == 0 and saved["phase"] == "encoder" and 0 < saved["frames"] <= 1408
    res = run_gorl("fit", *plan, "--ckpt_path", "last", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming from runs/gorl/version_0/checkpoints/last.ckpt" in res.stderr and "finished stage 1" in res.stdout + res.stderr
    # Without the clock, killed at the same point: no checkpoint. The clock is what saved the run.
    assert list(killed_before_a_checkpoint.glob("runs/gorl/version_0/metrics.csv"))
    assert not list(killed_before_a_checkpoint.glob("runs/gorl/version_0/checkpoints/last.ckpt"))


def test_missing_and_corrupt_checkpoints_are_one_line_errors(tmp_path, smoke_run, gorl_in_process):
    # The corrupt checkpoint runs as the user types it; the other cases in this process.
    for args, expected in (
        (["--ckpt_path", "last"], "no checkpoint under"),
        (["--ckpt_path", str(tmp_path / "nope.ckpt")], "does not exist"),
    ):
        res = gorl_in_process("fit", "--config", str(CONF / "smoke.yaml"), *args)
        assert res.returncode != 0 and res.stderr.strip().splitlines()[-1].startswith("gorl: error:") and expected in res.stderr
    good = copy_runs(smoke_run, tmp_path)
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    res = run_gorl("fit", "--config", str(CONF / "smoke.yaml"), "--ckpt_path", str(corrupt), cwd=tmp_path, timeout=120)
    assert res.returncode != 0 and "is unreadable or corrupt: not a complete checkpoint file" in res.stderr.strip().splitlines()[-1]
    # Our words, in every path that loads one: not torch's advice to whoever saved the file.
    from gorl import load_policy
    from gorl.errors import CheckpointError

    with pytest.raises(CheckpointError) as info:
        load_policy(corrupt)
    for message in (res.stderr, str(info.value)):
        assert "not a complete checkpoint file" in message and "torch.save" not in message and "zipfile" not in message
    # A longer plan, or the finished run's checkpoint is refused for that first (nothing to train).
    res = gorl_in_process("fit", "--config", str(CONF / "smoke.yaml"), "--model.encoder.critic_hidden", "[8]",
                          "--model.loop.stages", "[512, 256, 256, 128]", "--ckpt_path", str(good))
    assert res.returncode != 0 and "does not match this config" in res.stderr.strip().splitlines()[-1]
    assert "Traceback" not in res.stderr
    # That call failed before training: it leaves no run directory for `--ckpt_path last` to find.
    assert sorted(p.name for p in (tmp_path / "runs" / "gorl").iterdir()) == ["version_0"]
    # Nor does scoring a checkpoint make a run: validate writes no config.yaml.
    res = gorl_in_process("validate", "--config", str(CONF / "smoke.yaml"), "--ckpt_path", str(good))
    assert res.returncode == 0, res.stderr[-2000:]
    assert [p.parent.name for p in tmp_path.glob("runs/gorl/*/config.yaml")] == ["version_0"]


# One long stage with no frame, clock or phase checkpoint in reach: only a signal or the end writes one.
LONG = [*PLAN, "--model.loop.stages", "[1e7]", "--checkpoint.every_frames", "1e9", "--checkpoint.every_minutes", "null",
        "--curves", "false"]


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_writes_a_checkpoint_and_the_closing_lines_then_exits_non_zero(tmp_path, signum, code):
    proc, seen = _start_and_wait_for("[gorl] stage 0 | frames", tmp_path, LONG)
    # To the whole process group, as Ctrl-C in a terminal does (env workers included).
    os.killpg(proc.pid, signum)
    rest, _ = proc.communicate(timeout=300)
    out = "".join(seen) + rest
    assert proc.returncode == code, out[-3000:]
    name = signal.Signals(signum).name
    # The closing line (the per-stage table follows it once a stage has finished).
    assert f"[gorl] stopped by {name} in stage 0 (encoder) after " in out and "final eval/return" in out, out[-3000:]
    (ckpt,) = tmp_path.glob("runs/gorl/version_0/checkpoints/last.ckpt")
    state = torch.load(ckpt, weights_only=True)["gorl_loop"]["state"]
    assert state["phase"] == "encoder" and state["frames"] > 0
    assert "Traceback" not in out


def test_a_second_ctrl_c_exits_at_once():
    code = ("import os, signal\n"
            "from gorl.callbacks import FrameCheckpoint\n"
            "FrameCheckpoint().install_signal_handlers()\n"
            "os.kill(os.getpid(), signal.SIGINT)\n"
            "print('first: still running', flush=True)\n"
            "os.kill(os.getpid(), signal.SIGINT)\n"
            "print('second: still running', flush=True)\n")
    res = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert res.returncode == 130 and "first: still running" in res.stdout and "second" not in res.stdout
    assert "SIGINT again: exiting now" in res.stderr


def test_metrics_rows_survive_a_kill(killed_before_a_checkpoint):
    # Flushed every iteration (metrics_every_seconds 0, instead of 30 s), and no checkpoint (which
    # flushes too) before the kill: the rows on disk are the periodic flush's.
    killed = killed_before_a_checkpoint
    assert not list(killed.glob("runs/gorl/version_0/checkpoints/last.ckpt"))
    rows = list(csv.DictReader(next(killed.glob("runs/gorl/version_0/metrics.csv")).open()))
    frames = [float(r["loop/frames"]) for r in rows if r.get("loop/frames")]
    # 128 frames per iteration: every iteration before the one that printed the marker is there.
    assert frames and max(frames) >= 1280 and any(r.get("eval/return") for r in rows)


def test_last_resumes_only_this_configs_newest_unfinished_run(tmp_path, smoke_run, killed_before_a_checkpoint, gorl_in_process):
    # The finished smoke run (a copy), and one refusal as the user types it; the rest in this process.
    smoke = ["--config", str(CONF / "smoke.yaml"), "--curves", "false"]
    copy_runs(smoke_run, tmp_path)
    # A finished run is not "resumed" (that printed "finished ... in 0 s" and exited 0).
    res = run_gorl("fit", *smoke, "--ckpt_path", "last", cwd=tmp_path, timeout=120)
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 2 and last.startswith("gorl: error:") and "finished (stage 2, 1,024 env frames)" in last
    # Nor is it when named by its path: that too trained nothing and exited 0.
    res = gorl_in_process("fit", *smoke, "--ckpt_path", "runs/gorl/version_0/checkpoints/last.ckpt")
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 2 and "is the end of a finished run (stage 2 of a 3-stage plan, 1,024 env frames)" in last
    assert sorted(p.name for p in (tmp_path / "runs" / "gorl").iterdir()) == ["version_0"]
    # Another config's run killed before its first checkpoint, newer (copied now, its files dated now)
    # as version_1: `last` names it, with the frames it reached, rather than resuming the finished run
    # of another config above.
    plan = NO_CHECKPOINT
    shutil.copytree(killed_before_a_checkpoint / "runs/gorl/version_0", tmp_path / "runs/gorl/version_1", copy_function=shutil.copy)
    res = gorl_in_process("fit", *plan, "--ckpt_path", "last")
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 2 and last.startswith("gorl: error:") and "version_1, stopped before writing a checkpoint (it reached" in last
    assert "resuming" not in res.stderr
    # The finished run's config still finds its own run, not the newer one of another config.
    res = gorl_in_process("fit", *smoke, "--ckpt_path", "last")
    assert res.returncode == 2 and "runs/gorl/version_0, finished" in res.stderr.strip().splitlines()[-1]
    # Speed settings change no maths: a resume may change them and still finds its run.
    res = gorl_in_process("fit", *smoke, "--model.speed.matmul_precision", "high", "--ckpt_path", "last")
    assert res.returncode == 2 and "runs/gorl/version_0, finished" in res.stderr.strip().splitlines()[-1]


class _RunsCode:
    """Stands in for a booby-trapped object in a checkpoint from the internet."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, smoke_run, gorl_in_process):
    good = next(smoke_run.glob("runs/gorl/version_0/checkpoints/last.ckpt"))
    state = torch.load(good, weights_only=True)  # the real checkpoint needs no pickle at all
    state["gorl_loop"]["extra"] = _RunsCode()
    evil = tmp_path / "evil.ckpt"
    torch.save(state, evil)
    # In this process (test_missing_and_corrupt_checkpoints_are_one_line_errors runs a bad checkpoint
    # as the user types it): the refusal is the loader's, whichever process calls it.
    res = gorl_in_process("fit", "--config", str(CONF / "smoke.yaml"), "--ckpt_path", str(evil))
    assert res.returncode != 0 and "refusing to unpickle" in res.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("env_cls, expected", [("NaNRewardEnv", "non-finite loss"), ("NaNObsEnv", "non-finite observation")])
def test_non_finite_training_stops_and_keeps_the_last_good_checkpoint(tmp_path, gorl_in_process, env_cls, expected):
    args = ("fit", "--config", str(CONF / "smoke.yaml"), "--model.env.factory", f"tests.envs_faulty:{env_cls}",
            "--model.env.num_envs", "4", "--model.env.eval_envs", "1", "--model.loop.eval_max_steps", "5",
            "--model.encoder.unroll", "16", "--checkpoint.every_frames", "64")
    # In this process (the same CLI, without the imports): test_a_dying_env_worker_fails_fast_with_a_clear_error
    # runs an error raised in training as the user types it.
    res = gorl_in_process(*args)
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("gorl: error:") and expected in last and "encoder phase, stage 0, frame" in last
    (ckpt,) = tmp_path.glob("runs/gorl/version_0/checkpoints/last.ckpt")
    state = torch.load(ckpt, weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
    assert state["gorl_loop"]["state"]["frames"] > 0


def test_a_dying_env_worker_fails_fast_with_a_clear_error(tmp_path):
    t0 = time.time()
    res = run_gorl(
        "fit", "--config", str(CONF / "smoke.yaml"), "--model.env.factory", "tests.envs_faulty:DyingEnv",
        "--model.env.num_envs", "2", "--model.env.num_workers", "2", "--model.env.eval_envs", "1",
        "--model.loop.eval_max_steps", "5", cwd=tmp_path, timeout=300,
    )
    assert res.returncode != 0 and time.time() - t0 < 240
    assert "env worker process died" in res.stderr.strip().splitlines()[-1]


def _metrics_without_timing(run_dir: Path) -> list[dict]:
    rows = list(csv.DictReader(next(run_dir.glob("runs/gorl/version_0/metrics.csv")).open()))
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


def test_same_seed_gives_identical_metrics(tmp_path, smoke_run, monkeypatch):
    # The first run is a `gorl fit` process (smoke.yaml's seed_everything: 0); the others run in this
    # process, after whatever earlier tests did here: the seed alone has to make them repeat.
    runs = [_metrics_without_timing(smoke_run)]
    for name, seed in (("b", 0), ("c", 4)):
        d = tmp_path / name
        d.mkdir()
        monkeypatch.chdir(d)
        assert gorl_main("fit", "--config", str(CONF / "smoke.yaml"), "--seed_everything", str(seed)) == 0
        runs.append(_metrics_without_timing(d))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
