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
