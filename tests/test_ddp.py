"""DDP with two CPU processes (gloo): identical weights on both ranks after every phase, the same
stage/phase sequence on both, and the CLI path with ``--trainer.strategy ddp``."""

import os
import subprocess
import sys

import torch

from tests.conftest import CONF, ROOT, run_gorl


def test_ddp_two_processes_keep_identical_weights_through_refinements(tmp_path):
    # GORL_DDP_MODE=shared-cuda (benchmarks/gpu_check.py on a one-GPU machine): both ranks on cuda:0.
    out = tmp_path / "dump"
    res = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "scripts" / "ddp_run.py"), str(out), os.environ.get("GORL_DDP_MODE", "cpu")],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    tags = sorted(p.name[len("rank0_") : -3] for p in out.glob("rank0_*.pt"))
    assert {"s0_encoder", "s0_decoder", "s1_encoder", "s1_decoder", "s2_encoder", "s2_done"} <= set(tags)
    for tag in tags:
        a, b = torch.load(out / f"rank0_{tag}.pt"), torch.load(out / f"rank1_{tag}.pt")
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (tag, key)
    assert (out / "rank0_trace.txt").read_text() == (out / "rank1_trace.txt").read_text()


def test_cli_ddp_strategy_runs(tmp_path):
    res = run_gorl("fit", "--config", str(CONF / "smoke.yaml"), "--trainer.strategy", "ddp", "--trainer.devices", "2", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert list(tmp_path.glob("runs/gorl/version_0/checkpoints/last.ckpt"))
    assert (res.stdout + res.stderr).count("finished stage 2") == 1  # rank 0 alone reports
