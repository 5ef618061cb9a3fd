import importlib
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "disabled")  # no GL needed unless a test renders (it sets its own)
os.environ.setdefault("WANDB_MODE", "offline")
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def run_gorl(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m gorl ...`` in a subprocess: what a user types, exit code and stderr included."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "gorl", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def gorl_main(*args: str) -> int:
    """``gorl ...`` in this process, in the current directory, as a fresh ``python -m gorl`` would run
    it; returns its exit code. What the command changes in its process (environment, signal
    handlers, Lightning's loggers and rank) is put back afterwards. Output goes to this process's
    stdout/stderr: :func:`gorl_in_process` captures it for a test."""
    from gorl.cli import main

    environ = dict(os.environ)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    # Lightning logs to stderr (its "[gorl] ..." lines included) through a handler it adds at
    # import only when the root logger has none, as in `python -m gorl`; under pytest it has
    # pytest's, so the lines would go there: send them to this call's stderr, as the command does.
    # Earlier tests may have left those loggers with handlers of their own (a capture that has
    # ended) or another level: for the call, each has exactly this handler at INFO, as at import.
    to_stderr = logging.StreamHandler(sys.stderr)
    saved = []
    for lg in map(logging.getLogger, ("lightning.pytorch", "lightning.fabric")):
        saved.append((lg, list(lg.handlers), lg.level, lg.propagate))
        lg.handlers, lg.propagate = [to_stderr], False
        lg.setLevel(logging.INFO)
    # ... and this process is rank 0, as a fresh `gorl fit` is (a Trainer run earlier in this
    # process may have set Lightning's rank-zero switch otherwise).
    from lightning.fabric.utilities.rank_zero import rank_zero_only as fabric_rank_zero
    from lightning.pytorch.utilities.rank_zero import rank_zero_only as pl_rank_zero

    switches = [(f, getattr(f, "rank", 0)) for f in {fabric_rank_zero, pl_rank_zero}]
    for f, _ in switches:
        f.rank = 0
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    saved_rank_zero = (rank_zero.level, list(rank_zero.handlers), rank_zero.propagate)
    rank_zero.setLevel(logging.NOTSET)
    rank_zero.handlers, rank_zero.propagate = [], True
    try:
        main(list(args))
        return 0
    except SystemExit as end:
        return end.code if isinstance(end.code, int) else (0 if end.code is None else 1)
    finally:
        # What the CLI sets for its own process: MUJOCO_GL, PL_GLOBAL_SEED, and signal handlers
        # that a run ended by an error leaves installed.
        os.environ.clear()
        os.environ.update(environ)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        for lg, lg_handlers, level, propagate in saved:
            lg.handlers, lg.propagate = lg_handlers, propagate
            lg.setLevel(level)
        for f, rank in switches:
            f.rank = rank
        rank_zero.setLevel(saved_rank_zero[0])
        rank_zero.handlers, rank_zero.propagate = saved_rank_zero[1], saved_rank_zero[2]


def import_cli_stack() -> None:
    """TorchRL gives its logger a StreamHandler on sys.stderr at import: imported under a test's
    capture, the handler would write to a closed stream in the next test. Call it with the capture
    off, before :func:`gorl_main`."""
    for module in ("gorl.lightning_cli", "gorl.system"):
        importlib.import_module(module)


@pytest.fixture
def gorl_in_process(capfd, monkeypatch, tmp_path) -> Callable[..., subprocess.CompletedProcess]:
    """``gorl ...`` as :func:`run_gorl` runs it (in ``tmp_path``, the same exit code, stdout and
    stderr), but in this process: for checks of what a command says, where a fresh interpreter would
    only add seconds of imports. What the user types, exit and all, stays tested by ``run_gorl``."""
    with capfd.disabled():
        import_cli_stack()

    def call(*args: str) -> subprocess.CompletedProcess:
        monkeypatch.chdir(tmp_path)
        capfd.readouterr()
        code = gorl_main(*args)
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess(["gorl", *args], code, out, err)

    return call


@pytest.fixture
def smoke_config() -> Path:
    return CONF / "smoke.yaml"


@pytest.fixture(scope="session")
def smoke_fit(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One ``gorl fit --config conf/smoke.yaml`` as the user types it (seed 0, to its end), shared by
    every test that reads a finished smoke run: its output, its run directory, its checkpoint. A
    test that adds runs beside it works on a copy (:func:`copy_runs`), never in this directory."""
    cwd = tmp_path_factory.mktemp("smoke_fit")
    res = run_gorl("fit", "--config", str(CONF / "smoke.yaml"), cwd=cwd)
    assert res.returncode == 0, res.stderr[-3000:]
    return cwd, res


def copy_runs(run_cwd: Path, to: Path) -> Path:
    """``run_cwd``'s ``runs/`` copied into ``to``; returns the copy of version_0's last checkpoint."""
    shutil.copytree(run_cwd / "runs", to / "runs", dirs_exist_ok=True)
    return next(to.glob("runs/gorl/version_0/checkpoints/last.ckpt"))


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Callable:
    """``trained(stop_stage, sac, bounded, first)``: (system, checkpoint) of one in-process training
    per setting (:func:`tests.test_inference._trained`), shared by the session's tests, which only read them."""
    from tests.test_inference import _trained

    done: dict = {}

    def get(stop_stage: int | None, sac: bool = False, bounded: bool = False, first: bool = False):
        key = (stop_stage, sac, bounded, first)
        if key not in done:
            done[key] = _trained(tmp_path_factory.mktemp("trained"), *key)
        return done[key]

    return get
