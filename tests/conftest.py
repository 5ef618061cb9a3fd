import os
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


@pytest.fixture
def gorl_in_process(capfd, monkeypatch, tmp_path) -> Callable[..., subprocess.CompletedProcess]:
    """``gorl ...`` as :func:`run_gorl` runs it (in ``tmp_path``, the same exit code, stdout and
    stderr), but in this process: for checks of what a command says, where a fresh interpreter would
    only add seconds of imports. What the user types, exit and all, stays tested by ``run_gorl``."""
    from gorl.cli import main

    def call(*args: str) -> subprocess.CompletedProcess:
        monkeypatch.chdir(tmp_path)
        environ = dict(os.environ)
        capfd.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as end:
            code = end.code if isinstance(end.code, int) else (0 if end.code is None else 1)
        finally:
            os.environ.clear()  # the CLI sets MUJOCO_GL for its own process
            os.environ.update(environ)
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess(["gorl", *args], code, out, err)

    return call


@pytest.fixture
def smoke_config() -> Path:
    return CONF / "smoke.yaml"
