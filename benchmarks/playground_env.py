"""The conventions GoRL's loop relies on, checked on TorchRL's MuJoCo Playground env and on ours.

TorchRL 0.14 ships ``MujocoPlaygroundWrapper`` / ``MujocoPlaygroundEnv``; ``gorl/envs/mjx.py``
(``MJXBatchEnv``) predates our use of it. Both wrap the very same Playground env object here
(``gorl.envs.mjx._playground_env``: same task, ``impl``, model), so every difference printed is the
wrapper's. Each row is observed by stepping both envs, not read from their docs:

- output keys, observation dtype and device;
- the time limit: ``truncated`` (GAE bootstraps) or ``terminated`` (it does not), or none; for
  TorchRL's env also with the transform its docstring recommends (``StepCounter(max_steps)``), the
  thin adapter we would need;
- a non-finite physics state (Playground's ``done`` on the suite ports): ``terminated``?
- a partial reset through the collector's path (``step_and_maybe_reset``): which envs' simulator
  states restart, and whether each env's reported observation is its simulator's;
- seeding: per-env initial states differ, ``set_seed`` reproduces them, env ``i`` is seeded
  ``seed + i`` (the convention ``gorl.envs.factory.make_env`` states for every env: seeds
  ``seed + i`` over every copy of every worker);
- the action reaching MuJoCo as ``ctrl`` (every ported suite task has ``ctrlrange`` ``[-1, 1]``).

Not checked here, read in the code: both hand arrays between JAX and torch through DLPack, without a
host copy (ours: ``MJXBatchEnv._to_jax`` / ``_out``; TorchRL's: ``torchrl/envs/libs/jax_utils.py``,
``_tensor_to_ndarray`` / ``_ndarray_to_tensor``).

    python benchmarks/playground_env.py --task cheetah-run --impl warp

Throughput is ``benchmarks/throughput.py --mjx --mjx-torchrl`` (rows (e) and (e')).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch
from tensordict import TensorDict

from gorl.envs.mjx import MJXBatchEnv, _playground_env

N, LIMIT = 4, 5
MASK = torch.tensor([True, False, True, False])


def _sim_state(env):
    """The JAX state each wrapper holds: what the simulator will step from next."""
    return env._state if isinstance(env, MJXBatchEnv) else getattr(env, "base_env", env)._current_state


def _sim_obs(env) -> torch.Tensor:
    return torch.as_tensor(np.array(_sim_state(env).obs)).reshape(N, -1).clone()


def _poison_env0(env) -> None:
    """Env 0's velocities go non-finite: Playground's suite ports mark that state ``done``."""
    import jax.numpy as jnp

    state = _sim_state(env)
    state = state.replace(data=state.data.replace(qvel=state.data.qvel.at[0].set(jnp.nan)))
    if isinstance(env, MJXBatchEnv):
        env._state = state
    else:
        getattr(env, "base_env", env)._current_state = state


def _step(env, td: TensorDict, action: float | torch.Tensor = 0.5) -> TensorDict:
    """One step from ``td`` (a reset's or a step's ``next``, so transforms find their entries);
    returns the step's ``next``."""
    td = td.clone()
    td["action"] = torch.full(env.action_spec.shape, float(action)) if not isinstance(action, torch.Tensor) else action
    return env.step(td)["next"]


def _flags(o: TensorDict) -> str:
    trunc = str(bool(o["truncated"].any())) if "truncated" in o.keys() else "no key"  # noqa: SIM118 (TensorDict has no `in`)
    return f"done={bool(o['done'].any())} terminated={bool(o['terminated'].any())} truncated={trunc}"


