"""Distribution logging and analysis: a tiny real run (stopped and resumed) logs snapshots, the
probes stay fixed across the resume, the statistics tell one mode from two, and both notebooks
execute on the run's output."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from gorl.analysis import (
    count_modes,
    dip_test,
    end_of_stage,
    eval_points,
    label_from_dir,
    load_metrics,
    load_snapshots,
    modality_table,
    plot_runs,
    stage_boundaries,
)
from gorl.analysis.notebook import execute_notebook
from gorl.distributions import ActionDistributionLogger, sample_actions
from tests.conftest import ROOT
from tests.test_loop import smoke_system

P, S = 4, 200


class _StopAtStage1(pl.Callback):
    """Checkpoint and stop as stage 1's encoder phase begins (after the logger has snapshotted it)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        st = module.loop_state
        if st.stage == 1 and st.phase == "encoder" and not self.path.exists():
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True


def _trainer(root: Path, callbacks: list, loggers: list) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=-1, accelerator="cpu", logger=loggers, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, log_every_n_steps=1, callbacks=callbacks, default_root_dir=root,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """The smoke plan on the toy bandit, interrupted at stage 1 and resumed into a new version dir."""
    root = tmp_path_factory.mktemp("run")
    ckpt = root / "mid.ckpt"
    first = ActionDistributionLogger(every_frames=256, num_probes=P, samples=S)
    pl.seed_everything(0)
    loggers = [CSVLogger(root, name="gorl", version=0), TensorBoardLogger(root, name="tb", version=0)]
    _trainer(root, [first, _StopAtStage1(ckpt)], loggers).fit(smoke_system())
    probes_before, count_before = first.probes.clone(), first.index
    second = ActionDistributionLogger(every_frames=256, num_probes=P, samples=S)
    _trainer(root, [second], [CSVLogger(root, name="gorl", version=1)]).fit(smoke_system(), ckpt_path=ckpt)
    return {"dir": root / "gorl", "first": first, "second": second, "probes_before": probes_before, "count_before": count_before}


def test_snapshot_format(run):
    snaps = load_snapshots(run["dir"] / "version_0")
    assert len(snaps) >= 3
    for s in snaps:
        with np.load(s.path) as f:
            assert {"probe_obs", "policy_actions", "prior_actions", "policy_pre_tanh", "stage", "phase", "frames"} <= set(f.files)
            assert f["phase"].dtype.kind == "U" and f["stage"].shape == () and f["frames"].shape == ()
        assert s.probe_obs.shape == (P, 1)
        assert s.policy_actions.shape == s.prior_actions.shape == s.policy_pre_tanh.shape == (P, S, 1)
        assert np.abs(s.policy_actions).max() <= 1.0 and np.allclose(np.tanh(s.policy_pre_tanh), s.policy_actions, atol=1e-5)
        assert s.phase in ("encoder", "decoder", "done")
    assert [s.index for s in snaps] == list(range(len(snaps)))
    assert snaps[0].event == "start" and snaps[0].stage == 0
    assert any(s.event == "frames" for s in snaps)  # every_frames=256 with 128-frame rollouts
    # Phase boundaries: stage 0 ends (decoder refinement starts), stage 1 starts.
    assert (0, "decoder") in {(s.stage, s.phase) for s in snaps} and snaps[-1].stage == 1
    assert all(a.frames <= b.frames for a, b in zip(snaps, snaps[1:]))
    with np.load(run["dir"] / "version_0" / "distributions" / "probes.npz") as f:
        assert np.array_equal(f["probe_obs"], snaps[0].probe_obs)
    # Stage 0 decodes with the identity: the prior's pre-tanh samples are N(0, 1).
    prior0 = np.arctanh(np.clip(snaps[0].prior_actions, -0.999999, 0.999999))
    assert abs(prior0.std() - 1.0) < 0.1


def test_probes_fixed_across_snapshots_and_resume(run):
    first, second = run["first"], run["second"]
    assert torch.equal(second.probes, run["probes_before"])  # restored from the checkpoint's callback state
    snaps = load_snapshots(run["dir"])  # both version dirs
    assert all(np.array_equal(s.probe_obs, snaps[0].probe_obs) for s in snaps)
    resumed = load_snapshots(run["dir"] / "version_1")
    assert resumed[0].index == run["count_before"] and "start" not in {s.event for s in resumed}
    assert [s.index for s in snaps] == list(range(len(snaps)))  # numbering continues, no duplicates
    assert snaps[-1].stage == 2 and snaps[-1].phase == "done"
    assert set(end_of_stage(snaps)) == {0, 1, 2}
    assert first.state_dict()["index"] == run["count_before"]


