"""MuJoCo Playground's DM Control Suite ports on MJX (JAX) as one batched TorchRL ``EnvBase``.

Why this backend exists: the paper's numbers come from Playground's MJX ports of the suite, not
from dm_control (the authors' ``requirements.txt`` pins ``playground==0.0.5`` and
``mujoco-mjx==3.3.6``; their scripts build envs with ``mujoco_playground.registry.load``). A user
who sets our curves beside theirs needs the same simulator, and on a GPU MJX steps thousands of envs
in one call. On a CPU dm_control is the faster simulator (``benchmarks/throughput.py`` measures
both); the README says when to pick which.

How a batch step works: the ``N`` envs are one vmapped Playground state, stepped by one jitted call
``step(state, t, action)``. Torch and JAX exchange arrays through DLPack on the env's device, with
no copies: the action tensor is viewed as a JAX array, the outputs are viewed as torch tensors.

Conventions (the same as :class:`~gorl.envs.dmc.DMControlBatchEnv`):

- ``observation``: Playground's flat float32 observation vector;
- ``action`` in ``[-1, 1]``, rescaled affinely to the actuators' ``ctrlrange`` when it differs;
- the episode limit (1000 steps, Playground's ``episode_length``) is ``truncated``: GAE bootstraps
  through it; a state Playground marks ``done`` (its suite ports set it on a non-finite physics
  state) is ``terminated``;
- partial auto-reset through TorchRL's ``_reset`` mask, which collectors pass: every reset draws a
  fresh initial state from env ``i``'s own key stream, seeded ``seed + i``, so env ``i``'s episodes
  do not depend on when the other envs reset. (Playground's Brax training wrapper by default
  returns to a cached first state instead; we follow dm_control, where each episode draws anew.)

Why not TorchRL's own ``MujocoPlaygroundEnv`` / ``MujocoPlaygroundWrapper`` (TorchRL 0.14.1): set
beside this class on the same Playground env object (``benchmarks/playground_env.py``,
``benchmarks/throughput.py --mjx --mjx-torchrl``; benchmarks/RESULTS.md §4 has the tables), it
shares our observation key, float32 outputs on the env's device, actions passed as ``ctrl`` and
DLPack both ways, but not what the loop relies on, and an adapter would have to rebuild this class:

- partial reset: its ``_reset`` ignores the ``_reset`` mask and restarts every env's simulator,
  while TorchRL's reset keeps the other envs' old observations in the TensorDict. When one env ends
  alone (a non-finite state; on the suite ports every env otherwise truncates at the same step) the
  others silently go on from fresh states while the policy sees their old observations. Honouring
  the mask takes a masked merge of states and per-env key streams: this class's ``_reset``.
- time limit: none (Playground's limit lives in its Brax training wrapper) and ``terminated`` is
  ``done``. TorchRL's ``StepCounter(max_steps)`` adds ``truncated``, and a ``step_count`` entry
  that :mod:`gorl.envs.factory` would fold into the observation vector.
- seeding: one key split over the batch at each reset; reproducible and distinct per env, but not
  ``seed + i`` for env ``i``.
- speed: on our 2-core CPU (``impl: jax``, same batch and loop) it stepped at about half our rate
  on cheetah-run once compiled, where the cost outside the physics shows (on hopper-stand, whose
  contacts dominate a step, no difference was resolved), and every new env object of it compiles
  its step again (our jitted functions are shared per task and process). The rule we set was to
  adopt it, behind a thin adapter, only if it met these conventions within 10% of our speed.

Process-wide settings made on import, before JAX starts:

- ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` unless the user set it: by default JAX claims 75% of a
  GPU's memory at its first operation, leaving torch's networks too little. With it off JAX
  allocates what it uses.
- JAX's persistent compilation cache in ``$GORL_JAX_CACHE`` (default ``~/.cache/gorl/jax``), so the
  step function compiles once per machine rather than once per process; ``GORL_JAX_CACHE=off``
  turns it off. MJX's Warp pipeline also caches its kernels (in ``~/.cache/warp``).

Simulator pipeline (``impl``): ``jax`` is MJX's original pure-JAX pipeline, ``warp`` calls MuJoCo
Warp kernels from JAX (Playground 0.2.0's suite configs default to it). Both simulate the same
model with the same solver settings. ``jax`` is our default: on this project's 2-core CPU machine it
stepped faster than ``warp`` once compiled, though its first compile takes longer (the rates and
compile times: ``benchmarks/RESULTS.md`` §4, "The MJX backend against dm_control", from
``benchmarks/throughput.py --mjx``). The authors' pinned ``mujoco-mjx==3.3.6`` / ``playground==0.0.5`` predate
Playground's ``impl`` option as we use it; on a GPU, where Warp is designed to be fast, try
``env.mjx_impl: warp`` (not measured by us).

The Warp pipeline prints "solver iterations limit reached" on every step for most suite tasks:
Playground's ports cap MuJoCo's Newton solver at a few iterations on purpose (cheetah-run and
hopper-stand: 4, where dm_control's models allow 100). We turn that one overflow warning off;
other overflow warnings stay.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import torch  # noqa: E402
from tensordict import TensorDict, TensorDictBase  # noqa: E402
from torchrl.data import Bounded, Categorical, Composite, Unbounded  # noqa: E402
from torchrl.envs import EnvBase  # noqa: E402

from gorl.errors import ConfigError  # noqa: E402

EPISODE_LENGTH = 1000  # Playground's suite default (``episode_length`` in every suite config)
MJX_IMPLS = ("jax", "warp")  # MuJoCo Playground's ``impl`` config key (module docstring: "Simulator pipeline")
INSTALL_HINT = "the mjx backend needs the optional extra: pip install -e '.[mjx]'"


# What MJX prints on import when the optional ``warp-lang`` package is absent: the ``jax`` pipeline
# never uses Warp, so on that path the line only misleads (``_warp`` checks for it where it matters).
_WARP_ABSENT = ("Failed to import warp:", "Failed to import mujoco_warp:")


def _modules() -> tuple[Any, Any]:
    """(jax, mujoco_playground.registry), or a :class:`ConfigError` that says how to install them.

    Needs neither Warp nor its ``warp-lang`` package: only ``mjx_impl: warp`` does (:func:`_warp`)."""
    try:
        import jax

        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            from mujoco_playground import registry
    except ImportError as err:
        raise ConfigError(f"{INSTALL_HINT} ({err})") from None
    for line in printed.getvalue().splitlines():
        if not line.startswith(_WARP_ABSENT):
            print(line)
    _compilation_cache(jax)
    return jax, registry


def _warp() -> Any:
    """The ``warp`` module, for ``mjx_impl: warp`` only; its absence is one clear error."""
    try:
        import warp
    except ImportError:
        raise ConfigError("env.mjx_impl: warp needs the warp-lang package (pip install warp-lang); "
                          "the default env.mjx_impl: jax runs without it") from None
    # Warp's INFO log prints a banner and one line per kernel module it loads (~40 at the first
    # step); warnings and errors still print.
    warp.config.log_level = max(warp.config.log_level, 30)
    return warp


_CACHE_SET = False


def _compilation_cache(jax: Any) -> None:
    global _CACHE_SET
    if _CACHE_SET:
        return
    _CACHE_SET = True
    path = os.environ.get("GORL_JAX_CACHE", str(Path.home() / ".cache" / "gorl" / "jax"))
    if path.strip().lower() in ("off", "0", "none", ""):
        return
    jax.config.update("jax_compilation_cache_dir", path)
    # Cache every compile that takes over a second: the step and reset functions (tens of seconds
    # on a CPU), not the many tiny dispatch-level ones.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def playground_name(task: str) -> str:
    """``"finger-turn_hard"`` -> ``"FingerTurnHard"``: Playground's name of a suite task."""
    return "".join(part.capitalize() for part in re.split(r"[-_]", task))


