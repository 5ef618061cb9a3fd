"""``--video``: an MP4 of one deterministic episode, rendered offscreen by MuJoCo.

Optional on two counts, so a plain install and a headless machine still train and evaluate:

- MuJoCo needs an OpenGL backend, chosen by ``MUJOCO_GL``: ``egl`` (headless; an NVIDIA driver,
  or Mesa's software EGL: Debian ``libegl1 libgl1-mesa-dri``), ``osmesa`` (headless, software:
  ``libosmesa6``) or ``glfw`` (a display). The CLI keeps rendering off (``disabled``) unless
  ``--video`` asks for it, then uses ``egl`` unless you set ``MUJOCO_GL`` yourself;
- writing MP4 needs ``imageio-ffmpeg`` (it ships its own ffmpeg binary): ``pip install 'gorl[video]'``.

Both are checked before anything is built (:func:`check_video_support`), so a missing piece costs
one line, ``gorl: error: ...``, not a run. The episode is the first evaluation episode (env copy 0,
the evaluation seed): the video shows what ``eval/return`` measured.
"""

from __future__ import annotations

import gc
import math
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType, set_exploration_type, step_mdp

from gorl.envs.factory import TOY_TASKS, make_env
from gorl.errors import ConfigError, GoRLError

# GoRLSystem seeds evaluation env copy i of rank 0 with seed + EVAL_SEED_OFFSET + i.
EVAL_SEED_OFFSET = 1_000_000
GL_OFF = ("disable", "disabled", "off", "false", "0")
GL_HINT = (
    "headless: MUJOCO_GL=egl (NVIDIA driver, or Mesa: apt-get install libegl1 libgl1-mesa-dri) or "
    "MUJOCO_GL=osmesa (apt-get install libosmesa6); with a display: MUJOCO_GL=glfw"
)


class RenderError(GoRLError):
    """Video requested but MuJoCo cannot render, or the MP4 writer is missing."""


@dataclass
class VideoSettings:
    """How ``--video`` renders (``--video true`` takes these defaults).

    Attributes:
        height: frame height in pixels (even; at most the model's offscreen buffer, 480 in the suite).
        width: frame width in pixels (even; at most 640 in the suite).
        camera_id: MuJoCo camera (0 = the task's first camera, usually tracking the body).
        max_fps: frame-rate cap; control steps are skipped evenly above it (cheetah runs at 100 Hz).
    """

    height: int = 240
    width: int = 320
    camera_id: int = 0
    max_fps: int = 50

    def __post_init__(self) -> None:
        if self.height < 2 or self.width < 2 or self.height % 2 or self.width % 2:
            raise ConfigError(f"video height and width must be even and >= 2 (MP4/yuv420p), got {self.height}x{self.width}")
        if self.max_fps < 1:
            raise ConfigError(f"video max_fps must be >= 1, got {self.max_fps}")


def check_video_support(task: str, factory: str | None = None) -> None:
    """Fail fast, before envs and weights are built, if ``--video`` cannot work here."""
    if factory is not None or task in TOY_TASKS:
        raise RenderError(f"--video renders dm_control suite tasks; model.env ({factory or task}) has no MuJoCo camera")
    check_gl()
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        raise RenderError("--video writes MP4 with imageio-ffmpeg, which is not installed: pip install 'gorl[video]'") from None


def check_gl() -> None:
    """Render one tiny frame with the ``MUJOCO_GL`` backend, or raise :class:`RenderError`."""
    backend = os.environ.get("MUJOCO_GL", "")
    if backend.strip().lower() in GL_OFF:
        raise RenderError(f"--video needs MuJoCo rendering, but MUJOCO_GL={backend} turns it off; {GL_HINT}")
    # A failed probe leaves half-built GL contexts whose ``__del__`` raises, and GLFW warns on every
    # call after failing: silence both while probing, so the error below is the one line printed.
    hook, sys.unraisablehook = sys.unraisablehook, lambda _: None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                # dm_control loads its backend at import; a missing library fails there or at the first frame.
                from dm_control import mujoco as dm_mujoco

                physics = dm_mujoco.Physics.from_xml_string("<mujoco><worldbody><light pos='0 0 1'/></worldbody></mujoco>")
                physics.render(16, 16)
                physics.free()
                return
            except Exception as err:  # noqa: BLE001  (ImportError, RuntimeError, AttributeError, FatalError...)
                problem = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:200]}"
            gc.collect()
    finally:
        sys.unraisablehook = hook
    raise RenderError(f"--video: MuJoCo cannot render with MUJOCO_GL={backend or '(unset)'} ({problem}); {GL_HINT}")