def test_sampling_leaves_the_global_rng_alone_and_is_reproducible():
    system = smoke_system()
    probes = torch.linspace(-1, 1, 3).unsqueeze(-1)
    before = torch.get_rng_state()
    a = sample_actions(system, probes, 50, seed=7)
    assert torch.equal(before, torch.get_rng_state())
    b = sample_actions(system, probes, 50, seed=7)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert a["policy_actions"].shape == (3, 50, 1) and a["policy_latents"].shape == (3, 50, 1)


def test_training_is_the_same_with_and_without_the_logger(tmp_path):
    def fit(callbacks):
        pl.seed_everything(0)
        system = smoke_system()
        _trainer(tmp_path, callbacks, []).fit(system)
        return system.state_dict()

    plain = fit([])
    logged = fit([ActionDistributionLogger(every_frames=128, num_probes=2, samples=50)])
    assert len(list((tmp_path / "distributions").glob("snapshot_*.npz"))) > 5
    assert plain.keys() == logged.keys() and all(torch.equal(plain[k], logged[k]) for k in plain)


def test_histograms_reach_tensorboard(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = (run["dir"].parent / "tb" / "version_0").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events), size_guidance={"histograms": 0})
    acc.Reload()
    assert "distributions/probe0/policy_action0" in acc.Tags()["histograms"]


def test_dip_test_and_mode_count_tell_one_mode_from_two():
    rng = np.random.default_rng(0)
    one = rng.normal(0.0, 1.0, 1000)
    two = np.concatenate([rng.normal(-2.0, 0.5, 500), rng.normal(2.0, 0.5, 500)])
    three = np.concatenate([rng.normal(m, 0.3, 400) for m in (-3.0, 0.0, 3.0)])
    assert dip_test(one)[1] > 0.2
    assert dip_test(two)[1] < 0.01
    assert count_modes(one) == 1 and count_modes(two) == 2 and count_modes(three) == 3
    assert count_modes(np.concatenate([rng.normal(-2, 0.5, 980), rng.normal(2, 0.5, 20)])) == 1  # below rel_height
    assert dip_test(np.zeros(100)) == (0.0, 1.0) and count_modes(np.zeros(100)) == 1


def test_metrics_and_modality_table(run):
    metrics = load_metrics(run["dir"])  # both versions, concatenated
    assert {"loop/stage", "loop/phase", "loop/frames", "eval/return"} <= set(metrics)
    assert [s for s, _ in stage_boundaries(metrics)] == [1, 2]
    x, y = eval_points(metrics)
    assert len(x) >= 2 and np.all(np.isfinite(y))
    rows = modality_table(load_snapshots(run["dir"])[:2], kinds=("policy", "prior"), space="pre_tanh")
    assert len(rows) == 2 * 2 * P and all(0.0 <= r["pvalue"] <= 1.0 and r["modes"] >= 1 for r in rows)


def _fake_run(path: Path, task: str, offset: float) -> Path:
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(f"model:\n  env:\n    task: {task}\n")
    with (path / "metrics.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "loop/stage", "loop/phase", "loop/frames", "eval/return"])
        for i in range(10):
            w.writerow([i, int(i >= 5), 0, 100 * (i + 1), offset + i])
    return path


def test_paper_figure_one_panel_per_task_one_line_per_method(tmp_path):
    runs = []
    for task in ("cheetah-run", "hopper-stand"):
        for method, offset in (("gorl", 10.0), ("ppo", 0.0)):
            for seed in (0, 1):
                d = _fake_run(tmp_path / task / f"{method}_seed{seed}" / "version_0", task, offset + seed)
                runs.append((d, label_from_dir(d)))
    assert {label for _, label in runs} == {"gorl", "ppo"}
    fig = plot_runs(runs)
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["cheetah-run", "hopper-stand"]
    for ax in axes:
        assert len(ax.get_lines()) == 2
        gorl = next(line for line in ax.get_lines() if line.get_label().startswith("gorl"))
        assert np.isclose(gorl.get_ydata()[0], 10.5)  # the mean of seeds 0 and 1


@pytest.mark.parametrize("name, var", [("distributions.ipynb", "GORL_RUN_DIR"), ("learning_curves.ipynb", "GORL_RUN_DIRS")])
def test_notebooks_execute_on_the_run(run, name, var):
    path = ROOT / "notebooks" / name
    committed = path.read_text()
    assert '"outputs": []' in committed and '"image/png"' not in committed  # outputs cleared
    nb = execute_notebook(path, {var: str(run["dir"])}, timeout=120)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure produced"