def mjx_tasks() -> list[str]:
    """The suite tasks Playground ports, as the ``domain-task`` names dm_control uses."""
    from gorl.envs.dmc import suite_tasks

    _, registry = _modules()
    ported = set(registry.dm_control_suite.ALL_ENVS)
    return [t for t in suite_tasks() if playground_name(t) in ported]


def check_task(task: str) -> str:
    """Playground's name for ``task``, or a :class:`ConfigError` listing the ported tasks."""
    _, registry = _modules()
    name = playground_name(task)
    if name not in registry.dm_control_suite.ALL_ENVS:
        raise ConfigError(f"task {task!r} has no MuJoCo Playground port (env.backend: mjx); ported tasks: {', '.join(mjx_tasks())}")
    return name


def check_impl(impl: str) -> None:
    if impl not in MJX_IMPLS:
        raise ConfigError(f"env.mjx_impl must be one of {', '.join(MJX_IMPLS)}, got {impl!r}")


def _quiet_solver_warning(env: Any) -> None:
    """Turn off the Warp pipeline's per-step "solver iterations limit reached" print (the module
    docstring says why it fires); a pure-JAX model has no such flag."""
    model = env.mjx_model
    opt_impl = getattr(model.opt, "_impl", None)
    if opt_impl is None or not hasattr(opt_impl, "warn_overflow"):
        return
    from mujoco.mjx.third_party.mujoco_warp._src.types import OverflowType

    flags = int(opt_impl.warn_overflow) & ~int(OverflowType.ITERATIONS)
    env._mjx_model = model.replace(opt=model.opt.replace(_impl=opt_impl.replace(warn_overflow=flags)))