def check(env) -> dict[str, str]:
    """One column of the table: what ``env`` does."""
    rows: dict[str, str] = {}
    env.set_seed(0)
    out = _step(env, env.reset())
    rows["observation keys (spec)"] = ", ".join(sorted(map(str, env.observation_spec.keys())))
    rows["keys of a step's next"] = ", ".join(sorted(out.keys()))
    obs = out["observation"]
    rows["observation dtype, device"] = f"{obs.dtype}, {obs.device}"
    rows["reward shape, dtype"] = f"{tuple(out['reward'].shape)}, {out['reward'].dtype}"
    ctrl = np.asarray(_sim_state(env).data.ctrl)
    rows["ctrl the simulator got for action 0.5"] = f"{float(ctrl.min()):.3g}..{float(ctrl.max()):.3g}"

    # The time limit: LIMIT steps from a reset.
    td, outs = env.reset(), []
    for _ in range(LIMIT):
        td = _step(env, td)
        outs.append(td)
    rows[f"after {LIMIT - 1} steps"] = _flags(outs[-2])
    rows[f"after {LIMIT} steps (the limit)"] = _flags(outs[-1])

    # A non-finite physics state in env 0 only (NaN velocities injected), then the collector's
    # auto-reset: which envs restart, and do the others report their simulator states?
    td = _step(env, env.reset())
    _poison_env0(env)
    td["action"] = torch.full(env.action_spec.shape, 0.5)
    stepped, nxt = env.step_and_maybe_reset(td)
    after = _sim_obs(env)
    rows["NaN state in env 0: done / terminated"] = (
        f"{stepped['next', 'done'].squeeze(-1).int().tolist()} / {stepped['next', 'terminated'].squeeze(-1).int().tolist()}")
    rows["  then step_and_maybe_reset: simulator states restarted"] = str(
        (~torch.isclose(after, torch.nan_to_num(stepped["next", "observation"], nan=1e9)).all(-1)).int().tolist())
    rows["  then reported observation == simulator's, per env"] = str(torch.isclose(nxt["observation"], after).all(-1).int().tolist())

    # A partial reset through the collector's path: envs 0 and 2 reset, 1 and 3 carry on.
    td = env.reset()
    for _ in range(3):
        td = _step(env, td)
    before = _sim_obs(env)
    td["_reset"] = MASK.unsqueeze(-1)
    reported = env.reset(td)["observation"]
    after = _sim_obs(env)
    rows["reset with _reset [1,0,1,0]: simulator states restarted"] = str(((after - before).abs().amax(-1) > 0).int().tolist())
    rows["  reported observation == simulator's, per env"] = str(torch.isclose(reported, after).all(-1).int().tolist())

    # Seeding.
    env.set_seed(11)
    a = env.reset()["observation"].clone()
    env.set_seed(11)
    b = env.reset()["observation"].clone()
    env.set_seed(12)
    c = env.reset()["observation"].clone()
    rows["per-env initial states differ"] = str(bool((a[0] != a[1]).any()))
    rows["set_seed(s) reproduces the reset"] = str(torch.equal(a, b))
    rows["env i of seed s+1 == env i+1 of seed s"] = str(torch.equal(c[:-1], a[1:]))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="cheetah-run")
    p.add_argument("--impl", default="warp", help="jax or warp (the conventions do not depend on it; warp compiles faster)")
    args = p.parse_args()
    import torchrl
    from torchrl.envs import MujocoPlaygroundWrapper, StepCounter, TransformedEnv

    print(f"# {args.task}, impl {args.impl}, {N} envs, time limit {LIMIT} steps; torchrl {torchrl.__version__}")
    playground = _playground_env(args.task, args.impl)
    t0 = time.perf_counter()
    ours = MJXBatchEnv(args.task, num_envs=N, seed=0, impl=args.impl, episode_length=LIMIT)
    columns = {"ours (MJXBatchEnv)": check(ours)}
    print(f"# ours: {time.perf_counter() - t0:.1f} s including its compiles")
    t0 = time.perf_counter()
    theirs = MujocoPlaygroundWrapper(playground, batch_size=[N], device="cpu")
    columns["TorchRL MujocoPlaygroundWrapper"] = check(theirs)
    # The time limit TorchRL's docstring points to: a StepCounter transform adds `truncated`.
    columns[f"TorchRL + StepCounter({LIMIT})"] = check(TransformedEnv(theirs, StepCounter(max_steps=LIMIT)))
    print(f"# TorchRL's: {time.perf_counter() - t0:.1f} s including its compiles")
    names = list(columns)
    print("| check | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for row in columns[names[0]]:
        print(f"| {row} | " + " | ".join(columns[n].get(row, "-") for n in names) + " |")


if __name__ == "__main__":
    main()
