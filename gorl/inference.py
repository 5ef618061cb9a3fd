"""Using what you trained: ``gorl.load_policy(checkpoint).act(obs)`` and ``gorl export``.

A checkpoint carries everything the acting chain needs: the encoder's weights and observation
statistics, the decoder of the stage it was saved in (the identity in stage 0), and the action box.
:func:`load_policy` rebuilds that chain from the checkpoint alone (no env, no config file): the
classes and constructor arguments of the encoder and decoder are stored in every checkpoint
(``checkpoint["gorl_policy"]``, written by :meth:`gorl.system.GoRLSystem.on_save_checkpoint`).

The chain, top to bottom (:class:`ActingChain`)::

    obs -> (loc, scale) = encoder head(obs)          # latent Gaussian pi_theta(eps | s)
        -> latent = loc + scale * noise              # noise = 0: deterministic (the latent mean)
        -> pre_tanh = decoder.decode(obs, latent)    # identity in stage 0
        -> action = low + (tanh(pre_tanh) + 1) (high - low) / 2

(``model.action_semantics: bounded``: ``latent = tanh(loc + scale * noise)`` and the action clips
``pre_tanh`` to [-1, 1] instead of ``tanh``.)

``gorl export --ckpt_path C --out policy.pt`` writes the same chain as TorchScript: it loads with
``torch.jit.load`` and nothing else, and is called as ``module(obs)`` (deterministic) or
``module(obs, noise)``, with ``obs`` of shape ``[obs_dim]`` or ``[n, obs_dim]`` and ``noise`` shaped like
the actions.
"""

from __future__ import annotations

import importlib
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from gorl.errors import CheckpointError

META_KEY = "gorl_policy"


def policy_meta(system: Any) -> dict:
    """What :func:`load_policy` needs beyond the weights (plain types: loads with weights_only)."""
    def spec(module: nn.Module) -> dict:
        hparams = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(getattr(module, "hparams", {})).items()
                   if k not in ("obs_dim", "act_dim")}
        return {"class_path": f"{type(module).__module__}.{type(module).__qualname__}", "init_args": hparams}

    meta = {"obs_dim": int(system.obs_dim), "act_dim": int(system.act_dim), "encoder": spec(system.encoder),
            "action_semantics": system.action_semantics,
            "decoder": spec(system.decoder), "task": system.env_cfg.task if system.env_cfg.factory is None else system.env_cfg.factory}
    if system.first_decoder is not None:  # model.first_decoder: the decoder acting in stage 1
        meta["first_decoder"] = spec(system.first_decoder)
    return meta