@lru_cache(maxsize=None)
def _playground_env(task: str, impl: str) -> Any:
    """One Playground env object per (task, impl) and process: its jitted functions below are
    cached with it, so the eval env and the train env of a run share compiled code."""
    check_impl(impl)
    _, registry = _modules()
    if impl == "warp":
        _warp()
    import mujoco

    name = check_task(task)
    # The suite's XML (cheetah, hopper) uses a deprecated compiler attribute; MuJoCo warns at every
    # model compile. dm_control's loader routes that warning to absl, which we quiet (dmc.py); here
    # it goes to MuJoCo's own handler, silenced for the load only.
    previous = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(lambda message: None)
    try:
        env = registry.load(name, config_overrides={"impl": impl})
    finally:
        mujoco.set_mju_user_warning(previous)
    _quiet_solver_warning(env)
    return env


def mjx_dims(task: str, impl: str = "jax") -> tuple[int, int]:
    """(obs_dim, act_dim) of a task without compiling anything."""
    env = _playground_env(task, impl)
    return int(env.observation_size), int(env.action_size)


@lru_cache(maxsize=None)
def _functions(task: str, impl: str, episode_length: int) -> tuple[Any, Any, Any, Any]:
    """The jitted batch ``step``, ``fresh`` (initial states), masked ``merge`` and ``keep`` of a
    task (each compiled per batch size on first use)."""
    jax, _ = _modules()
    jnp = jax.numpy
    env = _playground_env(task, impl)
    low, high = (jnp.asarray(x, dtype=jnp.float32) for x in env.mj_model.actuator_ctrlrange.T)
    rescale = not (bool(jnp.allclose(low, -1.0)) and bool(jnp.allclose(high, 1.0)))
    step_batch, reset_batch = jax.vmap(env.step), jax.vmap(env.reset)

    def step(state, t, action):
        if rescale:
            action = low + (action + 1.0) * 0.5 * (high - low)
        state = step_batch(state, action)
        t = t + 1
        terminated = state.done > 0
        truncated = (t >= episode_length) & ~terminated
        return state, t, state.obs, state.reward[:, None], terminated[:, None], truncated[:, None]

    def fresh(keys):
        split = jax.vmap(jax.random.split)(keys)
        return reset_batch(split[:, 1]), split[:, 0]

    def where_lanes(mask, new_tree, old_tree, scratch_from_new: bool):
        """``new`` in the lanes of ``mask``, ``old`` in the others, leaf by leaf. Leaves without the
        batch dimension (the Warp pipeline's contact buffers, shared by all worlds) are scratch
        space: kept whole from one side (a reset keeps the old, as Playground's own auto-reset does,
        mujoco_playground/_src/wrapper.py, BraxAutoResetWrapper.step)."""
        n = mask.shape[0]

        def pick(new, old):
            if new.ndim == 0 or new.shape[0] != n:
                return new if scratch_from_new else old
            return jnp.where(mask.reshape((n,) + (1,) * (new.ndim - 1)), new, old)

        return jax.tree_util.tree_map(pick, new_tree, old_tree)

    def merge(fresh_state, next_keys, state, t, keys, mask):
        n = mask.shape[0]
        state = where_lanes(mask, fresh_state, state, scratch_from_new=False)
        keys = jnp.where(mask[:, None], next_keys, keys)  # only a reset env moves on in its stream
        return state, jnp.where(mask, 0, t), keys, state.obs, jnp.zeros((n, 1), bool), jnp.zeros((n, 1), bool)

    def keep(new_state, new_t, state, t, mask):
        """A step of the lanes of ``mask`` only: the stepped state there, the old one elsewhere."""
        return where_lanes(mask, new_state, state, scratch_from_new=True), jnp.where(mask, new_t, t)

    # Two functions rather than one: the physics (``fresh``) compiles once per batch size, the
    # masked merge (no physics, compiles in well under a second) is what differs between the first
    # reset (no state yet) and the partial ones.
    return jax.jit(step), jax.jit(fresh), jax.jit(merge), jax.jit(keep)


