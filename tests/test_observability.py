"""Observability as a user sees it: loggers (W&B offline, TensorBoard), the frames progress bar,
``gorl validate`` on a checkpoint, and ``--video`` with and without an OpenGL backend."""

import functools
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CONF, copy_runs, run_gorl

SMOKE = str(CONF / "smoke.yaml")
# The same names whichever logger writes them.
METRICS = {
    "eval/return", "eval/return_std", "train/return", "encoder/loss", "decoder/val_loss",
    "loop/stage", "loop/phase", "loop/frames", "perf/fps",
}
# A tiny cheetah-run plan (2 iterations of 16 frames) for the rendering tests.
CHEETAH = [
    "--model.env.task", "cheetah-run", "--model.env.num_envs", "2", "--model.env.eval_envs", "1",
    "--model.loop.stages", "[32]", "--model.loop.eval_every", "32", "--model.loop.eval_max_steps", "20",
    "--model.encoder.init_args.minibatch_size", "16",
]


def _gorl(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        return run_gorl(*args, cwd=cwd, timeout=300)


def _one_error_line(res: subprocess.CompletedProcess) -> str:
    lines = [line for line in res.stderr.splitlines() if line.startswith("gorl: error:")]
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    return lines[0]


# --- W&B's offline run file ----------------------------------------------------------------------
def _wandb_records(path: Path):
    """Records of a ``.wandb`` file: LevelDB-log framing (32 KiB blocks of [crc32, length, type]
    chunks) after a 7-byte header, each record a ``wandb_internal_pb2.Record``. wandb >= 0.2x has
    no Python reader, and an offline run writes no ``wandb-summary.json``, so we read it here."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, buf = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        buf = chunk if kind in (1, 2) else buf + chunk  # FULL/FIRST start a record, MIDDLE/LAST extend it
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            yield record


def test_wandb_offline_run_holds_the_metrics(tmp_path):
    res = _gorl("fit", "--config", SMOKE, "--trainer.logger", str(CONF / "logger" / "wandb.yaml"), cwd=tmp_path,
                WANDB_MODE="offline", WANDB_CONFIG_DIR=str(tmp_path / ".wandb_config"), WANDB_CACHE_DIR=str(tmp_path / ".wandb_cache"))
    assert res.returncode == 0, res.stderr[-3000:]
    (run_file,) = tmp_path.glob("runs/wandb/offline-run-*/run-*.wandb")
    history, names, config = set(), [], set()
    for record in _wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history |= {item.key or "/".join(item.nested_key) for item in record.history.item}
        elif kind == "run":
            names.append((record.run.project, record.run.display_name))
        elif kind == "config":
            config |= {item.key or "/".join(item.nested_key) for item in record.config.update}
    assert METRICS <= history, METRICS - history
    assert names == [("gorl", "toy-bandit-s0")]
    assert {"model", "trainer"} <= config  # the full config travels with the run
    run_id = run_file.stem.removeprefix("run-")
    assert (tmp_path / "runs" / "gorl" / run_id / "checkpoints" / "last.ckpt").is_file()
    assert "frames [" not in res.stderr  # smoke.yaml turns the progress bar off


# --- TensorBoard, the progress bar and gorl validate share one smoke run ------------------------
@pytest.fixture(scope="module")
def tb_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    cwd = tmp_path_factory.mktemp("tb")
    res = _gorl("fit", "--config", SMOKE, "--trainer.logger", str(CONF / "logger" / "tensorboard.yaml"),
                "--trainer.enable_progress_bar", "true", cwd=cwd)
    assert res.returncode == 0, res.stderr[-3000:]
    return cwd, res


def test_tensorboard_event_file_holds_the_metrics(tb_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cwd, _ = tb_run
    (run_dir,) = cwd.glob("runs/gorl/version_*")
    assert list(run_dir.glob("events.out.tfevents.*")) and (run_dir / "checkpoints" / "last.ckpt").is_file()
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert METRICS <= tags, METRICS - tags
    assert len(acc.Scalars("eval/return")) >= 3


def test_progress_bar_counts_frames_and_names_stage_and_phase(tb_run):
    _, res = tb_run
    updates = re.split(r"[\r\n]", res.stderr)
    assert any(re.search(r"stage 0 encoder: .*\| \d+/1\.02k frames \[.*eval/return=.*fps=", u) for u in updates), res.stderr[-3000:]
    assert any(re.search(r"stage \d decoder: step \d/6: .*val_loss=", u) for u in updates)
    assert any(re.search(r"^done: 100%.*1\.02k/1\.02k frames", u) for u in updates)
    assert "Epoch 0" not in res.stderr and "v_num" not in res.stderr
    assert "frames [" not in res.stdout  # the bar is on stderr


def test_validate_reports_mean_and_std_of_deterministic_episodes(tb_run, tmp_path, gorl_in_process):
    # In this process, beside a copy of the run (test_validate_with_video_writes_an_mp4 runs
    # `gorl validate` as the user types it).
    ckpt = copy_runs(tb_run[0], tmp_path)
    cwd = tmp_path
    res = gorl_in_process("validate", "--config", SMOKE, "--ckpt_path", str(ckpt), "--model.env.eval_envs", "4", "--verbose", "false",
                          "--trainer.logger", str(CONF / "logger" / "csv.yaml"))
    assert res.returncode == 0, res.stderr[-3000:]
    line = r"eval/return \S+ ± \S+ over 4 deterministic episodes \(stage 2, 1,024 env frames, toy-bandit\)\n"
    assert re.fullmatch(line, res.stdout), res.stdout
    # logged as well, under the same name as during fit, in a new run directory
    import csv

    (metrics,) = [p for p in cwd.glob("runs/gorl/version_*/metrics.csv") if "version_0" not in str(p)]
    rows = list(csv.DictReader(metrics.open()))
    assert rows[-1]["eval/return"] and rows[-1]["eval/return_std"] and float(rows[-1]["eval/episodes"]) == 4


def test_validate_with_a_missing_checkpoint_is_one_line(gorl_in_process):
    # In this process: tests/test_cli.py runs validate's bad input as the user types it.
    line = _one_error_line(gorl_in_process("validate", "--config", SMOKE, "--ckpt_path", "nowhere.ckpt"))
    assert "checkpoint nowhere.ckpt does not exist" in line


# --- video ---------------------------------------------------------------------------------------
_PROBE = "from dm_control import mujoco as m; m.Physics.from_xml_string('<mujoco/>').render(8, 8)"


@functools.cache
def _working_gl() -> str | None:
    """The first MUJOCO_GL backend that renders on this machine (yours first, then egl, osmesa)."""
    for backend in dict.fromkeys(b for b in (os.environ.get("MUJOCO_GL"), "egl", "osmesa") if b and b not in ("disable", "disabled")):
        probe = subprocess.run([sys.executable, "-c", _PROBE], env={**os.environ, "MUJOCO_GL": backend}, capture_output=True, timeout=120)
        if probe.returncode == 0:
            return backend
    return None


def _need_video_support() -> str:
    pytest.importorskip("imageio_ffmpeg", reason="--video needs the 'video' extra: pip install 'gorl[video]'")
    backend = _working_gl()
    if backend is None:
        pytest.skip("no OpenGL backend for MuJoCo here (MUJOCO_GL=egl needs libegl1 + a driver or Mesa; osmesa needs libosmesa6)")
    return backend


def _frames(path: Path) -> tuple[tuple[int, int], int]:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    return tuple(meta["size"]), sum(1 for _ in reader)


@pytest.fixture(scope="module")
def cheetah_fit_with_video(tmp_path_factory) -> Path:
    backend = _need_video_support()
    cwd = tmp_path_factory.mktemp("video")
    res = _gorl("fit", "--config", SMOKE, *CHEETAH, "--video.height", "96", "--video.width", "128", cwd=cwd, MUJOCO_GL=backend)
    assert res.returncode == 0, res.stderr[-3000:]
    return cwd


def test_fit_with_video_writes_the_final_policy_episode(cheetah_fit_with_video):
    (mp4,) = cheetah_fit_with_video.glob("runs/gorl/version_0/videos/cheetah-run-stage0.mp4")
    size, n = _frames(mp4)
    assert size == (128, 96) and n == 11  # reset + 20 control steps at 100 Hz, every 2nd (50 fps cap)


def test_validate_with_video_writes_an_mp4(cheetah_fit_with_video):
    cwd = cheetah_fit_with_video
    res = _gorl("validate", "--config", SMOKE, *CHEETAH, "--ckpt_path", "last", "--video", "true", "--verbose", "false",
                cwd=cwd, MUJOCO_GL=_working_gl())
    assert res.returncode == 0, res.stderr[-3000:]
    assert "over 1 deterministic episodes (stage 0, 32 env frames, cheetah-run)" in res.stdout
    (mp4,) = cwd.glob("runs/gorl/version_1/videos/cheetah-run-stage0.mp4")
    size, n = _frames(mp4)
    assert size == (320, 240) and n == 11


@pytest.mark.parametrize(
    "args, env, expected",
    [
        # glvnd finds no EGL vendor: the same ImportError as a machine without EGL
        (CHEETAH, {"MUJOCO_GL": "egl", "__EGL_VENDOR_LIBRARY_FILENAMES": "/nonexistent.json"}, "MuJoCo cannot render with MUJOCO_GL=egl"),
        (CHEETAH, {"MUJOCO_GL": "disabled"}, "MUJOCO_GL=disabled turns it off"),
    ],
)
def test_video_without_a_gl_backend_is_one_line(tmp_path, args, env, expected):
    # A fresh process each: MuJoCo picks its GL backend once, at import.
    res = _gorl("validate", "--config", SMOKE, *args, "--video", "true", cwd=tmp_path, **env)
    if res.returncode == 0:
        pytest.skip(f"rendering works here even with {env}")
    line = _one_error_line(res)
    assert expected in line, line
    if env.get("MUJOCO_GL") == "egl":
        assert "MUJOCO_GL=osmesa" in line  # says what to do
    assert not list(tmp_path.glob("runs/**/*.mp4"))


def test_video_of_a_task_without_a_camera_is_one_line(tmp_path, gorl_in_process):
    # Refused before any GL is touched, so in this process.
    line = _one_error_line(gorl_in_process("validate", "--config", SMOKE, "--video", "true"))
    assert "--video renders dm_control suite tasks; model.env (toy-bandit)" in line, line
    assert not list(tmp_path.glob("runs/**/*.mp4"))


def test_progress_bar_reads_100_percent_when_the_last_rollout_overshoots_the_budget(capsys):
    """Rollouts come in fixed sizes, so a run can end a few frames past its budget; tqdm prints
    such a bar as "0% ... n/?" unless the total follows."""
    from types import SimpleNamespace

    from gorl.progress import GoRLProgressBar

    module = SimpleNamespace(loop_state=SimpleNamespace(stage=1, phase="done", frames=151_552),
                             loop_cfg=SimpleNamespace(total_frames=150_000), last_eval_return=82.6)
    trainer = SimpleNamespace(lightning_module=module, progress_bar_metrics={})
    pbar = GoRLProgressBar()
    pbar._trainer = trainer
    pbar.train_progress_bar = pbar.init_train_tqdm()
    pbar._show(trainer, module)
    last = re.split(r"[\r\n]", capsys.readouterr().err)[-1]
    assert re.search(r"^done: 100%.*152k/152k frames", last), last