def _suite_env_0(env: EnvBase) -> Any:
    """The dm_control ``Environment`` of env copy 0: :class:`~gorl.envs.dmc.DMControlBatchEnv`
    steps it in-process (its first shard, ``_local``), so its physics can be rendered directly."""
    base = getattr(env, "base_env", env)
    shard = getattr(base, "_local", None)
    suite_envs = getattr(shard, "envs", None) or getattr(base, "_envs", None)
    if not suite_envs or not hasattr(suite_envs[0], "physics"):
        raise RenderError(f"--video renders dm_control suite tasks; {type(base).__name__} has no MuJoCo physics in this process")
    return suite_envs[0]


@torch.no_grad()
def record_episode(module: pl.LightningModule, settings: VideoSettings) -> tuple[np.ndarray, float, float]:
    """Frames ``[T, H, W, 3]`` (uint8), frame rate and return of one deterministic episode of
    ``module``'s policy (the decoder its loop state selects), on evaluation env copy 0."""
    env = make_env(module.env_cfg, seed=module.seed + EVAL_SEED_OFFSET, num_envs=1, num_workers=1)
    try:
        suite_env = _suite_env_0(env)
        physics = suite_env.physics
        dt = suite_env.control_timestep()
        skip = max(1, math.ceil(1.0 / (dt * settings.max_fps) - 1e-9))

        def frame() -> np.ndarray:
            return physics.render(settings.height, settings.width, camera_id=settings.camera_id)

        frames, total = [frame()], 0.0
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            td = env.reset()
            for t in range(module.loop_cfg.eval_max_steps):
                td = env.step(module.policy(td.to(module.device)).to(env.device))
                total += float(td["next", "reward"].sum())
                if (t + 1) % skip == 0:
                    frames.append(frame())
                if td["next", "done"].any():
                    break
                td = step_mdp(td)
        return np.stack(frames), 1.0 / (dt * skip), total
    finally:
        env.close()


def write_mp4(path: Path, frames: np.ndarray, fps: float) -> None:
    """H.264 MP4 through imageio-ffmpeg's bundled ffmpeg (no system ffmpeg needed)."""
    import imageio_ffmpeg

    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames.shape[1:3]
    writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=fps, macro_block_size=2, ffmpeg_log_level="error")
    writer.send(None)  # start the ffmpeg process
    try:
        for f in frames:
            writer.send(np.ascontiguousarray(f))
    finally:
        writer.close()


def run_dir(trainer: pl.Trainer) -> Path:
    """The run's directory, ``<save_dir>/<name>/<version>``: where ``ModelCheckpoint`` puts ``checkpoints/``."""
    if not trainer.loggers:
        return Path(trainer.default_root_dir)
    logger = trainer.loggers[0]
    version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
    return Path(logger.save_dir or trainer.default_root_dir) / str(logger.name) / version


class EpisodeVideo(Callback):
    """Records one deterministic episode after ``gorl validate`` (the checkpoint's policy) or at the
    end of ``gorl fit`` (the final policy) into ``<run dir>/videos/<task>-stage<k>.mp4``, and logs
    it as ``eval/video`` to W&B when a ``WandbLogger`` is in use. Added by the CLI for ``--video``."""

    def __init__(self, settings: VideoSettings | None = None) -> None:
        self.settings = settings or VideoSettings()
        self.path: Path | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._record(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(trainer, pl_module)

    def _record(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        frames, fps, ret = record_episode(module, self.settings)
        st = module.loop_state
        self.path = run_dir(trainer) / "videos" / f"{module.env_cfg.task}-stage{st.stage}.mp4"
        write_mp4(self.path, frames, fps)
        caption = f"{module.env_cfg.task}, stage {st.stage}, {st.frames:,} frames, return {ret:.4g}"
        rank_zero_info(f"[gorl] video of one deterministic episode ({caption}) written to {self.path}")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_video("eval/video", [str(self.path)], caption=[caption])
