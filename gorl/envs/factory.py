"""Build the training / evaluation env of a run from its :class:`EnvConfig`.

One place decides what an env is, so every method (PPO, GoRL, baselines) sees the same
observation key, action range and batch layout:

- ``task: cheetah-run``: a :class:`~gorl.envs.dmc.DMControlBatchEnv` of ``num_envs`` instances;
  with ``num_workers > 1`` it steps ``num_workers * num_envs`` instances as one flat batch, one
  shard per process (this one included), which is how a run uses several cores;
- ``backend: mjx``: the same suite task on MuJoCo Playground's MJX port (:mod:`gorl.envs.mjx`),
  the authors' simulator, one batch of ``num_envs`` on ``device`` (one process: MJX batches itself);
- ``task: toy-bandit``: the toy multimodal task of :mod:`gorl.envs.bandit`;
- ``factory: my_pkg.envs:make_env``: bring your own env — any callable returning a TorchRL
  ``EnvBase`` with a continuous, bounded action spec. Unbatched envs are stacked with TorchRL's
  ``SerialEnv``/``ParallelEnv``; observation entries other than ``observation`` are concatenated
  into one ``observation`` vector.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Literal

import torch
from torchrl.data import Bounded, Composite
from torchrl.envs import CatTensors, EnvBase, EnvCreator, ParallelEnv, SerialEnv, TransformedEnv

from gorl.errors import ConfigError

TOY_TASKS = ("toy-bandit",)
BACKENDS = ("dmc", "mjx")


@dataclass
class EnvConfig:
    """Which env a run trains on, and how many copies step together.

    Attributes:
        task: dm_control suite task ``domain-task`` (e.g. ``hopper-stand``) or ``toy-bandit``.
            Ignored when ``factory`` is set.
        num_envs: env copies stepped as one batch in each process.
        num_workers: processes; each steps ``num_envs`` copies (1 = in-process; ``auto`` = one per
            CPU core this process may use, divided among the ranks of a multi-process run on one
            machine, see :func:`auto_workers`; this process steps one shard itself). dm_control tasks
            give one flat batch of ``num_workers * num_envs``; other envs run under TorchRL's
            ``ParallelEnv`` with batch ``[num_workers, num_envs]``.
        factory: import path ``module:function`` (or ``module.function``) of your own env maker.
        factory_kwargs: keyword arguments for ``factory``.
        eval_envs: copies used for evaluation (one episode each).
        backend: simulator of a suite task: ``dmc`` (dm_control, CPU processes) or ``mjx``
            (MuJoCo Playground on JAX; needs the ``mjx`` extra).
        mjx_impl: MJX pipeline for ``backend: mjx``: ``jax`` (MJX's own, faster on our CPU once
            compiled) or ``warp`` (Playground 0.2.0's default; :mod:`gorl.envs.mjx` compares them).
        device: where the env's outputs live: ``cpu``, or ``cuda[:k]`` for ``backend: mjx`` on a
            GPU (the simulator runs there and hands its arrays to torch without a copy).
    """

    task: str = "cheetah-run"
    num_envs: int = 16
    num_workers: int | Literal["auto"] = 1
    factory: str | None = None
    factory_kwargs: dict[str, Any] = field(default_factory=dict)
    eval_envs: int = 8
    backend: str = "dmc"
    mjx_impl: str = "jax"
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"env.backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.backend == "mjx":
            # The names live with the backend (mjx imports no JAX until an env is built, and factory
            # imports mjx only here and where it builds one: the import goes one way).
            from gorl.envs.mjx import check_impl

            check_impl(self.mjx_impl)
            if self.factory is not None or self.task in TOY_TASKS:
                raise ConfigError("env.backend: mjx runs dm_control suite tasks only (not env.factory or toy tasks)")
            if self.num_workers == "auto":
                self.num_workers = 1  # MJX steps the whole batch in one call; processes add nothing
            elif self.num_workers != 1:
                raise ConfigError(f"env.num_workers must be 1 with env.backend: mjx (it batches on one device), got {self.num_workers}")
        elif self.device != "cpu":
            raise ConfigError(f"env.device {self.device!r} needs env.backend: mjx (dm_control and custom envs step on the CPU)")
        if self.num_workers == "auto":
            self.num_workers = auto_workers()
        elif isinstance(self.num_workers, str):
            raise ConfigError(f"env.num_workers must be a positive integer or 'auto', got {self.num_workers!r}")
        for name in ("num_envs", "num_workers", "eval_envs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"env.{name} must be >= 1, got {getattr(self, name)}")


def auto_workers() -> int:
    """Env processes for ``num_workers: auto``: the CPU cores this process may run on (its affinity
    mask, not the machine's count), shared among the ranks of a multi-process run on this machine
    (``LOCAL_WORLD_SIZE``, set by Lightning and torchrun), at least 1. The parent steps one shard,
    so this many processes use this many cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, cores // ranks)


def _import(path: str) -> Callable[..., EnvBase]:
    module, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"env.factory {path!r} cannot be imported: {err}") from None


def _base_maker(cfg: EnvConfig, seed: int, num_envs: int, side_envs: int = 0, side_seed: int = 0) -> tuple[Callable[[], EnvBase], bool]:
    """A zero-argument env maker and whether the env it makes is already batched."""
    if cfg.factory is not None:
        return partial(_import(cfg.factory), **cfg.factory_kwargs), False
    if cfg.task in TOY_TASKS:
        from gorl.envs.bandit import ToyBanditEnv

        return partial(ToyBanditEnv, num_envs=num_envs, seed=seed), True
    if cfg.backend == "mjx":
        from gorl.envs.mjx import MJXBatchEnv, check_task

        check_task(cfg.task)
        return partial(MJXBatchEnv, cfg.task, num_envs=num_envs, seed=seed, device=cfg.device, impl=cfg.mjx_impl,
                       side_envs=side_envs, side_seed=side_seed), True
    from gorl.envs.dmc import DMControlBatchEnv, parse_task

    parse_task(cfg.task)  # fail fast with the list of valid tasks, before any process starts
    return partial(DMControlBatchEnv, cfg.task, num_envs=num_envs, seed=seed), True


def _is_dm_control(cfg: EnvConfig) -> bool:
    return cfg.factory is None and cfg.task not in TOY_TASKS and cfg.backend == "dmc"


def _flatten_observation(env: EnvBase) -> EnvBase:
    keys = list(env.observation_spec.keys(True, True))
    if keys == ["observation"]:
        return env
    if not keys:
        raise ConfigError("the env has no observation entries")
    return TransformedEnv(env, CatTensors(in_keys=keys, out_key="observation", del_keys=True))


def check_action_spec(env: EnvBase) -> None:
    """GoRL squashes actions with tanh into a box: the action spec must be continuous and bounded."""
    spec = env.action_spec
    if isinstance(spec, Composite):
        spec = spec[env.action_key]
    if not isinstance(spec, Bounded) or not spec.dtype.is_floating_point:
        raise ConfigError(
            f"unsupported action spec {type(spec).__name__} ({spec.dtype}); GoRL needs a continuous "
            "bounded action spec (torchrl.data.Bounded with float dtype)"
        )
    if not (torch.isfinite(spec.space.low).all() and torch.isfinite(spec.space.high).all()):
        raise ConfigError("unsupported action spec: its bounds must be finite")


def make_env(cfg: EnvConfig, seed: int, num_envs: int | None = None, num_workers: int | None = None,
             side_envs: int = 0, side_seed: int = 0) -> EnvBase:
    """The env of ``cfg`` with per-env seeds ``seed + i`` (i over every copy of every worker);
    ``side_envs`` extra lanes seeded ``side_seed + i`` (the MJX backend: ``loop.eval_lanes``)."""
    if side_envs and cfg.backend != "mjx":
        raise ConfigError("side lanes (loop.eval_lanes) need env.backend: mjx")
    num_envs = cfg.num_envs if num_envs is None else num_envs
    num_workers = cfg.num_workers if num_workers is None else num_workers
    if _is_dm_control(cfg) and num_workers > 1:
        # dm_control shards one flat batch over processes itself (gorl/envs/dmc.py says why).
        from gorl.envs.dmc import DMControlBatchEnv

        env = DMControlBatchEnv(cfg.task, num_envs=num_envs * num_workers, seed=seed, num_workers=num_workers)
        env.set_seed(seed)
        return env
    makers, batched = [], True
    for w in range(num_workers):
        maker, batched = _base_maker(cfg, seed + w * num_envs, num_envs, side_envs, side_seed)
        makers.append(maker)
    if batched:
        env = makers[0]() if num_workers == 1 else ParallelEnv(num_workers, [EnvCreator(m) for m in makers])
    else:
        # An unbatched user env: one copy per slot, stacked by TorchRL.
        maker = makers[0]
        copies = num_envs * num_workers
        env = SerialEnv(copies, maker) if num_workers == 1 else ParallelEnv(copies, EnvCreator(maker))
    env = _flatten_observation(env)
    check_action_spec(env)
    env.set_seed(seed)
    return env


def env_dims(cfg: EnvConfig) -> tuple[int, int, torch.Tensor, torch.Tensor]:
    """(obs_dim, act_dim, action_low, action_high) of ``cfg``'s env, from one small probe env
    (for MJX from the model, without compiling a one-env batch)."""
    if cfg.backend == "mjx":
        from gorl.envs.mjx import mjx_dims

        obs_dim, act_dim = mjx_dims(cfg.task, cfg.mjx_impl)
        return obs_dim, act_dim, -torch.ones(act_dim), torch.ones(act_dim)
    env = make_env(cfg, seed=0, num_envs=1, num_workers=1)
    try:
        spec = env.action_spec
        obs_dim = env.observation_spec["observation"].shape[-1]
        low = spec.space.low.reshape(-1, spec.shape[-1])[0].clone()
        high = spec.space.high.reshape(-1, spec.shape[-1])[0].clone()
        return int(obs_dim), int(spec.shape[-1]), low, high
    finally:
        env.close()
