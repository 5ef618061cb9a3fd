import os
import subprocess
import sys
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
def smoke_config() -> Path:
    return CONF / "smoke.yaml"