def _jax_device(jax: Any, device: torch.device) -> Any:
    if device.type == "cpu":
        return jax.devices("cpu")[0]
    if device.type == "cuda":
        try:
            gpus = jax.devices("gpu")
        except RuntimeError as err:
            raise ConfigError(f"env.device {device} needs JAX with CUDA (pip install 'jax[cuda12]'): {err}") from None
        return gpus[device.index or 0]
    raise ConfigError(f"env.device must be cpu or cuda[:k] for the mjx backend, got {device}")


class MJXBatchEnv(EnvBase):
    """``num_envs`` copies of a Playground suite task stepped as one batch ``[num_envs]``.

    Args:
        task: suite task ``domain-task`` (dm_control's names, e.g. ``cheetah-run``).
        num_envs: env copies in the batch.
        seed: env ``i`` draws its initial states from key ``seed + i``.
        device: where the simulator runs and its outputs live (``cpu`` or ``cuda[:k]``).
        impl: MJX pipeline, ``jax`` or ``warp`` (module docstring).
        episode_length: steps before ``truncated`` (Playground's suite default 1000).
        side_envs: extra lanes stepped in the same call as the batch, outside its TorchRL interface:
            ``loop.eval_lanes`` runs evaluation episodes there (:class:`gorl.eval_lanes.LaneEvaluations`,
            attached as :attr:`lanes`). Side lane ``i`` draws its initial states from key
            ``side_seed + i``. The batch's own lanes never see them: their resets, seeds and
            trajectories are those of an env without side lanes (tested).
    """

    def __init__(self, task: str, num_envs: int = 16, seed: int = 0, device: str | torch.device = "cpu",
                 impl: str = "jax", episode_length: int = EPISODE_LENGTH, side_envs: int = 0, side_seed: int = 0) -> None:
        if num_envs < 1:
            raise ConfigError(f"num_envs must be >= 1, got {num_envs}")
        if side_envs < 0:
            raise ConfigError(f"side_envs must be >= 0, got {side_envs}")
        if episode_length < 1:
            raise ConfigError(f"episode_length must be >= 1, got {episode_length}")
        jax, _ = _modules()
        device = torch.device(device)
        self._jax, self._jdev = jax, _jax_device(jax, device)
        super().__init__(batch_size=torch.Size([num_envs]), device=device)
        self.task, self.num_envs, self.impl = task, num_envs, impl
        self.side_envs, self._side_seed = side_envs, side_seed
        self.lanes = None  # what acts in the side lanes and reads their outcomes (gorl.eval_lanes)
        self._side_obs: torch.Tensor | None = None
        self._lane_consts: dict[str, Any] | None = None
        obs_dim, act_dim = mjx_dims(task, impl)
        self._act_dim = act_dim
        self._step_fn, self._fresh_fn, self._merge_fn, self._keep_fn = _functions(task, impl, episode_length)
        self._state = None
        self._t = jax.device_put(jax.numpy.zeros(num_envs + side_envs, jax.numpy.int32), self._jdev)
        self._keys = None
        self._set_seed(seed)

        self.observation_spec = Composite(observation=Unbounded((num_envs, obs_dim), dtype=torch.float32, device=device),
                                          shape=(num_envs,), device=device)
        self.action_spec = Bounded(-1.0, 1.0, (num_envs, act_dim), dtype=torch.float32, device=device)
        self.reward_spec = Unbounded((num_envs, 1), dtype=torch.float32, device=device)
        self.done_spec = Composite(
            done=Categorical(2, (num_envs, 1), dtype=torch.bool, device=device),
            terminated=Categorical(2, (num_envs, 1), dtype=torch.bool, device=device),
            truncated=Categorical(2, (num_envs, 1), dtype=torch.bool, device=device),
            shape=(num_envs,), device=device,
        )
        self.is_closed = False  # see DMControlBatchEnv: TorchRL marks a new env closed

    # --- torch <-> jax, zero-copy --------------------------------------------------------------
    def _to_jax(self, tensor: torch.Tensor) -> Any:
        """A JAX view of a torch tensor on the env's device (copied there first if it is elsewhere:
        the one crossing a policy on another device costs)."""
        tensor = tensor.detach().to(self.device, torch.float32).contiguous()
        return self._jax.dlpack.from_dlpack(tensor)

    def _out(self, obs: Any, reward: Any | None, terminated: Any, truncated: Any) -> TensorDictBase:
        term, trunc = torch.from_dlpack(terminated), torch.from_dlpack(truncated)
        data = {"observation": torch.from_dlpack(obs), "terminated": term, "truncated": trunc, "done": term | trunc}
        if reward is not None:
            data["reward"] = torch.from_dlpack(reward)
        return TensorDict(data, batch_size=data["observation"].shape[:1], device=self.device)

    # --- EnvBase API -------------------------------------------------------------------------
    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        if self._state is None:
            raise RuntimeError("MJXBatchEnv.step before reset")
        action = tensordict.get("action")
        if self.side_envs:
            action = torch.cat([action.to(self.device, torch.float32), self._side_actions()])
        self._state, self._t, obs, rew, term, trunc = self._step_fn(self._state, self._t, self._to_jax(action))
        return self._split(obs, rew, term, trunc)

    def _split(self, obs: Any, rew: Any | None, term: Any, trunc: Any) -> TensorDictBase:
        """The batch's outputs; the side lanes' go to :attr:`lanes`."""
        out = self._out(obs, rew, term, trunc)
        if not self.side_envs:
            return out
        n = self.num_envs
        self._side_obs = out["observation"][n:]
        if rew is not None and self.lanes is not None:
            self.lanes.observe(out["reward"][n:], out["done"][n:])
        return out[:n]

    def _side_actions(self) -> torch.Tensor:
        """The side lanes' actions: :attr:`lanes`' for the lanes it runs (after resetting those
        it starts now), zeros for idle ones."""
        starting = None if self.lanes is None else self.lanes.take_resets()
        if starting is not None:
            self.reset_side(starting)
        if self.lanes is None or not self.lanes.running:
            return self._lane_constants()["idle_action"]
        return self.lanes.act(self._side_obs).to(self.device, torch.float32)

    def _lane_constants(self) -> dict[str, Any]:
        """Tensors every side-lane step would otherwise rebuild: idle actions, the batch's zero
        actions, the lane masks (torch, and JAX's view of the side-only one)."""
        if self._lane_consts is None:
            n, s, dev = self.num_envs, self.side_envs, self.device
            side_only = torch.cat([torch.zeros(n, dtype=torch.bool, device=dev), torch.ones(s, dtype=torch.bool, device=dev)])
            self._lane_consts = {"idle_action": torch.zeros(s, self._act_dim, device=dev),
                                 "batch_action": torch.zeros(n, self._act_dim, device=dev),
                                 "batch_false": torch.zeros(n, dtype=torch.bool, device=dev),
                                 "side_false": torch.zeros(s, dtype=torch.bool, device=dev),
                                 "side_only": side_only, "side_only_j": self._jax.dlpack.from_dlpack(side_only)}
        return self._lane_consts

    def reset_side(self, lanes: torch.Tensor) -> None:
        """Fresh episodes in the side lanes ``lanes`` (a bool mask ``[side_envs]``); the batch's
        lanes are untouched."""
        mask = torch.cat([self._lane_constants()["batch_false"], lanes.to(self.device, torch.bool)])
        fresh, next_keys = self._fresh_fn(self._keys)
        self._state, self._t, self._keys, obs, _, _ = self._merge_fn(fresh, next_keys, self._state, self._t, self._keys,
                                                                      self._jax.dlpack.from_dlpack(mask.contiguous()))
        self._side_obs = torch.from_dlpack(obs)[self.num_envs:]

    @torch.no_grad()
    def step_side(self) -> None:
        """One step of the side lanes alone, the batch's lanes held as they are (their state and
        step count): how evaluations still running are finished when the batch may not move (the
        end of a phase, a checkpoint). It costs a step of the whole batch."""
        consts = self._lane_constants()
        action = torch.cat([consts["batch_action"], self._side_actions()])
        new_state, new_t, obs, rew, term, trunc = self._step_fn(self._state, self._t, self._to_jax(action))
        self._state, self._t = self._keep_fn(new_state, new_t, self._state, self._t, consts["side_only_j"])
        self._split(obs, rew, term, trunc)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        jnp = self._jax.numpy
        mask = None if tensordict is None else tensordict.get("_reset", None)
        total = self.num_envs + self.side_envs
        if mask is None or self._state is None:
            mask_j = self._jax.device_put(jnp.ones(total, bool), self._jdev)
        else:
            mask = mask.reshape(-1).to(self.device, torch.bool)
            if self.side_envs:  # the batch's resets never restart a side lane
                mask = torch.cat([mask, self._lane_constants()["side_false"]])
            mask_j = self._jax.dlpack.from_dlpack(mask.contiguous())
        fresh, next_keys = self._fresh_fn(self._keys)
        state = fresh if self._state is None else self._state
        self._state, self._t, self._keys, obs, term, trunc = self._merge_fn(fresh, next_keys, state, self._t, self._keys, mask_j)
        return self._split(obs, None, term, trunc)

    def any_done(self, tensordict: TensorDictBase) -> bool:
        """TorchRL's check before a partial reset (``_reset`` = the done lanes), with one host read
        per step where TorchRL 0.14's makes two: its ``any_done`` reads ``done.any()`` and returns
        that device tensor, which ``maybe_reset`` reads again (benchmarks/host_reads.py counts
        them). On a GPU each read waits for the queued work."""
        done = tensordict.get("done", None)
        if done is None or not bool(done.any()):
            return False
        tensordict.set("_reset", done.clone())
        return True

    @torch.no_grad()
    def deterministic_returns(self, act: Callable[[torch.Tensor], torch.Tensor], max_steps: int) -> torch.Tensor:
        """Return of each env's next episode under ``act`` (observation -> action in [-1, 1]), from a
        fresh reset: what :func:`gorl.evaluation.evaluate` computes through TorchRL's ``rollout``,
        in a plain loop. Why: an evaluation is 1,000 sequential batch steps, and ``rollout``'s
        per-step TensorDict work (and its host reads of ``done``) costs more than the GPU's step;
        here each step is one jitted call and the policy, with the running sums on the device,
        read once at the end (and every ``CHECK_EVERY`` steps, to stop when every episode ended)."""
        if self.side_envs:
            raise RuntimeError("deterministic_returns runs on an evaluation env, not one with side lanes")
        obs = self.reset().get("observation")
        total = torch.zeros(self.num_envs, device=self.device)
        alive = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        for t in range(max_steps):
            action = act(obs)
            self._state, self._t, obs_j, rew, term, trunc = self._step_fn(self._state, self._t, self._to_jax(action))
            out = self._out(obs_j, rew, term, trunc)
            obs = out["observation"]
            total += out["reward"].reshape(-1) * alive
            alive &= ~out["done"].reshape(-1)
            if (t + 1) % self.CHECK_EVERY == 0 and not bool(alive.any()):
                break
        return total

    CHECK_EVERY = 100

    def _set_seed(self, seed: int | None) -> None:
        if seed is None:
            return
        jax = self._jax
        seeds = jax.numpy.arange(self.num_envs, dtype=jax.numpy.uint32) + jax.numpy.uint32(seed)
        if self.side_envs:
            side = jax.numpy.arange(self.side_envs, dtype=jax.numpy.uint32) + jax.numpy.uint32(self._side_seed)
            seeds = jax.numpy.concatenate([seeds, side])
        # Takes effect at the next reset, as for dm_control (the collector resets after seeding).
        self._keys = jax.device_put(jax.vmap(jax.random.PRNGKey)(seeds), self._jdev)

    def close(self, *, raise_if_closed: bool = True) -> None:  # noqa: D102
        self._state = None
        super().close(raise_if_closed=raise_if_closed)
