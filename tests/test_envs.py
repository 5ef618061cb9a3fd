"""Env layer: shapes, dtypes, truncation, seeding, batched == single, factory errors, BYO env."""

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from gorl.envs.dmc import DMControlBatchEnv, parse_task
from gorl.envs.factory import EnvConfig, env_dims, make_env
from gorl.errors import ConfigError


def _rand_actions(n: int, dim: int, steps: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(steps, n, dim, generator=g) * 2 - 1


def test_specs_shapes_and_dtypes():
    env = DMControlBatchEnv("cheetah-run", num_envs=3, seed=0)
    td = env.reset()
    assert td["observation"].shape == (3, 17) and td["observation"].dtype == torch.float32
    td["action"] = torch.zeros(3, 6)
    out = env.step(td)["next"]
    assert out["reward"].shape == (3, 1) and out["reward"].dtype == torch.float32
    for key in ("done", "terminated", "truncated"):
        assert out[key].shape == (3, 1) and out[key].dtype == torch.bool
    assert env.action_spec.space.low.min() == -1 and env.action_spec.space.high.max() == 1
    env.close()


def test_step_and_reset_outputs_carry_the_env_device():
    # A device-less output makes TorchRL cast the whole tensordict onto the env's device on every
    # step (~0.1 ms per batch here, a third of the env layer's own per-step cost).
    env = DMControlBatchEnv("cheetah-run", num_envs=2, seed=0, num_workers=2)
    td = env.reset()
    assert env._reset(td).device == env.device == torch.device("cpu")
    td["action"] = torch.zeros(2, 6)
    assert env._step(td).device == env.device
    env.close()


def test_time_limit_is_truncation_not_termination():
    env = DMControlBatchEnv("cheetah-run", num_envs=2, seed=0)
    td = env.reset()
    for t in range(1000):
        td["action"] = torch.zeros(2, 6)
        td = env.step(td)
        nxt = td["next"]
        if t < 999:
            assert not nxt["done"].any(), t
        td = nxt.exclude("reward", "done", "terminated", "truncated")
    assert nxt["truncated"].all() and nxt["done"].all() and not nxt["terminated"].any()
    env.close()


def test_auto_reset_only_resets_done_envs():
    env = DMControlBatchEnv("cheetah-run", num_envs=2, seed=0)
    td = env.reset()
    td["action"] = torch.zeros(2, 6)
    td = env.step(td)["next"]
    before = td["observation"].clone()
    td.set("_reset", torch.tensor([[True], [False]]))
    out = env.reset(td)
    assert torch.equal(out["observation"][1], before[1])
    assert not torch.equal(out["observation"][0], before[0])
    env.close()


def _rollout_obs(env: EnvBase, actions: torch.Tensor) -> torch.Tensor:
    td = env.reset()
    obs = [td["observation"].clone()]
    for a in actions:
        td["action"] = a
        td = env.step(td)["next"].exclude("reward")
        obs.append(td["observation"].clone())
    return torch.stack(obs)


def test_seeding_is_reproducible_and_seed_dependent():
    acts = _rand_actions(2, 1, 20)
    a = _rollout_obs(DMControlBatchEnv("hopper-stand", 2, seed=7), acts.expand(20, 2, 4))
    b = _rollout_obs(DMControlBatchEnv("hopper-stand", 2, seed=7), acts.expand(20, 2, 4))
    c = _rollout_obs(DMControlBatchEnv("hopper-stand", 2, seed=8), acts.expand(20, 2, 4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_batched_env_equals_single_envs_step_for_step():
    n, steps = 3, 30
    acts = _rand_actions(n, 6, steps, seed=1)
    batched = _rollout_obs(DMControlBatchEnv("cheetah-run", n, seed=100), acts)
    singles = [_rollout_obs(DMControlBatchEnv("cheetah-run", 1, seed=100 + i), acts[:, i : i + 1]) for i in range(n)]
    assert torch.allclose(batched, torch.cat(singles, dim=1))


@pytest.mark.parametrize("task", ["walker-walk", "finger-spin"])
def test_observation_is_dm_controls_entries_flattened_in_order(task):
    """Against plain dm_control: entries of any shape (walker's height is a scalar) land in order."""
    from dm_control import suite

    domain, name = task.split("-", 1)
    env = DMControlBatchEnv(task, num_envs=2, seed=5)
    raws = [suite.load(domain, name, task_kwargs={"random": 5 + i}) for i in range(2)]

    def flat(ts):
        return np.concatenate([np.ravel(v) for v in ts.observation.values()]).astype(np.float32)

    try:
        got = env.reset()["observation"].numpy()
        np.testing.assert_array_equal(got, np.stack([flat(r.reset()) for r in raws]))
        act = _rand_actions(2, env.action_spec.shape[-1], 3, seed=2)
        td = env.reset()
        [r.reset() for r in raws]
        for t in range(3):
            td["action"] = act[t]
            out = env.step(td)["next"]
            want = np.stack([flat(r.step(act[t, i].numpy())) for i, r in enumerate(raws)])
            np.testing.assert_array_equal(out["observation"].numpy(), want)
    finally:
        env.close()


def test_unknown_task_lists_valid_tasks():
    with pytest.raises(ConfigError, match="unknown dm_control task 'cheetah-fly'.*cheetah-run"):
        parse_task("cheetah-fly")
    with pytest.raises(ConfigError, match="unknown dm_control task"):
        env_dims(EnvConfig(task="cheetah-fly"))


def test_worker_processes_step_one_flat_batch_exactly_like_one_process():
    acts = _rand_actions(5, 6, 12, seed=3)
    single = DMControlBatchEnv("cheetah-run", 5, seed=11)
    sharded = DMControlBatchEnv("cheetah-run", 5, seed=11, num_workers=3)
    try:
        assert torch.equal(_rollout_obs(single, acts), _rollout_obs(sharded, acts))
        td = sharded.reset()
        td["_reset"] = torch.tensor([False, True, False, False, True]).unsqueeze(-1)
        assert sharded.reset(td)["observation"].shape == (5, 17)
    finally:
        single.close()
        sharded.close()
    env = make_env(EnvConfig(task="cheetah-run", num_envs=2, num_workers=2), seed=0)
    try:
        assert env.reset()["observation"].shape == (4, 17)  # num_workers x num_envs, flat
    finally:
        env.close()


def test_collector_shutdown_closes_the_worker_processes():
    from torchrl.collectors import Collector
    from torchrl.envs.utils import RandomPolicy

    env = DMControlBatchEnv("cheetah-run", 4, num_workers=2)
    procs = list(env._procs)
    assert not env.is_closed and all(p.is_alive() for p in procs)
    collector = Collector(env, RandomPolicy(env.action_spec), frames_per_batch=8, total_frames=-1)
    next(iter(collector))
    collector.shutdown()
    assert env.is_closed and env._shm is None
    assert not any(p.is_alive() for p in procs)


def test_a_dead_dm_control_worker_raises_instead_of_hanging():
    from gorl.errors import EnvWorkerError

    env = DMControlBatchEnv("cheetah-run", 2, seed=0, num_workers=2)
    td = env.reset()
    env._procs[0].kill()
    env._procs[0].join()
    td["action"] = torch.zeros(2, 6)
    with pytest.raises(EnvWorkerError, match="died"):
        env.step(td)
    env.close()


# --- bring your own env --------------------------------------------------------------------------
class PointEnv(EnvBase):
    """An unbatched user env: 1-D point, actions in [-2, 2], observation under another key."""

    def __init__(self, horizon: int = 5):
        super().__init__(batch_size=torch.Size([]))
        self.observation_spec = Composite(pos=Unbounded((1,)), vel=Unbounded((1,)))
        self.action_spec = Bounded(-2.0, 2.0, (1,))
        self.reward_spec = Unbounded((1,))
        self.horizon = horizon
        self._pos = torch.zeros(1)
        self._t = 0

    def _reset(self, td=None, **kw):
        self._pos, self._t = torch.zeros(1), 0
        return TensorDict({"pos": self._pos.clone(), "vel": torch.zeros(1), "done": torch.zeros(1, dtype=torch.bool), "terminated": torch.zeros(1, dtype=torch.bool)})

    def _step(self, td):
        a = td["action"]
        assert -2.0 <= float(a) <= 2.0
        self._pos = self._pos + 0.1 * a
        self._t += 1
        done = torch.tensor([self._t >= self.horizon])
        return TensorDict({"pos": self._pos.clone(), "vel": a.clone(), "reward": -(self._pos - 1).abs(), "done": done, "terminated": done.clone()})

    def _set_seed(self, seed):
        return seed


def make_point_env(horizon: int = 5) -> PointEnv:
    return PointEnv(horizon)


class DiscreteEnv(PointEnv):
    def __init__(self):
        super().__init__()
        self.action_spec = Categorical(3)


def test_byo_env_is_stacked_flattened_and_rescaled():
    cfg = EnvConfig(factory="tests.test_envs:make_point_env", factory_kwargs={"horizon": 3}, num_envs=2)
    obs_dim, act_dim, low, high = env_dims(cfg)
    assert (obs_dim, act_dim) == (2, 1) and float(low) == -2.0 and float(high) == 2.0
    env = make_env(cfg, seed=0)
    assert env.reset()["observation"].shape == (2, 2)
    env.close()


def test_byo_env_with_discrete_actions_is_rejected():
    with pytest.raises(ConfigError, match="continuous bounded action spec"):
        env_dims(EnvConfig(factory="tests.test_envs:DiscreteEnv"))


def test_bad_factory_path_is_a_config_error():
    with pytest.raises(ConfigError, match="cannot be imported"):
        env_dims(EnvConfig(factory="tests.nope:make"))


def test_toy_bandit_rewards_both_modes_equally():
    from gorl.envs.bandit import ToyBanditEnv, mode_centers

    env = ToyBanditEnv(num_envs=4, seed=0)
    ctx = torch.tensor([[0.2], [-0.4], [0.0], [1.0]])
    centers = mode_centers(ctx.squeeze(-1))
    r_plus = env.reward(ctx, centers[:, :1])
    r_minus = env.reward(ctx, centers[:, 1:])
    assert torch.allclose(r_plus, torch.ones(4, 1)) and torch.allclose(r_minus, torch.ones(4, 1))
    assert (env.reward(ctx, torch.zeros(4, 1)) < 0.01).all()  # the valley between the modes
    assert np.isfinite(env.rollout(12)["next", "reward"].numpy()).all()


def test_num_workers_auto_uses_the_cores_this_process_may_run_on(monkeypatch):
    import os

    from gorl.envs.factory import EnvConfig, auto_workers
    from gorl.errors import ConfigError

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7}, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert EnvConfig(num_workers="auto").num_workers == 8 == auto_workers()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two ranks on this machine share its cores
    assert EnvConfig(num_workers="auto").num_workers == 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert EnvConfig(num_workers="auto").num_workers == 1
    with pytest.raises(ConfigError, match="positive integer or 'auto'"):
        EnvConfig(num_workers="many")


def _mean_or_sampled_latent_policy(act_dim: int):
    """Latent 0 (the "mean") when deterministic, a fresh normal draw otherwise, straight to tanh."""
    from gorl.networks import ActionSquash
    from gorl.policy import LatentPolicy

    def act(obs: torch.Tensor, deterministic: bool) -> dict[str, torch.Tensor]:
        shape = (*obs.shape[:-1], act_dim)
        return {"latent": torch.zeros(shape) if deterministic else 2.0 * torch.randn(shape)}

    return LatentPolicy(act, lambda obs, z: z, ActionSquash(-torch.ones(act_dim), torch.ones(act_dim)))


def test_evaluation_samples_latents_only_when_asked():
    """``loop.eval_deterministic: false`` (the authors' humanoid evaluations): sampled latents; the
    default: the mean. Same seeds for every call, so only the policy's draws can differ."""
    from gorl.evaluation import evaluate

    env = make_env(EnvConfig(task="cheetah-run", num_envs=3), seed=0)
    policy = _mean_or_sampled_latent_policy(env.action_spec.shape[-1])
    runs = {}
    for deterministic in (True, True, False, False):
        env.set_seed(5)
        runs.setdefault(deterministic, []).append(evaluate(env, policy, max_steps=30, deterministic=deterministic))
    torch.testing.assert_close(runs[True][0], runs[True][1])  # the mean: repeatable
    assert not torch.allclose(runs[False][0], runs[False][1])  # sampled: two draws differ ...
    assert not torch.allclose(runs[False][0], runs[True][0])  # ... and differ from the mean
