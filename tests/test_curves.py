"""Every ``gorl fit`` ends with a picture of the run (curves.png), unless switched off; without
matplotlib it says so in one line and the run still succeeds."""

import sys
from types import SimpleNamespace

from lightning.pytorch.loggers import CSVLogger

from gorl.callbacks import CurvesFigure
from tests.conftest import CONF


def test_fit_writes_curves_png_and_can_be_switched_off(tmp_path, smoke_fit, gorl_in_process):
    done, _ = smoke_fit  # `gorl fit --config conf/smoke.yaml` as typed, shared with other tests
    png = done / "runs" / "gorl" / "version_0" / "curves.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    # The switch, not the process, nor a plan of three stages: a one-stage run in this process.
    res = gorl_in_process("fit", "--config", str(CONF / "smoke.yaml"), "--model.loop.stages", "[256]", "--curves", "false")
    run = tmp_path / "runs" / "gorl" / "version_0"
    assert res.returncode == 0 and (run / "metrics.csv").is_file() and not (run / "curves.png").exists()


def test_without_matplotlib_it_is_one_line_and_no_failure(tmp_path, monkeypatch):
    logger = CSVLogger(tmp_path, name="r", version=0)
    logger.log_metrics({"loop/frames": 1.0, "eval/return": 2.0}, step=0)
    logger.save()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    said = []
    monkeypatch.setattr("lightning.pytorch.utilities.rank_zero_info", said.append)
    trainer = SimpleNamespace(global_rank=0, loggers=[logger])
    CurvesFigure().on_train_end(trainer, SimpleNamespace())
    assert not (tmp_path / "r" / "version_0" / "curves.png").exists()
    assert len(said) == 1 and "curves.png skipped: matplotlib is not installed" in said[0]


def test_the_train_line_never_spans_a_stage():
    """A stage in which no training episode ended has no train/return rows: the line breaks at every
    stage start instead of carrying the last value (or a straight segment) across it."""
    import numpy as np

    from gorl.analysis.plots import plot_learning_curve, train_points

    nan = np.nan
    metrics = {"loop/frames": np.array([1, 2, 3, 4, 5, 6, 7, 8], dtype=float),
               "loop/stage": np.array([0, 0, 0, 1, 1, 2, 2, 2], dtype=float),
               "train/return": np.array([10, 11, nan, nan, nan, nan, 30, 31]),
               "eval/return": np.array([5, 5, 6, 6, 7, 7, 8, 8], dtype=float)}
    xs, ys = train_points(metrics)
    assert np.array_equal(xs, [1, 2, nan, 7, 8], equal_nan=True) and np.array_equal(ys, [10, 11, nan, 30, 31], equal_nan=True)
    line = plot_learning_curve(metrics).axes[0].lines[0]
    assert line.get_label().startswith("train/return") and np.isnan(line.get_ydata()).sum() == 1
