"""Batched dm_control suite environments as one TorchRL ``EnvBase``, optionally over several cores.

Why our own env class instead of ``torchrl.envs.DMControlEnv``: TorchRL pays its per-step
TensorDict bookkeeping (spec checks, ``step_mdp``, key routing) once per ``EnvBase.step``. With one
dm_control instance per env that overhead is many times the physics of a step. Here N instances
live in one ``EnvBase`` of batch size
``[N]``: the TensorDict cost is paid once per N physics steps, and the per-env work is a tight
Python loop writing into preallocated NumPy buffers.

Why our own worker processes instead of ``torchrl.envs.ParallelEnv`` (``num_workers > 1``): its
parent process spins on shared-memory events and pays TensorDict traffic per step, so on a small
machine three busy processes share two cores and each runs far below raw physics speed (the rates
are in ``benchmarks/RESULTS.md``'s archive, ``benchmarks/logs/2026-11-22_to_2026-12-01_results.md``). Here the parent steps one shard of the batch itself while each
worker steps another, all writing into one shared-memory block; the parent blocks on a pipe (no
spinning), and a step costs one tiny message per worker. A worker that dies ends the run with
:class:`~gorl.errors.EnvWorkerError` at once instead of hanging.

Conventions (the same for every env GoRL trains on):
- ``observation``: all dm_control observation entries flattened into one float32 vector;
- ``action`` in ``[-1, 1]``, rescaled affinely to the task's bounds when they differ;
- the suite's time limit (1000 steps) is ``truncated`` (GAE bootstraps through it), an episode
  whose dm_control discount is 0 is ``terminated``;
- partial auto-reset through TorchRL's ``_reset`` mask (collectors call it), per-env seeds
  ``seed + i`` for env ``i`` of the whole batch, whichever process steps it.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import traceback
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from gorl.errors import ConfigError, EnvWorkerError

# The six tasks of the paper; any other suite task works too (see ``suite_tasks``).
PAPER_TASKS = ("cheetah-run", "finger-spin", "finger-turn_hard", "fish-swim", "hopper-stand", "walker-walk")


def _quiet_absl() -> None:
    """MuJoCo's model compiler logs a deprecation warning per env built (hopper: 'settotalmass');
    with 64 envs that buries the training log."""
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:  # pragma: no cover - absl comes with dm_control
        pass


def suite_tasks() -> list[str]:
    """All dm_control suite tasks as ``domain-task`` names."""
    from dm_control import suite

    return sorted(f"{d}-{t}" for d, t in suite.ALL_TASKS)


def parse_task(name: str) -> tuple[str, str]:
    """``"cheetah-run"`` -> ``("cheetah", "run")``, or a :class:`ConfigError` listing valid names."""
    valid = suite_tasks()
    if name not in valid:
        raise ConfigError(f"unknown dm_control task {name!r}; valid tasks: {', '.join(valid)}")
    domain, task = name.split("-", 1)
    return domain, task


# --- the shared buffers ----------------------------------------------------------------------------
def _layout(n: int, obs_dim: int, act_dim: int) -> list[tuple[str, tuple[int, ...], np.dtype]]:
    return [
        ("obs", (n, obs_dim), np.dtype(np.float32)),
        ("rew", (n, 1), np.dtype(np.float32)),
        ("term", (n, 1), np.dtype(np.bool_)),
        ("trunc", (n, 1), np.dtype(np.bool_)),
        ("action", (n, act_dim), np.dtype(np.float64)),
        ("reset", (n,), np.dtype(np.bool_)),
    ]


def _views(buf: memoryview, layout) -> dict[str, np.ndarray]:
    """NumPy arrays over one contiguous buffer (8-byte aligned fields)."""
    out, offset = {}, 0
    for name, shape, dtype in layout:
        size = int(np.prod(shape)) * dtype.itemsize
        out[name] = np.ndarray(shape, dtype=dtype, buffer=buf, offset=offset)
        offset += -(-size // 8) * 8
    return out


def _nbytes(layout) -> int:
    return sum(-(-int(np.prod(shape)) * dtype.itemsize // 8) * 8 for _, shape, dtype in layout)


class _Shard:
    """dm_control instances ``rows[0]..rows[1]-1`` of a batch, writing into shared arrays."""

    def __init__(self, task: str, rows: tuple[int, int], seed: int, time_limit: float | None, bufs: dict[str, np.ndarray]) -> None:
        from dm_control import suite

        _quiet_absl()
        domain, task_name = task.split("-", 1)
        self.start, self.stop = rows
        env_kwargs = {} if time_limit is None else {"time_limit": time_limit}
        self.envs = [
            suite.load(domain, task_name, task_kwargs={"random": seed + i}, environment_kwargs=env_kwargs)
            for i in range(self.start, self.stop)
        ]
        spec = self.envs[0].action_spec()
        self.low, self.high = spec.minimum.astype(np.float64), spec.maximum.astype(np.float64)
        self.rescale = not (np.allclose(self.low, -1.0) and np.allclose(self.high, 1.0))
        shapes = [s.shape for s in self.envs[0].observation_spec().values()]
        bounds = np.cumsum([0, *(int(np.prod(shape)) for shape in shapes)])
        self.slices = list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))
        self.bufs = bufs
        # Per env, one view of its observation row per dm_control entry, shaped like the entry:
        # writing an observation is then one plain copy per entry instead of a flatten per entry
        # per step (the gain is in the archive of benchmarks/RESULTS.md, 2026-11-23 runs).
        self._obs_views = (
            [[bufs["obs"][row, a:b].reshape(shape) for (a, b), shape in zip(self.slices, shapes)] for row in range(self.start, self.stop)]
            if "obs" in bufs else []
        )

    def _write_obs(self, k: int, observation: dict) -> None:
        for view, value in zip(self._obs_views[k], observation.values()):
            view[...] = value

    def step(self) -> None:
        b = self.bufs
        action = b["action"][self.start : self.stop]
        if self.rescale:
            action = self.low + (action + 1.0) * 0.5 * (self.high - self.low)
        rew, term, trunc = [], [], []
        for k, env in enumerate(self.envs):
            ts = env.step(action[k])
            self._write_obs(k, ts.observation)
            rew.append(ts.reward or 0.0)
            last = ts.last()
            terminated = last and ts.discount == 0.0
            term.append(terminated)
            trunc.append(last and not terminated)
        rows = slice(self.start, self.stop)
        b["rew"][rows, 0], b["term"][rows, 0], b["trunc"][rows, 0] = rew, term, trunc

    def reset(self) -> None:
        b = self.bufs
        for k, env in enumerate(self.envs):
            row = self.start + k
            if b["reset"][row]:
                self._write_obs(k, env.reset().observation)
                b["term"][row, 0] = False
                b["trunc"][row, 0] = False

    def seed(self, seed: int) -> None:
        for k, env in enumerate(self.envs):
            # dm_control tasks draw initial states from task.random; reseeding it makes the next
            # reset of env i a deterministic function of (seed + i).
            env.task._random = np.random.RandomState(seed + self.start + k)

    def close(self) -> None:
        for env in self.envs:
            env.close()
        self.envs = []


# How long a process polls its pipe before it blocks on it. A process blocked on a pipe is woken by
# the OS, and on a virtual machine that wake-up costs a sizeable part of an env step (the round
# trips are in the archive of benchmarks/RESULTS.md, 2026-11-23). Worker and parent therefore poll between the steps of a rollout (yielding the
# core to any runnable process), and only block when a gap outlasts this: during updates, evaluations.
SPIN_S = 0.02
_yield = getattr(os, "sched_yield", lambda: None)  # not on Windows


def _recv(conn: Connection, spin_s: float = SPIN_S):
    """``conn.recv()``, polling for up to ``spin_s`` before blocking."""
    if spin_s > 0:
        deadline = time.perf_counter() + spin_s
        while not conn.poll():
            if time.perf_counter() > deadline:
                break
            _yield()
    return conn.recv()


def _worker(conn: Connection, shm_name: str, layout, task: str, rows: tuple[int, int], seed: int, time_limit: float | None) -> None:
    """A worker process: build its shard, then serve step / reset / seed commands until close."""
    shm = SharedMemory(name=shm_name)
    shard = None
    try:
        shard = _Shard(task, rows, seed, time_limit, _views(shm.buf, layout))
        conn.send(("ok", None))
        while True:
            cmd, arg = _recv(conn)
            if cmd == "close":
                shard.close()
                break
            try:
                getattr(shard, cmd)(*arg)
                conn.send(("ok", None))
            except Exception:  # noqa: BLE001  (reported to the parent, which raises it)
                conn.send(("error", traceback.format_exc()))
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        if shard is not None:
            shard.bufs = {}
        del shard
        shm.close()


class DMControlBatchEnv(EnvBase):
    """``num_envs`` dm_control instances of one task stepped as one batch ``[num_envs]``.

    Args:
        task: suite task ``domain-task``.
        num_envs: env copies in the batch (all processes together).
        seed: env ``i`` is seeded ``seed + i``.
        time_limit: episode length in seconds (suite default when ``None``).
        num_workers: processes stepping the batch, this one included; the batch is split into
            that many contiguous shards. 1 = everything in this process.
    """

    def __init__(self, task: str, num_envs: int = 16, seed: int = 0, time_limit: float | None = None, num_workers: int = 1) -> None:
        parse_task(task)
        if num_envs < 1:
            raise ConfigError(f"num_envs must be >= 1, got {num_envs}")
        if not 1 <= num_workers <= num_envs:
            raise ConfigError(f"num_workers must be in [1, num_envs={num_envs}], got {num_workers}")
        super().__init__(batch_size=torch.Size([num_envs]), device="cpu")
        self.task, self.num_envs, self.num_workers = task, num_envs, num_workers
        edges = np.linspace(0, num_envs, num_workers + 1).round().astype(int).tolist()
        shards = list(zip(edges[:-1], edges[1:]))

        # Probe dims with a throwaway single env, then allocate the shared block.
        probe = _Shard(task, (0, 1), seed, time_limit, {})
        obs_dim = sum(stop - start for start, stop in probe.slices)
        act_dim = int(probe.low.shape[0])
        probe.close()
        layout = _layout(num_envs, obs_dim, act_dim)
        self._shm: SharedMemory | None = None
        if num_workers > 1:
            self._shm = SharedMemory(create=True, size=_nbytes(layout))
            self._bufs = _views(self._shm.buf, layout)
        else:
            self._bufs = _views(memoryview(bytearray(_nbytes(layout))), layout)
        self._procs: list[mp.Process] = []
        self._conns: list[Connection] = []
        ctx = mp.get_context("spawn")  # fork after torch/OpenMP threads exist is unsafe
        for rows in shards[1:]:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, self._shm.name, layout, task, rows, seed, time_limit), daemon=True)
            proc.start()
            child.close()
            self._procs.append(proc)
            self._conns.append(parent)
        try:
            self._local = _Shard(task, shards[0], seed, time_limit, self._bufs)
            self._wait()  # workers built their envs
        except BaseException:
            self._local = None
            self.close(raise_if_closed=False)
            raise

        self.observation_spec = Composite(observation=Unbounded((num_envs, obs_dim), dtype=torch.float32), shape=(num_envs,))
        self.action_spec = Bounded(-1.0, 1.0, (num_envs, act_dim), dtype=torch.float32)
        self.reward_spec = Unbounded((num_envs, 1), dtype=torch.float32)
        self.done_spec = Composite(
            done=Categorical(2, (num_envs, 1), dtype=torch.bool),
            terminated=Categorical(2, (num_envs, 1), dtype=torch.bool),
            truncated=Categorical(2, (num_envs, 1), dtype=torch.bool),
            shape=(num_envs,),
        )
        # EnvBase marks a new env closed (only TorchRL's wrappers flip it); left so, a collector's
        # shutdown and our teardown would skip close() and leave the worker processes and the
        # shared block to the interpreter's exit.
        self.is_closed = False

    # --- talking to the workers ----------------------------------------------------------------
    def _send(self, cmd: str, *args) -> None:
        for k, conn in enumerate(self._conns):
            try:
                conn.send((cmd, args))
            except (BrokenPipeError, ConnectionResetError, OSError):
                self._died(k)

    def _wait(self) -> None:
        for k, conn in enumerate(self._conns):
            try:
                status, detail = _recv(conn)
            except (EOFError, ConnectionResetError, OSError):
                self._died(k)
            if status == "error":
                raise EnvWorkerError(f"env worker {k + 1} of {self.task} failed:\n{detail}")

    def _died(self, k: int) -> None:
        proc = self._procs[k]
        proc.join(timeout=1.0)
        raise EnvWorkerError(f"env worker process {k + 1} ({self.task}, pid {proc.pid}) died with exit code {proc.exitcode}")

    def _out(self, with_reward: bool) -> TensorDictBase:
        b = self._bufs
        term, trunc = torch.from_numpy(b["term"].copy()), torch.from_numpy(b["trunc"].copy())
        data = {"observation": torch.from_numpy(b["obs"].copy()), "terminated": term, "truncated": trunc, "done": term | trunc}
        if with_reward:
            data["reward"] = torch.from_numpy(b["rew"].copy())
        # On the env's device: a device-less output is re-cast by TorchRL on every step (the cost
        # is in the archive of benchmarks/RESULTS.md, 2026-11-23 evening runs).
        return TensorDict(data, batch_size=self.batch_size, device=self.device)

    # --- EnvBase API -------------------------------------------------------------------------
    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        self._bufs["action"][:] = tensordict.get("action").detach().cpu().numpy()
        self._send("step")
        self._local.step()  # this process's shard, while the workers step theirs
        self._wait()
        return self._out(with_reward=True)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        mask = None if tensordict is None else tensordict.get("_reset", None)
        self._bufs["reset"][:] = True if mask is None else mask.reshape(-1).cpu().numpy()
        self._send("reset")
        self._local.reset()
        self._wait()
        return self._out(with_reward=False)

    def _set_seed(self, seed: int | None) -> None:
        if seed is None:
            return
        self._send("seed", seed)
        self._local.seed(seed)
        self._wait()

    def close(self, *, raise_if_closed: bool = True) -> None:  # noqa: D102
        for conn in self._conns:
            try:
                conn.send(("close", ()))
            except OSError:
                pass
        for proc in self._procs:
            proc.join(timeout=5.0)
            if proc.is_alive():
                proc.terminate()
        self._conns, self._procs = [], []
        if self._local is not None:
            self._local.close()
            self._local.bufs = {}
        if self._shm is not None:
            self._bufs = {}
            self._shm.close()
            self._shm.unlink()
            self._shm = None
        super().close(raise_if_closed=raise_if_closed)
