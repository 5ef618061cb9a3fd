"""Logging the policy's action distribution at fixed probe states, so a notebook can show it.

GoRL's central claim is about *shapes*: the latent-Gaussian-plus-decoder policy can become
multimodal while Gaussian PPO stays unimodal. Scalars such as entropy cannot show that, so
:class:`ActionDistributionLogger` stores raw action samples at a handful of fixed states, and
:mod:`gorl.analysis` turns them into histograms, KDEs, dip tests and mode counts.

When it samples
    Once after the first iteration (the probes are chosen then), at every change of
    ``(loop_state.stage, loop_state.phase)``, every ``every_frames`` encoder-phase env frames, and at
    train end (unless nothing changed since the last snapshot). A snapshot taken at a phase change
    shows the policy *as the loop leaves the old phase*: e.g. the one labelled ``stage 0, phase
    "decoder"`` is stage 0's best encoder (the one whose data the decoder is fitted on); the one
    labelled ``stage k, phase "encoder"`` right after a refinement is the reset encoder through the
    new decoder. The last snapshot of stage ``k`` is therefore the end of stage ``k``.

Where
    ``<log_dir>/distributions/``: ``log_dir`` is ``trainer.log_dir`` (the version folder of a CSV
    or TensorBoard logger, next to ``metrics.csv``), ``<save_dir>/<name>/<version>`` for other
    loggers (W&B: next to the run's checkpoints), ``trainer.default_root_dir`` without a logger.

Probe states
    Chosen once per run from the first encoder-phase rollout (``pl_module.last_rollout``): its
    observations are flattened to rows and ``num_probes`` rows are taken at evenly spaced quantiles
    of the first principal component, so the probes cover the spread of visited states rather than
    near-duplicates from consecutive steps. They are kept in the callback's ``state_dict`` (a
    resumed run uses the same states) and written to ``<log_dir>/distributions/probes.npz``
    (array ``probe_obs [P, obs_dim]``).

Files (an open format: NumPy ``.npz``, readable with ``numpy.load`` from any language binding)
    ``<log_dir>/distributions/snapshot_{index:04d}.npz``, one per snapshot, ``index`` counting on
    across a resume, with

    ============================  ============================================================
    ``probe_obs``                 ``float32 [P, obs_dim]`` the probe states (same in every file)
    ``policy_actions``            ``float32 [P, S, act_dim]`` env actions of the full policy:
                                  ``eps ~ encoder(s)``, ``tanh(decoder(s, eps))`` on the action box
    ``policy_pre_tanh``           ``float32 [P, S, act_dim]`` the same samples before the squash
    ``policy_latents``            ``float32 [P, S, latent_dim]`` the encoder samples ``eps``
    ``prior_actions``             ``float32 [P, S, act_dim]`` the acting decoder under the prior:
                                  ``eps ~ N(0, I)``, ``tanh(decoder(s, eps))``
    ``prior_pre_tanh``            ``float32 [P, S, act_dim]`` the same before the squash
    ``stage``                     ``int64`` scalar, ``loop_state.stage`` when sampled
    ``phase``                     ``str`` scalar, ``loop_state.phase`` (encoder/decoder/done)
    ``frames``                    ``int64`` scalar, encoder-phase env frames so far
    ``iteration``                 ``int64`` scalar, loop iterations so far
    ``index``                     ``int64`` scalar, the snapshot number
    ``event``                     ``str`` scalar: ``start``, ``phase`` (a phase change),
                                  ``frames`` (periodic) or ``train_end``
    ============================  ============================================================

    Read one with ``dict(np.load(path))`` (strings come back as 0-d ``<U`` arrays; ``str(x)``).

Cost and side effects
    ``2 * P * S`` rows through the encoder and decoder under ``torch.no_grad`` (16,000 rows by
    default: tens of milliseconds on a CPU), only on global rank 0, only at the moments above. A
    file holds ``20 * P * S * act_dim`` bytes (about 1 MB for a 6-D action at the defaults; 180 MB
    for a 180M-frame run at ``every_frames=1e6``). The sampling runs inside
    ``torch.random.fork_rng`` with its own seed (from the run seed and the snapshot index), so the
    training run is the same with or without this callback (tested), and snapshots are reproducible.
    With a TensorBoard logger the samples also go to ``add_histogram``; with a W&B logger, to
    ``wandb.Histogram``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

SNAPSHOT_PATTERN = "snapshot_{index:04d}.npz"
PROBES_FILE = "probes.npz"
SUBDIR = "distributions"


def run_log_dir(trainer: pl.Trainer) -> str:
    """The run's own directory: ``trainer.log_dir`` for CSV / TensorBoard loggers (the version
    folder), else ``<save_dir>/<name>/<version>`` as ``ModelCheckpoint`` uses (e.g. W&B's run id:
    its ``log_dir`` is the shared ``save_dir``, where runs would overwrite each other's files);
    ``default_root_dir`` without a logger."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    if trainer.loggers and not isinstance(trainer.loggers[0], (CSVLogger, TensorBoardLogger)):
        logger = trainer.loggers[0]
        version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
        return trainer.strategy.broadcast(os.path.join(logger.save_dir or trainer.default_root_dir, str(logger.name), version))
    return trainer.log_dir or trainer.default_root_dir


def choose_probes(observations: torch.Tensor, num_probes: int, max_rows: int = 4096) -> torch.Tensor:
    """``num_probes`` rows of ``observations [..., obs_dim]`` spread along its main direction of variation.

    Rows are projected on the first principal component (of at most ``max_rows`` evenly spaced
    rows, to stay cheap on GPU-sized rollouts) and taken at the quantiles ``(i + 1/2) / P``.
    """
    obs = observations.detach().reshape(-1, observations.shape[-1]).float().cpu()
    if obs.shape[0] > max_rows:
        obs = obs[torch.linspace(0, obs.shape[0] - 1, max_rows).long()]
    centred = obs - obs.mean(0)
    if obs.shape[0] > 1 and centred.abs().max() > 0:
        direction = torch.linalg.svd(centred, full_matrices=False).Vh[0]
        order = torch.argsort(centred @ direction, stable=True)
    else:
        order = torch.arange(obs.shape[0])
    quantiles = (torch.arange(num_probes, dtype=torch.float64) + 0.5) / num_probes
    rows = order[(quantiles * obs.shape[0]).long().clamp_max(obs.shape[0] - 1)]
    return obs[rows].clone()


@torch.no_grad()
def sample_actions(pl_module: pl.LightningModule, probe_obs: torch.Tensor, samples: int, seed: int) -> dict[str, np.ndarray]:
    """Draw ``samples`` actions per probe from the full policy and from the acting decoder's prior.

    Works for any :class:`~gorl.encoders.LatentEncoder`: the latents come from ``encoder.act``
    (stochastic), under a forked and re-seeded RNG so the caller's random stream is untouched.
    """
    device = pl_module.device
    P, S = probe_obs.shape[0], samples
    obs = probe_obs.to(device).repeat_interleave(S, dim=0)  # [P*S, obs_dim], probe-major
    decoder = pl_module.acting_decoder()
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        # Seed only the generators forked here (torch.manual_seed would reseed every GPU).
        torch.default_generator.manual_seed(seed)
        for index in cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        acted = pl_module.encoder.act(obs, False)
        latent = acted.get("squashed_latent", acted["latent"])  # what the decoder is given (bounded semantics: tanh'd)
        policy_pre = decoder.decode(obs, latent)
        eps = torch.randn(obs.shape[0], latent.shape[-1], device=device)
        prior_pre = decoder.decode(obs, eps)
    out = {
        "policy_latents": latent,
        "policy_pre_tanh": policy_pre,
        "policy_actions": pl_module.squash(policy_pre),
        "prior_pre_tanh": prior_pre,
        "prior_actions": pl_module.squash(prior_pre),
    }
    return {k: v.float().reshape(P, S, -1).cpu().numpy() for k, v in out.items()}


class ActionDistributionLogger(pl.Callback):
    """Write action samples at fixed probe states at phase boundaries, periodically and at the end.

    See the module docstring for when it samples and the file format.

    Args:
        every_frames: encoder-phase env frames between periodic snapshots (phase changes always
            snapshot). ``0`` or less: phase changes and train end only.
        num_probes: number of probe states ``P``.
        samples: actions drawn per probe state and per distribution ``S``.
        histograms: also send histograms to a TensorBoard / W&B logger when one is attached.
    """

    def __init__(self, every_frames: float = 1e6, num_probes: int = 8, samples: int = 1000, histograms: bool = True) -> None:
        if num_probes < 1 or samples < 1:
            raise ValueError(f"num_probes and samples must be >= 1, got {num_probes} and {samples}")
        self.every_frames = every_frames
        self.num_probes = int(num_probes)
        self.samples = int(samples)
        self.histograms = histograms
        self.probes: torch.Tensor | None = None
        self.index = 0  # number of snapshots written so far (the next file's index)
        self._last_frames = 0
        self._last_key: tuple[int, str, int] | None = None  # (stage, phase, frames) of the last snapshot
        self._dir: Path | None = None

    # --- where ------------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Both routes broadcast from rank 0, so every rank must ask, and here (not in a
        # rank-0-only branch later) is where they all do.
        self._dir = Path(run_log_dir(trainer)) / SUBDIR

    @property
    def directory(self) -> Path | None:
        return self._dir

    # --- when -------------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not trainer.is_global_zero:
            return
        st = pl_module.loop_state
        if self.probes is None:
            rollout = getattr(pl_module, "last_rollout", None)
            if rollout is None:
                return  # no encoder-phase rollout yet
            self.probes = choose_probes(rollout.get("observation"), self.num_probes)
        if self._last_key is None:
            event = "start"
        elif (st.stage, st.phase) != self._last_key[:2]:
            event = "phase"
        elif self.every_frames and self.every_frames > 0 and st.frames - self._last_frames >= self.every_frames:
            event = "frames"
        else:
            return
        self.snapshot(trainer, pl_module, event)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        st = pl_module.loop_state
        if trainer.is_global_zero and self.probes is not None and self._last_key != (st.stage, st.phase, st.frames):
            self.snapshot(trainer, pl_module, "train_end")

    # --- what -------------------------------------------------------------------------------------
    def snapshot(self, trainer: pl.Trainer, pl_module: pl.LightningModule, event: str) -> Path:
        """Sample now and write the next ``snapshot_XXXX.npz``; returns its path."""
        st = pl_module.loop_state
        assert self.probes is not None and self._dir is not None
        self._dir.mkdir(parents=True, exist_ok=True)
        probes_path = self._dir / PROBES_FILE
        if not probes_path.exists():  # also after a resume into a new log directory
            np.savez(probes_path, probe_obs=self.probes.numpy())
        seed = int(getattr(pl_module, "seed", 0)) * 1_000_003 + self.index
        arrays = sample_actions(pl_module, self.probes, self.samples, seed)
        path = self._dir / SNAPSHOT_PATTERN.format(index=self.index)
        np.savez(
            path,
            probe_obs=self.probes.numpy(),
            **arrays,
            stage=np.int64(st.stage),
            phase=np.str_(st.phase),
            frames=np.int64(st.frames),
            iteration=np.int64(getattr(st, "iteration", 0)),
            index=np.int64(self.index),
            event=np.str_(event),
        )
        if self.histograms:
            self._log_histograms(trainer, arrays, st.frames)
        self.index += 1
        self._last_frames = st.frames
        self._last_key = (st.stage, st.phase, st.frames)
        return path

    def _log_histograms(self, trainer: pl.Trainer, arrays: dict[str, np.ndarray], frames: int) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

        named = {
            f"distributions/probe{p}/{kind}_action{d}": arrays[f"{kind}_actions"][p, :, d]
            for kind in ("policy", "prior")
            for p in range(arrays["policy_actions"].shape[0])
            for d in range(arrays["policy_actions"].shape[2])
        }
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for tag, values in named.items():
                    logger.experiment.add_histogram(tag, values, global_step=int(frames))
            elif isinstance(logger, WandbLogger):
                import wandb

                logger.experiment.log(
                    {**{tag: wandb.Histogram(values) for tag, values in named.items()}, "trainer/global_step": trainer.global_step}
                )

    # --- resume -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        # Plain tensors, ints and strings only: checkpoints are loaded with weights_only=True.
        return {
            "probes": self.probes,
            "index": self.index,
            "last_frames": self._last_frames,
            "last_key": None if self._last_key is None else list(self._last_key),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        probes = state_dict.get("probes")
        self.probes = None if probes is None else probes.detach().cpu().float()
        self.index = int(state_dict.get("index", 0))
        self._last_frames = int(state_dict.get("last_frames", 0))
        key = state_dict.get("last_key")
        self._last_key = None if key is None else (int(key[0]), str(key[1]), int(key[2]))
