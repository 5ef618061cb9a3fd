"""benchmarks/throughput.py, the throughput benchmark (`gorl bench` is tests/test_bench.py): its
measurements run on the real stack (tiny sizes; no timing asserted: rates on a shared machine are
not test material, only that each measurement runs and is sane)."""

import math
import sys
import warnings

import pytest

from gorl.decoders import IdentityDecoder
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import throughput  # noqa: E402  (benchmarks/ is scripts, not a package)


@pytest.mark.parametrize("kw", [{}, {"precision": "bf16-mixed"}, {"critic_hidden": [64, 64]}], ids=["fp32", "bf16", "critic64"])
def test_loop_rate_runs_the_training_loop_and_times_its_collection(kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # e.g. Lightning's empty-val-dataloader notice
        rate, collect = throughput.loop_rate("cheetah-run", 4, 256, IdentityDecoder, **kw)
    assert math.isfinite(rate) and rate > 0
    # Collection is part of the loop, so the loop's rate cannot exceed its collection's.
    assert collect > rate


def test_update_maths_seconds_is_positive():
    assert throughput.update_maths_seconds("cheetah-run", 4, repeats=1) > 0


def test_the_device_check_keeps_each_step_to_its_share_and_writes_its_page_as_it_goes(tmp_path):
    """benchmarks/gpu_check.py, its in-process step (4: acting chain, PPO update, refits) on the CPU
    with a 2-second share: the step stops itself, says so, and the check goes on to its projection
    with the page written (a device command that overran would lose everything after the kill)."""
    import subprocess

    out = tmp_path / "check"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--quick", "--out", str(out), "--order", "4",
                          "--step4-seconds", "2"], capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    page = (out / "gpu_check.md").read_text()
    assert "stopped: step 4's share of the budget is spent" in page and "## 7. Projected" in page and "check finished" in page
    assert (out / "gpu_check.json").is_file()