def _build(spec: dict, obs_dim: int, act_dim: int) -> nn.Module:
    module, _, name = spec["class_path"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise CheckpointError(f"checkpoint names class {spec['class_path']}, which cannot be imported here ({err})") from None
    return cls(obs_dim, act_dim, **spec["init_args"])


def _sub_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


class ActingChain(nn.Module):
    """``(obs, noise) -> env action``: encoder head, reparameterised latent, decoder, squash.

    Plain tensor code with no data-dependent Python branches, so :func:`torch.jit.trace` records
    it faithfully (the decoder's fixed number of steps unrolls).
    """

    def __init__(self, head: nn.Module, decoder: nn.Module | None, squash: nn.Module, bounded_latent: bool = False) -> None:
        super().__init__()
        self.head, self.decoder, self.squash = head, decoder, squash
        self.bounded_latent = bounded_latent

    def forward(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        loc, scale = self.head(obs)
        latent = loc + scale * noise
        if self.bounded_latent:  # action_semantics: bounded (a tanh-normal latent)
            latent = torch.tanh(latent)
        pre_tanh = latent if self.decoder is None else self.decoder.decode(obs, latent)
        return self.squash(pre_tanh)


def _as_array(value: Any, what: str) -> np.ndarray | torch.Tensor:
    """A tensor stays a tensor (on its device); anything else becomes a NumPy array."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be a NumPy array, a torch tensor or a nested list of numbers, got {type(value).__name__} ({err})") from None


def flatten_observation(obs: Mapping[str, Any], obs_dim: int) -> np.ndarray:
    """A dm_control observation dict as the flat vector the policy was trained on.

    The training env (:mod:`gorl.envs.dmc`) writes every entry of dm_control's ``OrderedDict``, in
    the dict's own order, flattened row-major, into one vector: this does the same. A dict of
    batched entries (each ``[n, ...]``) gives ``[n, obs_dim]``.
    """
    entries = [np.asarray(v, dtype=np.float64) for v in obs.values()]
    shapes = {k: tuple(np.shape(v)) for k, v in zip(obs.keys(), entries)}
    if sum(e.size for e in entries) == obs_dim:
        return np.concatenate([e.reshape(-1) for e in entries])
    leading = {e.shape[0] for e in entries if e.ndim >= 1}
    if len(leading) == 1 and all(e.ndim >= 1 for e in entries):
        n = leading.pop()
        if sum(e.size // max(n, 1) for e in entries) == obs_dim and n > 0:
            return np.concatenate([e.reshape(n, -1) for e in entries], axis=1)
    raise ValueError(f"observation dict with entries {shapes} flattens to {sum(e.size for e in entries)} values: this policy "
                     f"takes {obs_dim} per observation (dm_control's entries, in order, flattened)")


class Policy:
    """A trained GoRL policy, ready to act: ``policy.act(obs)``.

    Attributes:
        obs_dim, act_dim: sizes of an observation and an action.
        stage: the stage the checkpoint was saved in (its decoder acts; stage 0: the identity).
        task: the env the policy was trained on.
        chain: the :class:`ActingChain` (an ``nn.Module``).
    """

    def __init__(self, chain: ActingChain, obs_dim: int, act_dim: int, stage: int, task: str, device: torch.device) -> None:
        self.chain, self.obs_dim, self.act_dim, self.stage, self.task, self.device = chain, obs_dim, act_dim, stage, task, device

    @torch.no_grad()
    def act(self, obs: np.ndarray | torch.Tensor | Mapping[str, Any], deterministic: bool = True,
            noise: np.ndarray | torch.Tensor | None = None, generator: torch.Generator | None = None) -> np.ndarray | torch.Tensor:
        """Actions in the env's bounds for one observation ``[obs_dim]`` or a batch ``[n, obs_dim]``.

        ``obs``: a NumPy array, a torch tensor (any float or int dtype; computed in float32) or a
        dm_control observation dict (:func:`flatten_observation`). NumPy (or a dict) in, NumPy out;
        torch in, a detached torch tensor out, on the input's device. ``deterministic`` acts with the
        latent mean; otherwise the latent is ``loc + scale * noise`` with ``noise`` given (shaped like
        the actions), or drawn from N(0, I) (with ``generator`` if given).

        Raises:
            ValueError: a wrong shape (the message names the expected and the received shape), or an
                observation or noise with NaN or infinite values: a policy fed those would act on them
                silently.
        """
        if isinstance(obs, Mapping):
            obs = flatten_observation(obs, self.obs_dim)
        raw = _as_array(obs, "observation")
        as_numpy = not isinstance(raw, torch.Tensor)
        out_device = None if as_numpy else raw.device
        shape = tuple(raw.shape)
        if len(shape) not in (1, 2) or shape[-1] != self.obs_dim:
            raise ValueError(f"observation of shape {shape}: this policy takes [{self.obs_dim}] or [n, {self.obs_dim}]")
        x = torch.as_tensor(raw).to(self.device, torch.float32)
        if not bool(torch.isfinite(x).all()):
            rows = torch.nonzero(~torch.isfinite(x.reshape(-1, self.obs_dim)).all(-1)).flatten().tolist()
            where = "" if len(shape) == 1 else f" (rows {rows[:5]}{'...' if len(rows) > 5 else ''})"
            raise ValueError(f"observation has NaN or infinite values{where}: refusing to act on it")
        single = len(shape) == 1
        x = x.unsqueeze(0) if single else x
        want = (self.act_dim,) if single else (x.shape[0], self.act_dim)
        if noise is not None:
            raw_noise = _as_array(noise, "noise")
            if tuple(raw_noise.shape) != want:
                raise ValueError(f"noise of shape {tuple(raw_noise.shape)}: observations of shape {shape} take noise of shape "
                                 f"{list(want)} (one latent draw per action dimension)")
            eps = torch.as_tensor(raw_noise).to(self.device, torch.float32).reshape(x.shape[0], self.act_dim)
            if not bool(torch.isfinite(eps).all()):
                raise ValueError("noise has NaN or infinite values")
        elif deterministic:
            eps = torch.zeros(x.shape[0], self.act_dim, device=self.device)
        else:
            eps = torch.randn(x.shape[0], self.act_dim, generator=generator).to(self.device)
        action = self.chain(x, eps)
        action = action[0] if single else action
        return action.cpu().numpy() if as_numpy else action.to(out_device)

    __call__ = act

    def export(self, path: str | Path) -> Path:
        """Write the acting chain as TorchScript: ``torch.jit.load(path)(obs)`` or ``(obs, noise)``.

        The traced chain sits inside a scripted :class:`ExportedPolicy`, which checks shapes and
        finiteness, casts to float32, accepts one observation or a batch, and returns a tensor that
        does not require grad (``.numpy()`` works on it).
        """
        path = Path(path)
        import lightning.pytorch as pl

        example = (torch.zeros(2, self.obs_dim, device=self.device), torch.zeros(2, self.act_dim, device=self.device))
        # Lightning's own switch for TorchScript (used by LightningModule.to_torchscript): while it
        # is on, a module without a Trainer does not raise when the tracer inspects its attributes.
        lightning_modules = [m for m in self.chain.modules() if isinstance(m, pl.LightningModule)]
        for m in lightning_modules:
            m._jit_is_scripting = True
        try:
            with torch.no_grad(), warnings.catch_warnings():
                # RunningNorm's "no statistics yet" branch reads a tensor as a bool: for a trained
                # policy the statistics are frozen, so recording that branch as a constant is right.
                warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
                traced = torch.jit.trace(self.chain.eval(), example, check_trace=False)
        finally:
            for m in lightning_modules:
                m._jit_is_scripting = False
        scripted = torch.jit.script(ExportedPolicy(traced, self.obs_dim, self.act_dim))
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.jit.save(scripted, str(path))
        return path


class ExportedPolicy(nn.Module):
    """The exported policy's entry point (scripted around the traced :class:`ActingChain`).

    The traced chain alone accepts exactly what it was traced with; a float64 or wrong-width input
    fails deep inside with the interpreter's generic "operation failed" report. This wrapper checks
    the input first and says what it expected, in TorchScript, so the file still needs only torch.
    """

    def __init__(self, chain: nn.Module, obs_dim: int, act_dim: int) -> None:
        super().__init__()
        self.chain, self.obs_dim, self.act_dim = chain, obs_dim, act_dim

    def forward(self, obs: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        single = obs.dim() == 1
        if obs.dim() not in (1, 2) or obs.shape[-1] != self.obs_dim:
            raise ValueError("observation of shape {}: this policy takes [{}] or [n, {}]".format(list(obs.shape), self.obs_dim, self.obs_dim))
        x = obs.to(torch.float32)
        if single:
            x = x.unsqueeze(0)
        if not bool(torch.isfinite(x).all()):
            raise ValueError("observation has NaN or infinite values: refusing to act on it")
        if noise is None:
            eps = torch.zeros(x.shape[0], self.act_dim, dtype=torch.float32, device=x.device)
        else:
            want = [self.act_dim] if single else [x.shape[0], self.act_dim]
            if list(noise.shape) != want:
                raise ValueError("noise of shape {}: observations of shape {} take noise of shape {}".format(list(noise.shape), list(obs.shape), want))
            eps = noise.to(torch.float32).reshape(x.shape[0], self.act_dim)
        with torch.no_grad():
            action = self.chain(x, eps)
        return action[0] if single else action


def read_checkpoint(path: Path, mmap: bool = False) -> dict:
    """A GoRL checkpoint's contents, every failure as one :class:`CheckpointError` in our words.

    Every path that loads a checkpoint (``gorl fit/validate --ckpt_path``, :func:`load_policy`,
    ``gorl export``) comes through here. torch's own messages for a damaged file are written for
    whoever *saved* it (e.g. "please torch.save your checkpoint with
    ``_use_new_zipfile_serialization=True``"), which misleads someone who only holds a truncated copy.
    ``weights_only``: a checkpoint from elsewhere must not be able to run code; ``mmap``: a cheap check.
    """
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        # torch writes checkpoints as zip archives: a file that is not one is damaged (or no checkpoint),
        # not a checkpoint holding objects the weights-only loader refuses.
        if "Weights only load failed" in str(err) and zipfile.is_zipfile(path):
            raise CheckpointError(
                f"checkpoint {path} holds Python objects other than tensors and plain containers; refusing to "
                "unpickle it (weights_only=True: loading it could run code). GoRL never writes such checkpoints"
            ) from None
        raise CheckpointError(_corrupt(path)) from None
    except Exception:  # noqa: BLE001  (any unreadable file is the same user-facing problem)
        raise CheckpointError(_corrupt(path)) from None
    if not isinstance(state, dict) or "gorl_loop" not in state:
        raise CheckpointError(f"{path} is not a GoRL checkpoint")
    return state


def _corrupt(path: Path) -> str:
    return (f"checkpoint {path} is unreadable or corrupt: not a complete checkpoint file ({path.stat().st_size:,} bytes; "
            "a copy cut short, a disk that filled up while it was written, or not a checkpoint at all); "
            "use another one, e.g. an earlier run's checkpoints/last.ckpt")


def load_policy(checkpoint: str | Path, device: str | torch.device = "cpu") -> Policy:
    """The acting policy of a GoRL checkpoint (``last.ckpt`` of any ``gorl fit``), built without an env.

    Raises :class:`~gorl.errors.CheckpointError` for a missing, unreadable or non-GoRL file, and
    for an encoder that is not a latent Gaussian (PPO, SAC); whole-policy baselines (FPO, DPPO)
    act through their own chains.
    """
    path = Path(checkpoint)
    ckpt = read_checkpoint(path)
    meta = ckpt.get(META_KEY)
    if meta is None:
        raise CheckpointError(f"{path} was written before checkpoints carried the policy's classes; resume it once "
                              "(gorl fit --ckpt_path ...) to write a checkpoint load_policy can read")
    device = torch.device(device)
    obs_dim, act_dim = meta["obs_dim"], meta["act_dim"]
    state = ckpt["state_dict"]
    encoder = _build(meta["encoder"], obs_dim, act_dim)
    encoder.load_state_dict(_sub_state(state, "encoder."))
    head = getattr(encoder, "latent_head", None)
    if head is None:
        raise CheckpointError(f"{meta['encoder']['class_path']} has no latent Gaussian head (load_policy supports the PPO and SAC encoders)")
    stage = int(ckpt["gorl_loop"]["state"]["stage"])
    decoder = None
    if stage > 0:
        which = "first_decoder" if (stage == 1 and "first_decoder" in meta) else "decoder"
        decoder = _build(meta[which], obs_dim, act_dim)
        decoder.load_state_dict(_sub_state(state, f"{which}."))
    from gorl.networks import ActionSquash

    semantics = meta.get("action_semantics", "squashed")  # older checkpoints: the only semantics there was
    squash = ActionSquash(state["squash.low"], state["squash.high"], semantics)
    chain = ActingChain(head, decoder, squash, bounded_latent=semantics == "bounded").to(device).eval()
    return Policy(chain, obs_dim, act_dim, stage, meta.get("task", ""), device)
